"""One command at a time writes a folder: an `fcntl.flock` on FOLDER/.lock, held from the first write to the last.

A second command on the same folder stops at once with an error naming the holder (its command, pid and host)
instead of interleaving its files; the kernel releases the lock when a process dies, so a killed command never
blocks the next one. `fit` holds its run directory's lock, `soup` its soups folder's; `soup` and `analyze` check
that no fit holds the run's before they read its checkpoints (`check_not_held`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from pathlib import Path

from ich_keras.errors import UserError

LOCK = ".lock"
# What flock raises on a filesystem without locks (Lustre mounted without -o flock, some NFS and FUSE mounts).
_NO_LOCKS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP)


@contextlib.contextmanager
def held(folder: str | Path, command: str, alternative: str, wait: bool = False):
    """Holds `folder`'s lock for the block.

    Args:
        folder: the folder the command writes (created if missing).
        command: what holds it ("fit", "soup command"), written in the lock file for the next command's message.
        alternative: what the user can do instead of waiting ("pass another --output").
        wait: block until the lock is free; by default a held lock is an error at once.

    Raises:
        UserError naming the folder and the holder (its command, pid and host) when it is held and not `wait`, or
        naming the folder when its filesystem has no locks.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.seek(0)
            holder, _, where = handle.read().strip().partition("\n")
            raise UserError(f"Another {holder or 'command'} ({where or 'another process'}) is writing to {folder}; "
                            f"wait for it to finish or {alternative}. Received: lock={str(path)!r}") from None
        except OSError as error:
            if error.errno not in _NO_LOCKS:
                raise
            raise UserError(f"The filesystem of {folder} cannot lock files ({error.strerror}), and one command at a "
                            f"time must write it: use a folder on a local disk or on a mount with locks (Lustre: "
                            f"-o flock). Received: lock={str(path)!r}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{command}\npid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        yield  # closing the file releases the lock


def check_not_held(folder: str | Path, reading: str) -> None:
    """Raises a UserError naming the holder while a command holds `folder`'s lock: `reading` (e.g.
    "souping") a run that a fit is still training would read checkpoints it deletes as better epochs arrive."""
    path = Path(folder) / LOCK
    if not path.is_file():  # never written by a command that locks
        return
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released when the file closes
        except BlockingIOError:
            holder, _, where = handle.read().strip().partition("\n")
            raise UserError(f"A {holder or 'command'} ({where or 'another process'}) is still writing {folder}: "
                            f"the checkpoints it keeps change every epoch; wait for it to end before {reading} it. "
                            f"Received: lock={str(path)!r}") from None
        except OSError as error:
            if error.errno not in _NO_LOCKS:  # no locks there: no fit could have held one either
                raise
