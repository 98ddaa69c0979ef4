"""The project's user-facing error: a mistake the user can fix (bad config, missing file, wrong run directory).

Commands print a `UserError` as one or two lines and exit with status 2 (see `ich_keras.cli`); anything else is a
bug and keeps its traceback. Raise it with what is wrong, the offending value and, where it helps, what to do:

    raise UserError(f"Unknown config key. Received: key={key!r}. Known keys: {', '.join(known)}")
"""


class UserError(ValueError):
    """A mistake in what the user gave (config, paths, options), reported without a traceback.

    A subclass of `ValueError`, so code and tests that catch `ValueError` keep working.
    """
