"""Ctrl-C (SIGINT) and a scheduler's SIGTERM stop a command the same way, wherever the signal lands.

Both raise KeyboardInterrupt in the main thread (SIGTERM as its subclass `Terminated`), so every `with` and
`finally` that cleans up after Ctrl-C (a soup's temporary folder, a lock, fit's "continue with" line) runs for
SIGTERM too; `cli.run` then prints one line and exits 130 or 143, the statuses a shell gives a process the signal
killed. Python's own SIGTERM ends the process at once: no line, no cleanup.

Two places must not see the exception, and a signal handled there is sent again a moment later instead, from a
helper thread to the main thread (a real signal, so that a blocking call the main thread went into meanwhile, a
sleep or a wait, ends too):
- a garbage-collection callback (JAX registers `_xla_gc_callback`, which runs on every collection) or a
  `__del__`: Python prints "Exception ignored in ..." with a traceback there and goes on, the signal lost;
- TensorFlow's Python code. Its C++ calls back into it and does not always survive an exception there: a
  KeyboardInterrupt in `TensorShape.__len__`, called while an eager op's shape attributes are read (every
  `tf.data` iterator's next batch), has it count one shape's dimensions as none and then write them all, past
  the end of its buffer; the process died a moment later ("free(): invalid next size", ~2 % of signals sent
  just after an epoch started, `benchmarks/interrupt_stress.py`).
"""

from __future__ import annotations

import gc
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Long enough for the collection under way to end, short enough not to be noticed.
REDELIVERY_DELAY_S = 0.05


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill PID`, a cluster scheduler's stop): unwinds like Ctrl-C."""


def exit_status(interrupt: KeyboardInterrupt) -> int:
    """The exit status of a command stopped by `interrupt`: 128 + the signal's number, as a shell reports it."""
    return 128 + (signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT)


def _in_unraisable_code(frame) -> bool:
    """Whether `frame` runs (or is called from) a gc callback or a `__del__`, where Python swallows exceptions."""
    callbacks = {getattr(callback, "__code__", None) for callback in gc.callbacks}
    while frame is not None:
        if frame.f_code in callbacks or frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


def _in_tensorflow(frame) -> bool:
    """Whether `frame` runs TensorFlow's Python code, which its C++ may have called."""
    return frame.f_globals.get("__name__", "").startswith("tensorflow.")


def _raise_interrupt(signum: int, frame) -> None:
    """The handler of SIGINT and SIGTERM."""
    if _in_unraisable_code(frame) or _in_tensorflow(frame):
        # Not signal.raise_signal from here: Python would run this handler again before the callback returns.
        later = threading.Timer(REDELIVERY_DELAY_S, signal.pthread_kill, args=(threading.main_thread().ident, signum))
        later.daemon = True
        later.start()
        return
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def install() -> dict[int, object]:
    """Handles SIGINT and SIGTERM as described above, in the main thread (elsewhere: nothing).

    Returns:
        The handlers that were in place, {signal number: handler}, for `restore`.
    """
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.signal(signum, _raise_interrupt) for signum in SIGNALS}


def restore(previous: dict[int, object]) -> None:
    """Puts back the handlers `install` returned."""
    for signum, handler in previous.items():
        signal.signal(signum, handler)
