"""The project's user-facing error: a mistake the user can fix (bad config, missing file, wrong run directory).

Commands print a `UserError` as one or two lines and exit with status 2 (see `ich_keras.cli`); anything else is a
bug and keeps its traceback. Raise it with what is wrong, the offending value and, where it helps, what to do:

    raise UserError(f"Unknown config key. Received: key={key!r}. Known keys: {', '.join(known)}")
"""

import re
from pathlib import Path


class UserError(ValueError):
    """A mistake in what the user gave (config, paths, options), reported without a traceback.

    A subclass of `ValueError`, so code and tests that catch `ValueError` keep working.
    """


def carried_user_error(error: BaseException) -> str | None:
    """The message of a `UserError` raised inside a tf.data function (an image file that no longer decodes, say),
    which TensorFlow re-raises as one of its own errors with the whole traceback in its text; None otherwise."""
    if not type(error).__module__.startswith("tensorflow"):
        return None
    match = re.search(r"ich_keras\.errors\.UserError: (.+)", str(error))
    return match.group(1) if match else None


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of `error`'s message, cut at `limit` characters: a library's error, quoted in a message of
    ours."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return text if len(text) <= limit else text[:limit] + "..."


def relative_to_cwd(path: str | Path) -> str:
    """Where a relative path was looked for, for an error message: " (relative to the working directory, CWD)", or
    "" for an absolute path (a config's paths are read from the working directory, not the config file's folder)."""
    return "" if Path(path).is_absolute() else f" (relative to the working directory, {Path.cwd()})"
