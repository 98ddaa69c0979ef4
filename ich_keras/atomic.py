"""Atomic file writes: write under a temporary name in the same folder, flush to disk, then rename.

A rename within one filesystem is atomic on POSIX, so a reader (or a run resumed after `kill -9`) sees either the
old file or the complete new one, never half a file. `replace_with` does the same for a finished folder.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
from pathlib import Path

from ich_keras.errors import UserError


# The errors of a write that say where it went wrong (a full disk or quota, a read-only one), not what was written.
_NAMED_FOR_THE_FILE = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def _create_beside(path: Path, suffix: str) -> Path:
    """A new empty file with a random name beside `path`, created as open() would (the umask applies; mkstemp's
    0600 would keep other users from reading a run directory they share)."""
    while True:
        temp = path.parent / f".tmp-{path.name}-{secrets.token_hex(4)}{suffix}"
        try:
            os.close(os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return temp
        except FileExistsError:
            continue


def flush_folder(folder: Path) -> None:
    """fsyncs `folder` itself, so that a rename in it survives a power cut. Some filesystems (network ones) refuse
    fsync on a folder; the rename is as durable there as they make it."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(handle)


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ""):
    """Yields a temporary path beside `path`; when the block exits normally the file there replaces `path`.

    Args:
        path: the final file.
        suffix: ending the temporary name must keep, e.g. ".weights.h5" (Keras checks it) or ".npz".

    Yields:
        A `Path` to write to. On an exception it is deleted and `path` is left untouched.
    """
    path, temp = Path(path), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = _create_beside(path, suffix)
        yield temp
        # fsync before the rename, or a power cut could leave the new name pointing at unwritten blocks.
        with open(temp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(temp, path)
        flush_folder(path.parent)
    except OSError as error:
        if error.errno not in _NAMED_FOR_THE_FILE:
            raise
        # The file the user knows, not the temporary one; and the system's few words, not a library's page.
        raise OSError(error.errno, os.strerror(error.errno), str(path)) from error
    finally:
        if temp is not None:
            temp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str):
    """Writes `text` to `path` atomically, as UTF-8 (whatever the locale: other machines read the run directory)."""
    with atomic_path(path) as temp:
        temp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, data, indent: int = 2):
    """Writes `data` as JSON to `path` atomically, non-ASCII text as itself (class and file names stay readable)."""
    text = json.dumps(data, indent=indent, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a file name that is not UTF-8 (its bytes as lone surrogates): JSON's own escapes
        text = json.dumps(data, indent=indent)
    write_text(path, text + "\n")


# What to do about a file `read_json` cannot parse: one a command writes afresh, or one only the run's fit wrote.
WRITE_AGAIN = "Restore it, or start the command that writes it again."
RESTORE_FROM_A_COPY = "Restore it from a copy of the run: fit wrote it as the run went, and no command rebuilds it."


def read_json(path: str | Path, remedy: str = WRITE_AGAIN):
    """The JSON in `path`, a file a command wrote with `write_json`. One that does not parse was changed after it was
    written (these writes are atomic), so it is the user's to fix: a `UserError` naming the file and `remedy`."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not valid JSON ({error}); was it edited or cut short? {remedy}") from None


def replace_with(staged: Path, final: Path, scratch: Path) -> None:
    """Makes the finished `staged` file or folder (on `final`'s filesystem) the new `final`, flushed to disk first.

    A file replaces `final` in one rename. A folder cannot replace a non-empty one in one rename: the previous
    `final` first moves into `scratch` (a temporary folder beside it, which the caller deletes), so a kill leaves
    either the previous folder or the new one under `final`'s name, or the previous one in `scratch`.
    """
    for path in staged.rglob("*") if staged.is_dir() else [staged]:
        if path.is_file():  # flushed before the rename, or a power cut could publish unwritten files
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    if staged.is_dir() and final.exists():
        os.replace(final, scratch / "previous")
    os.replace(staged, final)
    flush_folder(final.parent)
