"""A run's split lists on disk: what fit resolved from the data, written once, read by every later command.

    classes.json                class names in label order
    splits/{train,val,test}.csv key, label, decoder: the examples of each split in training's order
    bad_images.txt              files skipped (`data.skip_bad_images`), with the reason
    same_images.txt             copies of one picture in two splits or classes, one group per line
    train_fingerprints.npz      keys, digests, thumbnails of the train images (for `predict` to name copies)

Every file is written atomically as UTF-8; one of the last three with nothing to list is removed.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ich_keras import atomic
from ich_keras.copies import Fingerprint, read_fingerprints, write_fingerprints
from ich_keras.data import SPLITS, Examples, Splits
from ich_keras.errors import UserError

SAME_IMAGES = "same_images.txt"  # in the run directory: one group of copies of a picture per line, tab-separated
TRAIN_FINGERPRINTS = "train_fingerprints.npz"  # in the run directory: keys, digests, thumbnails of the train images


def _write_or_remove(path: Path, lines: list[str]) -> None:
    """Writes `lines` to `path` atomically, or removes `path` when there are none: a run started again (its first
    start never finished an epoch) must not keep the list of that start, which readers would trust."""
    if lines:
        atomic.write_text(path, "".join(line + "\n" for line in lines))
    else:
        path.unlink(missing_ok=True)


def _split_csv(examples: Examples) -> str:
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["key", "label", "decoder"])
    writer.writerows(zip(examples.keys, examples.labels.tolist(), examples.decoders))
    return rows.getvalue()


def splits_text(splits: Splits) -> str:
    """The class names and split lists as `write_splits` writes them, in one string: what two hosts must agree on."""
    return "\n".join(["\t".join(splits.class_names)]
                     + [f"{split}\n{_split_csv(examples)}" for split, examples in sorted(splits.splits.items())])


def write_splits(run_dir: str | Path, splits: Splits):
    """Writes classes.json, splits/{train,val,test}.csv and, if there are any, bad_images.txt (the files skipped),
    `SAME_IMAGES` (copies of one picture in two splits or classes) and `TRAIN_FINGERPRINTS` atomically, all text as
    UTF-8; one of the last three with nothing to list is removed if an earlier start left it."""
    run_dir = Path(run_dir)
    atomic.write_json(run_dir / "classes.json", list(splits.class_names))
    for split, examples in splits.splits.items():
        atomic.write_text(run_dir / "splits" / f"{split}.csv", _split_csv(examples))
    _write_or_remove(run_dir / "bad_images.txt", [f"{key}\t{reason}" for key, reason in splits.bad_images])
    _write_or_remove(run_dir / SAME_IMAGES, ["\t".join(group) for group in splits.same_images])
    if splits.train_fingerprints:
        with atomic.atomic_path(run_dir / TRAIN_FINGERPRINTS, suffix=".npz") as temp:
            write_fingerprints(temp, splits.train_fingerprints)
    else:
        (run_dir / TRAIN_FINGERPRINTS).unlink(missing_ok=True)


def read_splits(run_dir: str | Path) -> Splits:
    """Reads back what `write_splits` wrote."""
    run_dir = Path(run_dir)
    class_names = tuple(atomic.read_json(run_dir / "classes.json", atomic.RESTORE_FROM_A_COPY))
    splits = {}
    for split in SPLITS:
        path = run_dir / "splits" / f"{split}.csv"
        if not path.is_file():
            raise UserError(f"Run directory lacks its split list. Received: path={str(path)!r}")
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        splits[split] = Examples(
            tuple(r["key"] for r in rows),
            np.asarray([int(r["label"]) for r in rows], dtype=np.int64),
            tuple(r["decoder"] for r in rows),
        )
    bad = tuple(tuple(line.split("\t", 1)) for line in _read_lines(run_dir / "bad_images.txt"))
    same = tuple(tuple(line.split("\t")) for line in _read_lines(run_dir / SAME_IMAGES))
    return Splits(class_names, splits, bad, same_images=same)


def _read_lines(path: Path) -> list[str]:
    """The non-empty lines of the UTF-8 text file `path`; none where there is no such file."""
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line] if path.is_file() else []


def read_train_fingerprints(run_dir: str | Path) -> dict[str, Fingerprint]:
    """{train key: `copies.Fingerprint`} as fit wrote them; empty for a run without them (the embedded digits, or
    a run made before they were kept)."""
    path = Path(run_dir) / TRAIN_FINGERPRINTS
    return read_fingerprints(path) if path.is_file() else {}
