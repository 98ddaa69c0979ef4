"""An ImageFolder tree's class folders: `scan_image_folder` lists DIR/{train,val,test}/<class>/** and names each
layout mistake (a split folder named as other tools name it, class folders right in DIR, a stray file, an empty or
single class folder, class folders that differ between splits or only in how their names are written).
"""

from __future__ import annotations

import collections
import functools
import sys
import unicodedata
from pathlib import Path

from ich_keras.errors import UserError
from ich_keras.image_files import describe_left_out, hidden, named_like_image, visible_files

SPLITS = ("train", "val", "test")
# What other exports call the splits (in any case: Train/, Test/): where the split's own folder is missing, such a
# folder would go unused (a test set ignored while test is carved from train), so it is an error saying what to rename.
_SPLIT_ALIASES = {"train": ("train", "training"), "val": ("val", "valid", "validation", "dev"),
                  "test": ("test", "testing")}

def _check_utf8_names(files: list[Path], root: Path) -> None:
    """The run's split lists store file names below `root` as UTF-8 text: a name in another encoding (a cp1252
    archive unpacked on Linux, say) is refused, naming the first one by its bytes."""
    for path in files:
        try:
            path.relative_to(root).as_posix().encode("utf-8")
        except UnicodeEncodeError:
            raise UserError(
                f"A file name is not valid UTF-8; rename such files (e.g. convmv -f cp1252 -t utf-8 -r --notest "
                f"DIR). Received: path={bytes(path)!r}"
            ) from None


def _check_split_names(root: Path) -> None:
    """Raises a UserError naming a folder called as other exports call a split (`_SPLIT_ALIASES`: valid/, Test/,
    training/) where the split's own folder is missing."""
    folders = sorted(entry.name for entry in root.iterdir() if entry.is_dir())
    for split, aliases in _SPLIT_ALIASES.items():
        named = [name for name in folders if name.lower() in aliases and name != split]
        if named and not (root / split).is_dir():
            instead = "" if split == "train" else f" (or move it away to carve {split} from train)"
            raise UserError(f"The {split} split must be a folder named {split}; rename {named[0]}/ to {split}/"
                            f"{instead}. Received: path={str(root / named[0])!r}")


def _class_folders_advice(root: Path) -> str:
    """For a data folder without split folders whose sub-folders are classes (DIR/<class>/*, as other tools take it),
    where to move them; else ""."""
    folders = sorted(entry.name for entry in root.iterdir() if entry.is_dir() and not hidden(entry.name))
    if len(folders) < 2 or any(name in SPLITS for name in folders):
        return ""
    shown = ", ".join(folders[:3]) + (", ..." if len(folders) > 3 else "")
    return (f"; its {len(folders)} folders ({shown}) look like class folders: move them into {root / 'train'}/ "
            f"(val and test are then carved from them: data.val_fraction, data.test_fraction)")


def _encoding_advice(missing: list[str], extra: list[str]) -> str:
    """For class folders of two splits whose names read alike but are other characters (an accent as a letter of its
    own, NFC, or as a mark after its letter, NFD, as a Mac's zip writes names), what to do, with the names escaped so
    the difference shows; else ""."""
    nfc = functools.partial(unicodedata.normalize, "NFC")
    alike = [(m, e) for m in missing for e in extra if nfc(m) == nfc(e)]
    if not alike:
        return ""
    names = ", ".join(f"{ascii(m)} and {ascii(e)}" for m, e in alike)
    return (f" ({names} differ only in how accented letters are written, Unicode NFC and NFD; give the folders one "
            f"form, e.g. convmv -f utf-8 -t utf-8 --nfc -r --notest DIR)")


def _warn_of_case_twins(split_dir: Path, names: tuple[str, ...]) -> None:
    """Prints a warning naming class folders whose names differ only in letter case (dome, Dome) or in how accented
    letters are written (NFC, NFD): two classes on Linux, but one folder once copied to macOS (or, for case,
    Windows), and most often one class named twice."""
    alike = collections.defaultdict(list)
    for name in names:
        alike[unicodedata.normalize("NFC", name).casefold()].append(name)
    for twins in (twins for twins in alike.values() if len(twins) > 1):
        print(f"warning: class folders {' and '.join(map(ascii, twins))} in {split_dir} differ only in letter case "
              f"or in how accented letters are written (Unicode NFC, NFD): they are {len(twins)} classes here, but "
              f"one folder on macOS; if they hold one class, merge them", file=sys.stderr)


def scan_image_folder(root: str | Path) -> tuple[tuple[str, ...], dict[str, list[tuple[str, int]]], list[str]]:
    """Lists `root/{train,val,test}/<class>/**` (train required, the others optional).

    Args:
        root: the data directory.

    Returns:
        (class_names sorted, {split: [(key relative to root, label), ...]} for the splits present, the keys of
        the files left out because they are not named like images).

    Raises:
        UserError (a ValueError) naming the path when `root` or `root/train` is missing, a split holds a stray
        file, a class folder is empty, or the class folders differ between splits.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"Data directory not found. Received: data.source={str(root)!r}")
    _check_split_names(root)
    if not (root / "train").is_dir():
        raise UserError(
            f"Expected an ImageFolder layout DIR/train/<class>/* (val/ and test/ optional), but there is no "
            f"train folder{_class_folders_advice(root)}. Received: path={str(root / 'train')!r}"
        )
    class_names = None
    found, left_out = {}, []
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        entries = sorted(p for p in split_dir.iterdir() if not hidden(p.name))
        for entry in entries:
            if not entry.is_dir():
                raise UserError(f"Expected only class folders in {split_dir}. Received: path={str(entry)!r}")
        names = tuple(entry.name for entry in entries)
        if not names:
            raise UserError(f"Split folder has no class folders. Received: path={str(split_dir)!r}")
        if len(names) < 2:  # often DIR/train/photos/<class>/...: sub-folders are read as one class's images
            raise UserError(f"A classifier needs at least 2 class folders, each holding its images; {split_dir} has "
                            f"one. Received: path={str(split_dir / names[0])!r}")
        if class_names is None:
            _warn_of_case_twins(split_dir, names)  # the other splits must repeat these names exactly
            class_names = names
        elif names != class_names:
            missing = sorted(set(class_names) - set(names))
            extra = sorted(set(names) - set(class_names))
            raise UserError(
                f"Class folders differ between train and {split}: missing {missing}, extra {extra}"
                f"{_encoding_advice(missing, extra)}. Received: path={str(split_dir)!r}"
            )
        examples = []
        for label, name in enumerate(names):
            files = visible_files(split_dir / name)
            _check_utf8_names(files, root)
            keys = [p.relative_to(root).as_posix() for p in files]
            images = [key for key in keys if named_like_image(Path(key))]
            left_out += [key for key in keys if not named_like_image(Path(key))]
            if not images:
                others = f"; its {describe_left_out(keys)}" if keys else ""
                raise UserError(f"Class folder holds no images{others}. Received: path={str(split_dir / name)!r}")
            examples += [(key, label) for key in images]
        found[split] = examples
    return class_names, found, left_out
