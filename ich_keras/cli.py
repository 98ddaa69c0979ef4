"""What every `python -m ich_keras.<verb>` shares: its parser, and how it ends.

A command module's `main(argv)` builds its parser with `cli.parser("python -m ich_keras.verb", __doc__)` and
returns an exit status (`analyze.main` returns its summary for the tests, and hands `cli.run` a wrapper); its
`if __name__ == "__main__":` block calls `cli.run(main)`.

`run` answers a user's mistake (`ich_keras.errors.UserError`, also when tf.data carries it, or a missing or
unreadable file) with two lines on stderr and exit status 2; `--debug` or the environment variable ICH_KERAS_DEBUG=1
puts the traceback before the error's line (the status stays 2). Anything else is a bug and keeps its traceback.
Ctrl-C and SIGTERM end a command with one line, "interrupted" or "terminated", and exit status 130 or 143
(`ich_keras.interrupts`), also while it still imports Keras, JAX and TensorFlow (`stop_on_signals`).
"""

from __future__ import annotations

import argparse
import atexit
import errno
import gc
import os
import select
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from ich_keras import interrupts
from ich_keras.errors import UserError, carried_user_error

DEBUG_ENV = "ICH_KERAS_DEBUG"
USER_ERROR_STATUS = 2
INTERRUPTED_STATUS = 130  # Ctrl-C; SIGTERM: 143 (interrupts.exit_status)
BROKEN_PIPE_STATUS = 141  # 128 + SIGPIPE, as a shell reports a writer whose reader went away
# OSErrors that say a path the user named is wrong (not there, not a file, not theirs to write), and the errnos of
# a folder no one may write (a read-only disk or share) and of a full disk or quota.
PATH_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)
READ_ONLY_ERRNOS = (errno.EROFS,)
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL_STATUS = 1  # not the user's mistake, but no traceback either


def parser(prog: str, doc: str | None, **kwargs) -> argparse.ArgumentParser:
    """An ArgumentParser for a command: the first paragraph of `doc` as description, the rest as epilog, --debug.

    Args:
        prog: how the command is typed, e.g. "python -m ich_keras.fit".
        doc: the command module's docstring.
        **kwargs: more `argparse.ArgumentParser` arguments.
    """
    description, _, epilog = (doc or "").strip().partition("\n\n")
    result = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog or None,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
    add_debug(result)
    return result


def positive_int(text: str) -> int:
    """argparse type for a count that must be 1 or more (a batch size, a number of batches)."""
    value = int(text)  # not a number: argparse says "invalid positive_int value"
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more. Received: {value}")
    return value


def flag(name: str) -> str:
    """The command-line flag of an option or method name: "task_arithmetic" -> "--task-arithmetic"."""
    return "--" + name.replace("_", "-")


def check_replaceable(output: Path, overwrite: bool) -> None:
    """A UserError unless `output` is absent, or a file and `overwrite` was given: a command replaces no file it was
    not told it may replace (it may be a checkpoint or a soup), and never a folder."""
    if output.exists() and not output.is_file():
        raise UserError(f"The output is a folder; --overwrite replaces a file, never a folder: give a file's path "
                        f"as --output, e.g. one inside it. Received: output={str(output)!r}")
    if output.exists() and not overwrite:
        raise UserError(f"The output exists; pass --overwrite to replace it, or choose another --output. "
                        f"Received: output={str(output)!r}")


def add_debug(parser: argparse.ArgumentParser) -> None:
    """Adds --debug (accepted by every command and sub-command; `run` reads it)."""
    parser.add_argument("--debug", action="store_true",
                        help=f"show the full traceback of an error (or set {DEBUG_ENV}=1)")


def add_option(parser, defaults, *flags: str, **kwargs) -> argparse.Action:
    """Adds the flag of one field of an options dataclass (`SoupOptions`, `AnalysisOptions`).

    The flag defaults to None, meaning "not given", so a value from a recipe table stands unless the flag is given
    (`recipe`); its help ends with the dataclass default unless it says its own. A bool field becomes --name and
    --no-name.

    Args:
        parser: the parser or argument group.
        defaults: an instance of the options dataclass holding the defaults.
        *flags: the option strings; the destination must be a field name (pass dest= otherwise).
        **kwargs: more `add_argument` arguments.
    """
    action = parser.add_argument(*flags, default=None, **kwargs)
    default = getattr(defaults, action.dest)
    if isinstance(default, bool) and "action" not in kwargs:
        raise TypeError(f"Pass action=argparse.BooleanOptionalAction for the bool option {flags[0]}")
    if not isinstance(default, bool) and default not in (None, "") and "default" not in (action.help or ""):
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        action.help = f"{action.help} (default: {shown})" if action.help else f"default: {shown}"
    return action


def recipe(options_class, section: str, args: argparse.Namespace) -> dict:
    """The options given for `options_class`, by rising precedence: the [section] table of the TOML file
    `args.config`, then `--set section.KEY=VALUE` overrides (`args.set`) (`ich_keras.config.recipe_table`), then
    the flags given (not None).

    Returns:
        {field: value}, checked against the dataclass's fields and types (an unknown key is a `UserError` naming
        it); fields given nowhere are absent, so the caller can fill them from the run.
    """
    import dataclasses

    from ich_keras.config import recipe_table

    values = recipe_table(options_class, section, args.config, args.set)
    names = {f.name for f in dataclasses.fields(options_class)}
    values.update({k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items()
                   if k in names and v is not None})
    return values


def debug_env() -> bool:
    """Whether ICH_KERAS_DEBUG is set and not 0, off, false or no: tracebacks and TensorFlow's start-up lines are
    shown."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "off", "false", "no")


def debug_requested(argv: list[str]) -> bool:
    """Whether the user asked for tracebacks: --debug on the command line, or ICH_KERAS_DEBUG set and not 0."""
    return "--debug" in argv or debug_env()


def describe(error: BaseException) -> str:
    """The message a user sees for a user error: the error's own text; for a path error, what and which path."""
    if isinstance(error, OSError) and error.filename is not None:
        reason = error.strerror or type(error).__name__
        return f"{reason}. Received: path={str(error.filename)!r}. Check the path and its permissions."
    return str(error)


def _disk_full(error: BaseException) -> BaseException | None:
    """The full-disk error in `error`'s chain: h5py raises its own RuntimeError while closing a file whose write
    failed with ENOSPC (the OSError is its context), and TensorFlow's SaveV2 a ResourceExhaustedError."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in FULL_ERRNOS:
            return error
        if type(error).__module__.startswith("tensorflow") and "No space left on device" in str(error):
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        error = error.__cause__ or error.__context__
    return None


def _user_facing(error: Exception) -> tuple[str | None, int]:
    """(the message, the exit status) of an error the user can act on; (None, _) for a bug, whose traceback shows."""
    full = _disk_full(error)
    if full is not None:
        where = f" writing {str(full.filename)!r}" if full.filename is not None else ""
        message = (f"{os.strerror(full.errno)}{where}: free some space (or give another place to write) and run the "
                   f"command again: run directories, soups and exports are written whole or not at all, so those "
                   f"written before are intact.")
        return message, DISK_FULL_STATUS
    read_only = isinstance(error, OSError) and error.errno in READ_ONLY_ERRNOS
    if read_only or isinstance(error, (UserError, *PATH_ERRORS)):
        return describe(error), USER_ERROR_STATUS
    return carried_user_error(error), USER_ERROR_STATUS


def run(main: Callable[[list[str]], int | None], argv: list[str] | None = None) -> None:
    """Runs `main(argv)` and exits with its status (None counts as 0); a user error exits 2 with a short message.

    Args:
        main: the command's `main`, taking the argument list.
        argv: the arguments (default: sys.argv[1:]).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    atexit.unregister(_skip_shutdown_collections)  # once, whatever the number of runs
    atexit.register(_skip_shutdown_collections)  # exit handlers that run after it still work: freezing only stops GC
    _print_any_text()
    previous = interrupts.install()
    try:
        status = main(argv)
    except BrokenPipeError:
        if not _stdout_reader_gone():
            raise  # another pipe (a library's): a bug to show, not the end of a `| head`
        # stdout's reader left (`| head`): end silently, as a shell filter the pipe killed.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush of stdout fails no more
        status = BROKEN_PIPE_STATUS
    except Exception as error:
        message, status = _user_facing(error)
        if message is None:
            raise
        if debug:  # the traceback first, and still a user error's line and exit status
            traceback.print_exc()
        print(f"error: {message}", file=sys.stderr)
        if not debug:
            print("(add --debug to see where it happened)", file=sys.stderr)
    except KeyboardInterrupt as interrupt:
        if debug:
            traceback.print_exc()
        _end_interrupted(interrupt)
    finally:
        interrupts.restore(previous)
    sys.exit(status or 0)


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reading end is closed (poll reports an error on its writing end)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no file descriptor (a replaced stdout), or no poll here
        return False


def _print_any_text() -> None:
    """Lets stdout print text its encoding lacks (a class named "Lễ hội" on an ASCII or cp1252 console) escaped, as
    stderr does, instead of failing after the work is done."""
    reconfigure = getattr(sys.stdout, "reconfigure", None)  # absent where a caller replaced stdout
    if reconfigure is not None:
        reconfigure(errors="backslashreplace")


def _end_interrupted(interrupt: KeyboardInterrupt) -> None:
    """Says the command was stopped and ends the process with 130 (Ctrl-C) or 143 (SIGTERM)."""
    print("terminated" if isinstance(interrupt, interrupts.Terminated) else "interrupted", file=sys.stderr)
    # Without the interpreter's shutdown: Ctrl-C can land while XLA's or tf.data's threads still run (a
    # prediction half done), and shutting the interpreter down under them ended in a segmentation fault now and
    # then (exit 139). Every `with` and `finally` has run by now, and the exit handlers (a W&B run's, JAX's
    # distributed client's) run here; files are written whole or not at all.
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(interrupts.exit_status(interrupt))


def _interrupted_before_run(kind, value, trace) -> None:
    """sys.excepthook of a command: a Ctrl-C or SIGTERM before `run` started (while the command imports) ends
    with `run`'s line and status instead of the import's traceback; anything else as Python shows it."""
    if issubclass(kind, KeyboardInterrupt) and not debug_env():
        _end_interrupted(value)
    sys.__excepthook__(kind, value, trace)


def stop_on_signals() -> None:
    """Makes Ctrl-C and SIGTERM end this command as `run` ends it, from now on: called by `ich_keras/__init__` for
    `python -m ich_keras.<verb>`, before the seconds of importing Keras, JAX and TensorFlow."""
    interrupts.install()
    sys.excepthook = _interrupted_before_run


def _skip_shutdown_collections() -> None:
    """Spares interpreter shutdown its garbage collections over the millions of objects that importing TensorFlow,
    JAX and torch made: ~2 s at the end of every command on a 2-core machine (benchmarks/process_exit.py). One
    collection here still runs the finalisers of what is garbage now, as shutdown would; what is still alive is
    frozen and left to the operating system (Python never promised finalisers at exit). Registered by `run`, for
    commands only: a program that imports ich_keras keeps its own finalisers (a file it never closed is flushed)."""
    gc.collect()
    gc.freeze()
