"""A share of the machine's memory that threads wait for, so that many large allocations at once cannot run it out.

The image decoders of the data check, tf.data and `predict` run in threads (8 of them, or as many as tf.data
chooses); an archive's scans of a hundred megapixels and more each take a gigabyte or more while decoded. Each
decode holds its estimated bytes of one `MemoryBudget` and waits while the others hold too much, so a folder of
scans is decoded a few at a time instead of eight at a time into an out-of-memory kill.
"""

from __future__ import annotations

import contextlib
import os
import threading

FALLBACK_MEMORY_BYTES = 8 << 30  # where the system does not say how much memory it has


def physical_memory_bytes() -> int:
    """The machine's memory, or a container's limit where that is lower (cgroup v2); 8 GiB where neither is known."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):  # no sysconf (Windows), or no such name
        total = FALLBACK_MEMORY_BYTES
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()  # "max" where the container has no limit
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return total


class MemoryBudget:
    """Bytes that threads hold while they use them; `hold` waits until the bytes fit beside what others hold.

    A request larger than the whole budget is let through when nothing else is held, so it runs alone rather than
    never.
    """

    def __init__(self, capacity_bytes: int):
        self.capacity_bytes = int(capacity_bytes)
        self.held_bytes = 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, nbytes: int):
        nbytes = max(0, int(nbytes))
        with self._changed:
            self._changed.wait_for(lambda: self.held_bytes == 0
                                   or self.held_bytes + nbytes <= self.capacity_bytes)
            self.held_bytes += nbytes
        try:
            yield
        finally:
            with self._changed:
                self.held_bytes -= nbytes
                self._changed.notify_all()
