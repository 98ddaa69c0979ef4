"""A folder of outputs replaced whole: written into a staged folder beside it, then renamed over it in one step.

    with staging.staged(out, owned=OUTPUTS.__contains__) as folder:   # an empty folder beside `out`
        write(folder / "report.md")                       # ... every output
    # now `out` holds the new outputs, and whatever else it held (a user's notes, a cache, its .lock), linked across

A kill leaves either the previous folder or the new one under the name (or the previous one inside the staged folder,
which `remove_leftovers` puts back); an error deletes the staged folder and leaves `out` as it was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ich_keras import atomic

TMP = ".tmp-"


@contextlib.contextmanager
def staged(final: str | Path, owned: Callable[[str], bool], before_publish: Callable[[Path], None] | None = None):
    """Yields an empty folder (final.parent/.tmp-<name>-*/<name>); when the block ends, it becomes `final`.

    Args:
        final: the folder the outputs go to (it may not exist yet).
        owned: whether a name in `final` is the writer's: the staged folder's files replace those (one it did not
            write again is gone); every other entry of the previous `final` (but temporaries) is linked into the new
            one first.
        before_publish: called with the staged folder once the block ended, before anything is replaced; it may
            raise to leave `final` as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"{TMP}{final.name}-", dir=final.parent))
    try:
        folder = scratch / final.name
        folder.mkdir()
        yield folder
        if before_publish is not None:
            before_publish(folder)
        keep_others(final, folder, owned)
        atomic.replace_with(folder, final, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # our own temporary folder; after a publish, the previous one


def keep_others(previous: Path, new: Path, owned: Callable[[str], bool]) -> None:
    """Links (or copies, across filesystems) every entry of `previous` that is not `owned`, not a temporary and not
    written anew into `new`. Linked, not moved: until the rename that publishes `new`, the previous folder must stay
    whole."""
    if not previous.is_dir():
        return
    for path in previous.iterdir():
        if owned(path.name) or path.name.startswith(TMP) or (new / path.name).exists():
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.copytree(path, new / path.name, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(path, new / path.name)


def _link_or_copy(source: Path, target: Path) -> None:
    if Path(source).is_symlink():
        os.symlink(os.readlink(source), target)
        return
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or one without hard links
        shutil.copy2(source, target)


def remove_leftovers(final: str | Path) -> list[Path]:
    """Deletes what killed writers of `final` left: staged folders beside it (final.parent/.tmp-<name>-*) and
    temporary files in it; a `final` a kill caught between the two renames of a publish (it lies in a staged folder
    as `previous`) is put back first. Call it while holding `final`'s lock. Returns what was deleted."""
    final = Path(final)
    staged_folders = sorted(final.parent.glob(f"{TMP}{final.name}-*"))
    moved_away = [p / "previous" for p in staged_folders if (p / "previous").is_dir()]
    if moved_away and not final.exists():
        os.replace(moved_away[0], final)
    stale = staged_folders + sorted(final.glob(f"{TMP}*"))
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    return stale
