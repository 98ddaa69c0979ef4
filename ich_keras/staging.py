"""Outputs that appear together: written into a staging folder first, then published in one short step.

    with staging.staged_files(out, owned=OUTPUTS.__contains__) as folder:   # RUN/analysis/.tmp-staged-*/
        write(folder / "report.md")                                          # ... every output
    # now out/ holds the new files (renamed in, a signal waiting for the renames); owned ones not written anew are gone

    with staging.staged(soups / "greedy", owned=OUTPUT_FILES.__contains__) as folder:   # soups/.tmp-greedy-*/greedy
        ...
    # now soups/greedy is the new folder (one rename), with the entries it does not own linked across

`staged_files` keeps the folder and what else it holds (a cache, a user's notes, its `.lock`), and works where the
folder is a symbolic link or the working directory; a kill during its renames (only SIGKILL or a power cut: under
`ich_keras.cli.run`, SIGINT and SIGTERM wait for them) can leave some files new and some old. `staged` swaps a
whole folder: a kill leaves either the previous folder or the new one under the name (or the previous one inside
the staging folder, which `remove_leftovers` puts back). Either way an error or a signal before the publish leaves
the previous outputs as they were.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ich_keras import atomic, interrupts
from ich_keras.errors import UserError

TMP = ".tmp-"


@contextlib.contextmanager
def staged_files(folder: str | Path, owned: Callable[[str], bool]):
    """Yields an empty folder inside `folder` (folder/.tmp-staged-*); when the block ends, each file written there
    replaces its namesake in `folder`, and the files of `folder` that are `owned` but were not written anew are
    removed. Everything else in `folder` stays."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"{TMP}staged-", dir=folder))
    try:
        yield scratch
        written = sorted(path.name for path in scratch.iterdir())
        # Checked before the first rename, so that none fails half-way: files replace files.
        folders = [name for name in written if (scratch / name).is_dir() or (folder / name).is_dir()]
        if folders:
            raise UserError(f"{folder} holds folders where files are to be published, or the reverse: {folders}; "
                            f"move them away. Received: folder={str(folder)!r}")
        for name in written:  # flushed before the renames, or a power cut could publish unwritten files
            with open(scratch / name, "rb") as f:
                os.fsync(f.fileno())
        with interrupts.deferred():
            for name in written:
                os.replace(scratch / name, folder / name)
            for path in folder.iterdir():
                if owned(path.name) and path.name not in written and path.is_file():
                    path.unlink()
        atomic.flush_folder(folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def staged(final: str | Path, owned: Callable[[str], bool], before_publish: Callable[[Path], None] | None = None):
    """Yields an empty folder (final.parent/.tmp-<name>-*/<name>); when the block ends, it becomes `final`.

    Args:
        final: the folder the outputs go to (it may not exist yet; a symbolic link to one is followed).
        owned: whether a name in `final` is the writer's: the staged folder's files replace those (one it did not
            write again is gone); every other entry of the previous `final` (but temporaries) is linked into the new
            one first.
        before_publish: called with the staged folder once the block ended, before anything is replaced; it may
            raise to leave `final` as it was.

    Raises:
        UserError when the working directory is inside `final`: the folder it replaces would be deleted under it.
    """
    final = Path(os.path.realpath(final))
    check_not_inside(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"{TMP}{final.name}-", dir=final.parent))
    try:
        folder = scratch / final.name
        folder.mkdir()
        yield folder
        if before_publish is not None:
            before_publish(folder)
        keep_others(final, folder, owned)
        with interrupts.deferred():
            atomic.replace_with(folder, final, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # our own temporary folder; after a publish, the previous one


def check_not_inside(folder: Path) -> None:
    """A UserError when the working directory is `folder` or lies inside it."""
    here = Path(os.path.realpath(Path.cwd()))
    if here == folder or folder in here.parents:
        raise UserError(f"The working directory is inside {folder}, which this command replaces as a whole: run it "
                        f"from another folder (e.g. cd {folder.parent}). Received: cwd={str(here)!r}")


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
    """Deletes what killed `staged` publishes of `final` left: their staging folders beside it
    (final.parent/.tmp-<name>-*) and temporaries in it; a `final` a kill caught between the two renames of a
    publish (it lies in a staging folder as `previous`) is put back first. Call it while holding the lock that
    keeps other writers of `final` out. Returns what was deleted."""
    final = Path(os.path.realpath(final))
    staging_folders = sorted(final.parent.glob(f"{TMP}{final.name}-*"))
    moved_away = [p / "previous" for p in staging_folders if (p / "previous").is_dir()]
    if moved_away and not final.exists():
        os.replace(moved_away[0], final)
    return _removed(staging_folders) + remove_temporaries(final)


def remove_temporaries(folder: str | Path) -> list[Path]:
    """Deletes the temporaries killed writers left in `folder` (a `staged_files` folder, an `atomic_path` file);
    nothing outside it. Call it while holding `folder`'s lock. Returns what was deleted."""
    return _removed(sorted(Path(folder).glob(f"{TMP}*")))


def _removed(paths: list[Path]) -> list[Path]:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    return paths
