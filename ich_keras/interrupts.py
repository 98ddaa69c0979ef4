"""Ctrl-C (SIGINT) and a scheduler's SIGTERM stop a command the same way, wherever the signal lands.

Both raise KeyboardInterrupt in the main thread (as its subclasses `Interrupted` and `Terminated`), so every `with` and
`finally` that cleans up after Ctrl-C (a soup's temporary folder, a lock, fit's "continue with" line) runs for
SIGTERM too; `cli.run` then prints one line and exits 130 or 143, the statuses a shell gives a process the signal
killed. Python's own SIGTERM ends the process at once: no line, no cleanup.

Three kinds of code must not see the exception; a signal handled there is sent again a moment later instead, from a
helper thread to the main thread (a real signal, so that a blocking call the main thread went into meanwhile, a
sleep or a wait, ends too):
- a `deferred()` block: a few renames that publish a set of files together, which must not stop half-way;
- a garbage-collection callback (JAX registers `_xla_gc_callback`, which runs on every collection) or a
  `__del__`: Python prints "Exception ignored in ..." with a traceback there and goes on, the signal lost;
- TensorFlow's Python code, and whatever it calls: its C++ calls back into Python and does not always survive an
  exception there. A KeyboardInterrupt in `TensorShape.__len__`, called while an eager op's shape attributes are
  read (every `tf.data` iterator's next batch), has it count one shape's dimensions as none and then write them
  all, past the end of its buffer: the process died a moment later ("free(): invalid next size").

And a KeyboardInterrupt some library swallows (Keras converts each batch's logs under a bare `except: pass`) is
raised again: while the one raised last is alive it is on its way up, or handled; once it is gone and the process
still runs, it was swallowed, and the signal is sent again, every look until it is handled (one that lands just
before a blocking call waits for the call to return). `benchmarks/interrupt_stress.py` counts both: signals sent to
`fit` just as an epoch starts.

An interrupt raised where Python can only print it, in a place its frames do not tell (a weakref callback: importlib
drops its module locks in one, while a command imports), is not printed (`sys.unraisablehook`) and, being gone, is
sent again like a swallowed one.
"""

from __future__ import annotations

import contextlib
import gc
import signal
import sys
import threading
import weakref
from typing import NamedTuple

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Long enough for the collection under way to end, short enough not to be noticed.
REDELIVERY_DELAY_S = 0.05
# How often the interrupt raised last is looked at, to send the signal again once something swallowed it.
WATCH_INTERVAL_S = 0.2


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT): KeyboardInterrupt, as a class of our own, whose instances can be watched (weakref)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill PID`, a cluster scheduler's stop): unwinds like Ctrl-C."""


# The interrupt raised last, while it is watched: None, or a dead reference once something swallowed it.
_watched: weakref.ref | None = None


def exit_status(interrupt: KeyboardInterrupt) -> int:
    """The exit status of a command stopped by `interrupt`: 128 + the signal's number, as a shell reports it."""
    return 128 + (signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT)


# How many `deferred()` blocks are running: a signal landing in one is sent again once they end.
_deferring = 0


@contextlib.contextmanager
def deferred():
    """For a short block that must end once started (the renames that publish a set of files together): SIGINT and
    SIGTERM landing inside are delivered again a moment after it ends. Only where `install` put this module's
    handlers in place (every command, through `ich_keras.cli.run`); elsewhere the block is as without it."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1


def _must_wait(frame) -> bool:
    """Whether the main thread, at `frame`, runs code that must not see a KeyboardInterrupt: a `deferred()` block, a
    gc callback or a `__del__`, or TensorFlow's Python code (anywhere in the stack: what it calls may have been
    called by its C++)."""
    if _deferring:
        return True
    callbacks = {getattr(callback, "__code__", None) for callback in gc.callbacks}
    while frame is not None:
        if frame.f_code in callbacks or frame.f_code.co_name == "__del__":
            return True
        if frame.f_globals.get("__name__", "").startswith("tensorflow."):
            return True
        frame = frame.f_back
    return False


def _send_later(signum: int, delay_s: float) -> None:
    """Sends `signum` to the main thread `delay_s` from now, from a helper thread."""
    later = threading.Timer(delay_s, signal.pthread_kill, args=(threading.main_thread().ident, signum))
    later.daemon = True
    later.start()


def _watch(raised: weakref.ref, signum: int) -> None:
    """Sends `signum` again once the interrupt `raised` refers to is gone (something swallowed it), and again at each
    look until an interrupt raised since replaces it: a signal that lands just before the main thread enters a
    blocking call (a sleep) is handled only when that call returns, unless another one interrupts the call."""
    def look() -> None:
        if _watched is not raised:  # the signal sent last was handled: a new interrupt is on its way, watched
            return
        if raised() is None:
            signal.pthread_kill(threading.main_thread().ident, signum)
        _watch(raised, signum)

    check = threading.Timer(WATCH_INTERVAL_S, look)
    check.daemon = True
    check.start()


def _new_interrupt(signum: int) -> KeyboardInterrupt:
    """The interrupt for `signum`, watched unless the one raised before it is still alive: a second signal while
    the first one's interrupt unwinds may be caught on purpose (a second Ctrl-C cutting a wait short), and the
    first one still ends the command."""
    global _watched
    interrupt = Terminated() if signum == signal.SIGTERM else Interrupted()
    if _watched is None or _watched() is None:
        _watched = weakref.ref(interrupt)
        _watch(_watched, signum)
    return interrupt


def _raise_interrupt(signum: int, frame) -> None:
    """The handler of SIGINT and SIGTERM."""
    if _must_wait(frame):
        # Not signal.raise_signal from here: Python would run this handler again at once, still in there.
        _send_later(signum, REDELIVERY_DELAY_S)
        return
    # Raised without a name for it here: the traceback holds this frame, and a local naming the interrupt would
    # keep it alive in a reference cycle after something swallowed it.
    raise _new_interrupt(signum)


class Previous(NamedTuple):
    """What `install` replaced, for `restore`."""
    handlers: dict[int, object]  # {signal number: handler}
    unraisablehook: object


# The hook in place before `install`, which `_pass_over_interrupts` hands everything else to.
_previous_unraisablehook = sys.unraisablehook


def _pass_over_interrupts(unraisable) -> None:
    """sys.unraisablehook: an interrupt raised where Python can only print it is left to the watcher, which sends
    the signal again once it is gone; anything else is shown as before."""
    if not isinstance(unraisable.exc_value, (Interrupted, Terminated)):
        _previous_unraisablehook(unraisable)


def install() -> Previous:
    """Handles SIGINT and SIGTERM as described above, in the main thread (elsewhere: nothing).

    Returns:
        The handlers and hook that were in place, for `restore`.
    """
    global _previous_unraisablehook
    if threading.current_thread() is not threading.main_thread():
        return Previous({}, sys.unraisablehook)
    if sys.unraisablehook is not _pass_over_interrupts:
        _previous_unraisablehook = sys.unraisablehook
    previous = Previous({signum: signal.signal(signum, _raise_interrupt) for signum in SIGNALS}, sys.unraisablehook)
    sys.unraisablehook = _pass_over_interrupts
    return previous


def restore(previous: Previous) -> None:
    """Puts back the handlers and hook `install` replaced."""
    for signum, handler in previous.handlers.items():
        signal.signal(signum, handler)
    sys.unraisablehook = previous.unraisablehook
