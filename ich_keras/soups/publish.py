"""Soup outputs appear whole or not at all: a lock per soups folder, staged method folders, the ingredient fingerprint.

A soup command holds `locked(soups_dir)` (`ich_keras.folder_lock`: soups_dir/.lock) from its first write to its
last, so a second command on the same folder stops at once instead of interleaving its files. Inside,
each method is cooked into a temporary folder soups_dir/.tmp-<method>-*/<method> (`staged`) and renamed over the
previous folder only when its weights, results.json and results.md are all written: a kill leaves the previous soup
and its report together, never a new weights file under an old report; an error deletes the staged folder. Files a
user put into a method's folder (notes, plots) are linked into the new one. Temporary leftovers of killed commands (a
method's staged folder, the .tmp-* in its folder) are removed when the next command cooking it takes the lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

from ich_keras import folder_lock, staging
from ich_keras.errors import UserError

TMP = staging.TMP
# A folder holding one of these is a previous soup's output, which a new soup may replace; anything else is not.
SOUP_FILES = ("results.json", "soup.weights.h5")
# Every name a soup command writes into a method's folder: what a new soup replaces. Anything else there is the user's.
OUTPUT_FILES = frozenset({*SOUP_FILES, "results.md", "soup_bn.weights.h5", "layers.json", "provenance.json"})


def locked(soups_dir: str | Path, wait: bool = False):
    """Holds the soups folder's lock for the block (`ich_keras.folder_lock.held`; `wait` blocks until it is free)."""
    return folder_lock.held(soups_dir, "soup command", "pass another --output", wait)


def remove_leftovers(soups_dir: str | Path, methods) -> list[Path]:
    """Deletes what killed soup commands left for `methods`: their staged folders (soups_dir/.tmp-<method>-*), the
    temporary files in their folders and those of the summary. Nothing else: `soups_dir` may be any folder the user
    named. A method folder that a kill caught between the two renames of a publish (it lies in its staged folder as
    `previous`) is put back first. Call it under `locked`, so no live command's temporary files are touched.
    Returns what was deleted."""
    soups_dir = Path(soups_dir)
    stale = [path for method in methods for path in staging.remove_leftovers(soups_dir / method)]
    for path in soups_dir.glob(f"{TMP}results.md-*"):
        path.unlink(missing_ok=True)
        stale.append(path)
    return sorted(stale)


def check_replaceable(folder: str | Path) -> None:
    """Raises a UserError naming `folder` unless it is absent, empty (but for temporary files) or a previous soup
    output (holds one of `SOUP_FILES`): a user's folder that happens to carry a method's name is never replaced; nor
    one the working directory is inside (`staging.check_not_inside`)."""
    folder = Path(folder)
    staging.check_not_inside(Path(os.path.realpath(folder)))
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_dir() and not folder.is_symlink() and all(p.name.startswith(TMP) for p in folder.iterdir()):
        return
    if not folder.is_dir() or not any((folder / name).is_file() for name in SOUP_FILES):
        raise UserError(f"The soup output folder exists and holds no previous soup ({' or '.join(SOUP_FILES)}), "
                        f"so it is left untouched; move it away or pass another --output. "
                        f"Received: path={str(folder)!r}")


def check_inputs_kept(folder: str | Path, inputs) -> None:
    """Raises a UserError when one of `inputs` (an ingredient, W0) is a file that publishing `folder` replaces (a
    soup of the previous soup of that method): the command would delete what it was cooked from, and its
    provenance and `analyze` would then name the new soup in its place."""
    replaced = {(Path(folder) / name).resolve() for name in OUTPUT_FILES}
    inside = [str(path) for path in inputs if path and Path(path).resolve() in replaced]
    if inside:
        raise UserError(f"An input of this soup is a file its output replaces ({folder}/): the soup would delete "
                        f"what it was cooked from. Copy the file out of that folder first, or pass another --output. "
                        f"Received: {', '.join(inside)}")


@contextlib.contextmanager
def staged(soups_dir: str | Path, method: str):
    """Yields an empty folder to write `method`'s outputs into; when the block ends, it becomes soups_dir/<method>.

    The previous soup's outputs there are replaced in one rename, and the user's files in it (any name not in
    `OUTPUT_FILES`) are linked into the new folder first (`ich_keras.staging.staged`). If the block raises, the
    staged folder is deleted and the previous one stays as it was; if the process dies, the next command's
    `remove_leftovers` deletes it. Call it under `locked`.
    """
    final = Path(soups_dir) / method
    check_replaceable(final)

    def check_publishable(folder: Path) -> None:
        unlisted = sorted({p.name for p in folder.iterdir()} - OUTPUT_FILES)
        # A bug, not a user error: an output not in OUTPUT_FILES would be taken for the user's at the next cook.
        assert not unlisted, f"soup outputs missing from publish.OUTPUT_FILES: {unlisted}"
        check_replaceable(final)

    with staging.staged(final, OUTPUT_FILES.__contains__, check_publishable) as folder:
        yield folder


def fingerprint(digests) -> str:
    """One sha256 over the ingredients' file digests, in any order: equal exactly when two soups were cooked from
    the same set of files (contents, whatever their names or folders)."""
    return hashlib.sha256("\n".join(sorted(digests)).encode()).hexdigest()


def stored_path(path: str | Path, run_dir: str | Path) -> str:
    """How results.json records an ingredient: relative to the run directory when inside it or inside a run beside it
    (soups across runs: `../<run>/checkpoints/...`), so a copied or moved run or sweep keeps using its own files;
    else absolute."""
    path, run_dir = Path(path).resolve(), Path(run_dir).resolve()
    if run_dir.parent in path.parents:
        return Path(os.path.relpath(path, run_dir)).as_posix()
    return str(path)


def check_distinct_names(names, paths, advice: str) -> None:
    """Raises a UserError listing the files that share a name. Ingredients are told apart by name (results.json's
    "chosen" and steps, provenance's "used", the analysis' rows and tables), so two files with one name, epoch_001 of
    two runs, would be taken for one another silently.

    Args:
        names: each ingredient's name.
        paths: each ingredient's file, in the same order.
        advice: what to do instead, for the message.
    """
    files: dict[str, list[str]] = {}
    for name, path in zip(names, paths):
        files.setdefault(str(name), []).append(str(path))
    shared = {name: found for name, found in files.items() if len(found) > 1}
    twice = {name: found for name, found in shared.items() if len({Path(p).resolve() for p in found}) == 1}
    if twice:  # one file given again (two globs that overlap), not two files: say so
        listed = "; ".join(f"{found[0]} ({len(found)} times)" for found in twice.values())
        raise UserError(f"An ingredient is listed more than once: list each file once (to weigh one more, soup a copy "
                        f"under another name). Received: {listed}")
    if shared:
        listed = "; ".join(f"{name!r}: {', '.join(found)}" for name, found in shared.items())
        raise UserError(f"Ingredients are told apart by name, and {len(shared)} name(s) belong to more than one "
                        f"file: {advice} Received: {listed}")


def resolve_ingredient(stored: str, run_dir: str | Path, results_path: str | Path) -> Path:
    """The file a results.json ingredient path names: relative paths against the run directory, never the cwd.

    Raises:
        UserError naming the path, the run and the results.json when the file is not there.
    """
    path = Path(stored)
    path = path if path.is_absolute() else Path(run_dir) / path
    if not path.is_file():
        raise UserError(f"An ingredient listed in {results_path} is missing (paths are relative to the run "
                        f"directory {str(run_dir)!r}); cook the soups again with `python -m ich_keras.soup`. "
                        f"Received: path={str(path)!r}")
    return path
