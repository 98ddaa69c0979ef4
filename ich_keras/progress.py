"""Labelled progress on stderr, one line per step: what every command prints while it works.

    phase = Phase("greedy", total=8, enabled=not quiet)
    for name in names:
        phase.step(f"trying {name} on val")   # [greedy] trying epoch_011 on val (3/8) ~12 s left

A step is announced as it starts; from the third step on, the line ends with an estimate of the time left (the mean
time of the steps done so far times the steps still to run). stdout stays for results (tables, summaries), so a
user can pipe those without the progress lines.
"""

from __future__ import annotations

import sys
import time
from pathlib import PurePath


def short_name(name) -> str:
    """What a progress line calls a weights file: 'runs/demo/checkpoints/epoch_011.weights.h5' -> 'epoch_011'."""
    return PurePath(str(name)).name.removesuffix(".h5").removesuffix(".weights")


def format_seconds(seconds: float) -> str:
    """'42 s', '3 min 05 s' or '1 h 02 min'."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def format_step(label: str, message: str, index: int, total: int | None, elapsed: float) -> str:
    """The line of step `index` (1-based) of `total`, started `elapsed` seconds after the phase began.

    The time left is shown from the third step on (the first one often includes a compilation).
    """
    count = f"({index}/{total})" if total else f"({index})"
    line = f"[{label}] {message} {count}" if message else f"[{label}] {count}"
    if total and index > 2 and index <= total:
        left = elapsed / (index - 1) * (total - index + 1)
        line += f" ~{format_seconds(left)} left"
    return line


class Phase:
    """One labelled phase of a command, printing `[label] message (i/n)` to stderr at each step.

    Args:
        label: the phase, e.g. "greedy", "analyze", "evaluate".
        total: the number of steps (None when unknown).
        enabled: False prints nothing (--quiet).
        min_interval_s: print a step only if this long has passed since the last line (the last step always
            prints); for phases of many short steps, such as batches.
        quiet_for_s: print nothing until this long after the start, so a phase that is usually quick (the data
            check of a small dataset) stays silent, and one that takes a while shows its progress.
        stream: where to print (default stderr).
    """

    def __init__(self, label: str, total: int | None, enabled: bool = True, min_interval_s: float = 0.0,
                 quiet_for_s: float = 0.0, stream=None):
        self.label = label
        self.total = total
        self.enabled = enabled
        self.min_interval_s = min_interval_s
        self.quiet_for_s = quiet_for_s
        self.stream = stream
        self.index = 0
        self._start = time.perf_counter()
        self._last_print = None

    def step(self, message: str = "") -> None:
        """Announces the next step."""
        self.index += 1
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._start < self.quiet_for_s:
            return
        last = self.total is not None and self.index == self.total
        if self._last_print is not None and not last and now - self._last_print < self.min_interval_s:
            return
        self._last_print = now
        print(format_step(self.label, message, self.index, self.total, now - self._start),
              file=self.stream or sys.stderr, flush=True)


def note(label: str, message: str, enabled: bool = True) -> None:
    """One labelled line on stderr, for a phase of a single step: `[label] message`."""
    if enabled:
        print(f"[{label}] {message}", file=sys.stderr, flush=True)
