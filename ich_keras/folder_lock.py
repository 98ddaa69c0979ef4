"""One command at a time writes a folder: an `fcntl.flock` on FOLDER/.lock, held from the first write to the last.

A second command on the same folder stops at once with an error naming the holder (its command, pid and host)
instead of interleaving its files; the kernel releases the lock when a process dies, so a killed command never
blocks the next one. `fit` holds its run directory's lock, `soup` its soups folder's; `soup` and `analyze` check
that no fit holds the run's before they read its checkpoints (`check_not_held`), and inside `reading()` (their whole
command) keep a shared lock on it, so a fit started meanwhile stops, naming them: whichever comes second of a fit
and a command reading its run stops. `fit` also refuses while a soup command holds the run's soups folder.
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

    If the block fails (an error, Ctrl-C), what this call created and holds no result goes again: the lock file, and
    the folder and its parents where they were created here and are empty (a failed `soup cook --output NEWDIR`
    left NEWDIR/.lock behind). A lock file or folder that was there before stays.

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
    created = _missing_folders(folder)
    try:
        with _locked_file(folder / LOCK, folder, alternative, wait) as (handle, new_file):
            handle.seek(0)
            handle.truncate()
            handle.write(f"{command}\npid {os.getpid()} on {socket.gethostname()}\n")
            handle.flush()
            try:
                yield
            except BaseException:
                if new_file:  # unlinked while still held: a command waiting on it sees it go (`_locked_file`)
                    (folder / LOCK).unlink(missing_ok=True)
                raise
    except BaseException:
        _remove_empty(created)
        raise


def _missing_folders(folder: Path) -> list[Path]:
    """`folder` and those of its parents that do not exist yet, deepest first."""
    missing = []
    for path in (folder.absolute(), *folder.absolute().parents):
        if path.exists() or path.is_symlink():
            break
        missing.append(path)
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Removes each folder (deepest first) while it is empty: anything put there meanwhile keeps it, and its parents."""
    for path in folders:
        try:
            path.rmdir()
        except OSError:
            return


@contextlib.contextmanager
def _locked_file(path: Path, folder: Path, alternative: str, wait: bool):
    """Yields (the open lock file, flock'ed, whether this call created it). A holder whose command failed deletes a
    lock file it created while it still holds it; the lock then taken on that file locks nothing anyone else can
    open, so a lock taken on a file no longer at `path` is let go and the lock taken again."""
    while True:
        opened = _open(path, folder)
        if opened is None:
            continue
        fd, new_file = opened
        with os.fdopen(fd, "a+") as handle:
            _flock(handle, path, folder, alternative, wait, new_file)
            if _same_file(handle, path):
                yield handle, new_file
                return  # closing the file releases the lock


def _open(path: Path, folder: Path) -> tuple[int, bool] | None:
    """(a descriptor of the lock file, whether this call created it), `folder` made first; None when the folder went
    meanwhile (a failed holder removes a folder it made once its lock file is gone): try again."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666), True
        except FileExistsError:
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o666), False
    except FileNotFoundError:
        return None


def _flock(handle, path: Path, folder: Path, alternative: str, wait: bool, new_file: bool) -> None:
    """flock's answers as user errors: held by another command (named), or a filesystem without locks (where a lock
    file this call created goes again: no command can hold it)."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        if _only_readers(handle):
            raise UserError(f"A command is reading {folder} (a soup or an analysis of the run: `reading`); wait for "
                            f"it to finish or {alternative}. Received: lock={str(path)!r}") from None
        handle.seek(0)
        holder, _, where = handle.read().strip().partition("\n")
        raise UserError(f"Another {holder or 'command'} ({where or 'another process'}) is writing to {folder}; "
                        f"wait for it to finish or {alternative}. Received: lock={str(path)!r}") from None
    except OSError as error:
        if error.errno not in _NO_LOCKS:
            raise
        if new_file:
            path.unlink(missing_ok=True)
        raise UserError(f"The filesystem of {folder} cannot lock files ({error.strerror}), and one command at a "
                        f"time must write it: use a folder on a local disk or on a mount with locks (Lustre: "
                        f"-o flock). Received: lock={str(path)!r}") from None


def _only_readers(handle) -> bool:
    """Whether the lock `handle`'s exclusive lock was refused is held shared, by commands reading the folder (the
    text in the file is then the last writer's, not theirs)."""
    try:
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    fcntl.flock(handle, fcntl.LOCK_UN)
    return True


# The lock files `check_not_held` keeps locked shared while a command runs `reading()`; None outside it.
_reading: list | None = None


@contextlib.contextmanager
def reading():
    """For the block (a soup or analyze command), every run `check_not_held` finds free stays locked shared: a fit
    that starts meanwhile stops at its exclusive lock instead of deleting checkpoints the command reads."""
    global _reading
    outer, _reading = _reading, []
    try:
        yield
    finally:
        for handle in _reading:
            handle.close()  # closing releases the lock
        _reading = outer


def _same_file(handle, path: Path) -> bool:
    """Whether the open `handle` is still the file at `path`."""
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(handle.fileno())
    return (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)


def check_not_held(folder: str | Path, doing: str,
                   why: str = "the checkpoints it keeps change every epoch") -> None:
    """Raises a UserError naming the holder while a command holds `folder`'s lock: `doing` (e.g. "souping") a run
    that a fit is still training would read checkpoints it deletes as better epochs arrive (`why` says so in the
    message). Inside `reading()` the lock found free stays locked shared until the block ends. A folder without a
    lock file is not locked: nothing is written into a run that is read (a copy made without its dotfiles is
    unguarded against a fit started in it meanwhile)."""
    path = Path(folder) / LOCK
    if not path.is_file():  # never written by a command that locks
        return
    handle = open(path)  # noqa: SIM115  (kept open, and locked, for the rest of `reading()` where it runs)
    try:
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        holder, _, where = handle.read().strip().partition("\n")
        handle.close()
        raise UserError(f"A {holder or 'command'} ({where or 'another process'}) is still writing {folder}: "
                        f"{why}; wait for it to end before {doing} it. Received: lock={str(path)!r}") from None
    except OSError as error:
        handle.close()
        if error.errno not in _NO_LOCKS:  # no locks there: no fit could have held one either
            raise
        return
    if _reading is None:
        handle.close()  # releases the lock
    else:
        _reading.append(handle)
