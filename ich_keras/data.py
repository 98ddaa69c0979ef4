"""Datasets as lists of examples: an ImageFolder tree (`class_folders`) with every image checked, carved into seeded
splits.

An example is a `key` and an integer label. For an ImageFolder source the key is the file's path relative to the
data directory ("train/altar/x.jpg"); for the embedded digits it is "digits/<index>". `ich_keras.split_lists`
writes the final lists into the run directory, so every later command reads exactly the examples training used, in
the same order, without rescanning. `ich_keras.pipeline` turns them into tf.data.
"""

from __future__ import annotations

import collections
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ich_keras.class_folders import SPLITS, scan_image_folder
from ich_keras.config import DataConfig
from ich_keras.copies import Fingerprint, components, copy_advice, copy_groups
from ich_keras.errors import UserError
from ich_keras.image_files import DECODE_THREADS, check_image, file_digest
from ich_keras.progress import Phase

DIGITS = "digits"
# The decoder the split lists name for every image. Always PIL now; the lists keep the column so older runs (which
# also said "tf") still read.
DECODER = "pil"


@dataclass(frozen=True)
class Examples:
    """One split: parallel lists of keys, labels and decoders ("tf", "pil" or "array")."""

    keys: tuple[str, ...]
    labels: np.ndarray
    decoders: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, index) -> Examples:
        index = np.asarray(index, dtype=np.int64)
        return Examples(
            tuple(self.keys[i] for i in index), self.labels[index], tuple(self.decoders[i] for i in index)
        )


@dataclass(frozen=True)
class Splits:
    """What `build_splits` resolved: class names in label order and the three splits."""

    class_names: tuple[str, ...]
    splits: dict[str, Examples]
    bad_images: tuple[tuple[str, str], ...] = ()
    left_out: tuple[str, ...] = ()  # keys of files not named like images (`image_files.IMAGE_SUFFIXES`): in no split
    same_images: tuple[tuple[str, ...], ...] = ()  # keys of copies of one picture in two splits or classes, grouped
    # {carved split: how many images carved for it stayed in train with their copies}; only when just built
    kept_with_copies: dict[str, int] = field(default_factory=dict)
    # {train key: its fingerprint}, for `predict` to say which inputs are copies of train images; only when just built
    train_fingerprints: dict[str, Fingerprint] = field(default_factory=dict)


def absolute_source(source: str) -> str:
    """An ImageFolder path made absolute (the run directory must not depend on the working directory later);
    "digits" and "tfds:NAME" unchanged."""
    if source == DIGITS or source.startswith("tfds:"):
        return source
    return str(Path(source).expanduser().resolve())


def resolve_source(source: str) -> str:
    """`absolute_source`, with "tfds:NAME" materialised once as an ImageFolder tree and replaced by its path
    (`ich_keras.tfds_source`)."""
    if source.startswith("tfds:"):
        from ich_keras.tfds_source import materialize

        return materialize(source[len("tfds:"):])
    return absolute_source(source)


def _check_images(root: Path, examples: list[tuple[str, int]], size: int, fingerprints: dict[str, Fingerprint],
                  progress: bool = False):
    """Decodes every file once for `size`, in threads; returns the good (key, label, decoder) examples and the bad
    (key, reason) pairs. Adds each good file's fingerprint to `fingerprints` ({key: `copies.Fingerprint`}). With
    `progress`, a check that takes more than a few seconds (a camera's photos by the thousand) shows its count on
    stderr."""
    phase = Phase("data", len(examples), progress, min_interval_s=10.0, quiet_for_s=5.0)
    split = examples[0][0].split("/", 1)[0] if examples else ""
    checks = []
    with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
        for check in pool.map(lambda example: check_image(root / example[0], size), examples):
            phase.step(f"checking the {split} images")
            checks.append(check)
    good, bad = [], []
    for (key, label), (reason, fingerprint) in zip(examples, checks):
        if reason is None:
            good.append((key, label, DECODER))
            fingerprints[key] = fingerprint
        else:
            bad.append((key, reason))
    return good, bad


def _refuse_bad_images(root: Path, bad: list[tuple[str, str]]) -> None:
    """The UserError for bad images found in any split, all counted in one message, the first five named."""
    listed = "; ".join(f"{root / key}: {reason}" for key, reason in bad[:5])
    raise UserError(f"{len(bad)} file(s) are not readable images (set data.skip_bad_images = true to skip and list "
                    f"them). Received: {listed}")


def load_digits_images() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """scikit-learn's embedded digits as (1797, 8, 8, 3) uint8 RGB images, labels and class names "0".."9"."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixel values are 0..16 (counts of set pixels in 4x4 blocks of the original 32x32 bitmaps).
    gray = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=-1)  # the gray value in every channel
    return rgb, digits.target.astype(np.int64), tuple(map(str, range(10)))


def stratified_split(
    labels: np.ndarray, fraction: float, count: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of example indices.

    Each class gives round(fraction * n_c) examples (or its share of `count` when `count` > 0), at least one when
    the fraction is positive, and always keeps at least one on the first side.

    Returns:
        (kept indices, carved indices), each sorted.
    """
    rng = np.random.default_rng(seed)
    kept, carved = [], []
    for c in np.unique(labels):
        index = np.flatnonzero(labels == c)
        index = index[rng.permutation(index.size)]
        share = count * index.size / labels.size if count > 0 else fraction * index.size
        n = 0 if share == 0 else min(index.size - 1, max(1, round(share)))
        carved.append(index[:n])
        kept.append(index[n:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(carved))


def _cap_per_class(examples: Examples, max_per_class: int, seed: int) -> Examples:
    if max_per_class <= 0:
        return examples
    rng = np.random.default_rng(seed)
    index = []
    for c in np.unique(examples.labels):
        members = np.flatnonzero(examples.labels == c)
        index.append(np.sort(rng.choice(members, min(max_per_class, members.size), replace=False)))
    return examples.subset(np.sort(np.concatenate(index)))


def _carve(available: dict[str, Examples], cfg: DataConfig,
           group_of: dict[str, int]) -> tuple[dict[str, Examples], dict[str, int]]:
    """Fills in missing test and val splits from train, seeded and stratified, keeping copies of one picture in train
    (`_copies_kept`). Returns the splits and {carved split: how many images stayed in train with their copies}."""
    splits, kept_with_copies = dict(available), {}
    if "test" not in splits:
        if cfg.test_fraction <= 0:
            raise UserError(
                "The source has no test split; set data.test_fraction > 0 to carve one. "
                f"Received: data.test_fraction={cfg.test_fraction}"
            )
        kept, carved = stratified_split(splits["train"].labels, cfg.test_fraction, 0, cfg.split_seed)
        kept, carved, kept_with_copies["test"] = _copies_kept(splits["train"], kept, carved, group_of)
        splits["train"], splits["test"] = splits["train"].subset(kept), splits["train"].subset(carved)
    if "val" not in splits:
        if cfg.val_fraction <= 0 and cfg.val_count <= 0:
            raise UserError(
                "The source has no val split; set data.val_fraction or data.val_count > 0 to carve one. "
                f"Received: data.val_fraction={cfg.val_fraction}, data.val_count={cfg.val_count}"
            )
        train_labels = splits["train"].labels
        most = len(train_labels) - len(np.unique(train_labels))  # each class keeps a train image
        if cfg.val_count > most:  # it would carve fewer than asked, unsaid
            raise UserError(f"data.val_count asks for more val images than train can give ({most}: each class keeps "
                            f"at least one); ask for fewer, or set data.val_fraction instead. "
                            f"Received: data.val_count={cfg.val_count}")
        # A different seed stream from the test carve, so changing one split does not reshuffle the other.
        kept, carved = stratified_split(
            splits["train"].labels, cfg.val_fraction, cfg.val_count, cfg.split_seed + 1
        )
        kept, carved, kept_with_copies["val"] = _copies_kept(splits["train"], kept, carved, group_of)
        splits["train"], splits["val"] = splits["train"].subset(kept), splits["train"].subset(carved)
    return splits, kept_with_copies


def _copies_kept(examples: Examples, kept: np.ndarray, carved: np.ndarray,
                 group_of: dict[str, int]) -> tuple[np.ndarray, np.ndarray, int]:
    """(kept, carved) indices of `examples` with every carved image that has a copy among the kept ones moved back to
    the kept side, and how many moved: a val or test image that is a copy of a train image (a photographer's
    near-identical shots, a photo saved twice) would score what training saw. Without copies, the carve is unchanged.

    `group_of`: {key: its group of copies} (`copies.components`); a key not in it (the embedded digits) has none."""
    group = np.array([group_of.get(key, -1 - i) for i, key in enumerate(examples.keys)])  # unchecked: alone
    joined = np.isin(group[carved], group[kept])
    return np.sort(np.concatenate([kept, carved[joined]])), carved[~joined], int(joined.sum())


def build_splits(cfg: DataConfig, progress: bool = False) -> Splits:
    """Scans and checks the source and returns the train/val/test examples (nothing written).

    Args:
        cfg: the data section; `cfg.source` must already be resolved (`resolve_source`).
        progress: show the image check's progress on stderr when it takes more than a few seconds.

    Returns:
        `Splits`. Bad images raise `UserError` (a ValueError) naming them, or with `cfg.skip_bad_images` are
        dropped and reported in `Splits.bad_images`.
    """
    bad, left_out, fingerprints = [], [], {}
    # Each split's cap draws from a seed stream of its own; split_seed and split_seed + 1 carve test and val.
    split_seeds = {split: cfg.split_seed + 2 + i for i, split in enumerate(SPLITS)}
    if cfg.source == DIGITS:
        _, labels, class_names = load_digits_images()
        keys = tuple(f"{DIGITS}/{i}" for i in range(labels.size))
        examples = Examples(keys, labels, ("array",) * labels.size)
        capped = {"train": _cap_per_class(examples, cfg.max_per_class, split_seeds["train"])}
    else:
        root = Path(cfg.source)
        class_names, found, left_out = scan_image_folder(root)
        good = {}
        for split, pairs in found.items():
            keys, labels = zip(*pairs)
            examples = Examples(keys, np.asarray(labels, dtype=np.int64), ("",) * len(keys))
            # Cap before checking: a quick run over a slice should not decode the whole dataset.
            examples = _cap_per_class(examples, cfg.max_per_class, split_seeds[split])
            labelled = list(zip(examples.keys, examples.labels.tolist()))
            good[split], bad_split = _check_images(root, labelled, cfg.image_size, fingerprints, progress)
            bad += bad_split
        if bad and not cfg.skip_bad_images:  # after every split: all of them in one message, not a split a time
            _refuse_bad_images(root, bad)
        capped = {}
        for split, examples in good.items():
            if not examples:
                raise UserError(f"No readable images left in split. Received: path={str(root / split)!r}")
            keys, labels, decoders = zip(*examples)
            capped[split] = Examples(keys, np.asarray(labels, dtype=np.int64), decoders)
    group_of = components(fingerprints, cfg.near_copies, progress)
    splits, kept_with_copies = _carve(capped, cfg, group_of)
    missing = sorted(set(range(len(class_names))) - set(splits["train"].labels.tolist()))
    if missing:
        names = [class_names[c] for c in missing]
        skipped = collections.Counter(key.split("/")[1] for key, _ in bad if key.split("/")[0] == "train")
        emptied = [f"{name} ({skipped[name]})" for name in names if skipped[name]]
        why = (f"; data.skip_bad_images skipped every train image of {', '.join(emptied)} as unreadable (without "
               f"it, the error lists each file and why)") if emptied else ""
        raise UserError(f"Every class needs train examples{why}. Received: classes without any={names}")
    for split in ("val", "test"):
        if not len(splits[split]):  # every class too small to give one (a class keeps at least one for train)
            copies_kept = kept_with_copies.get(split, 0)
            if copies_kept:
                advice = copy_advice(cfg.near_copies)
                details = f"{copies_kept} images; {advice}" if advice else f"{copies_kept} images"
                why = f"every image carved for it has a copy in train, which keeps it there ({details})"
            else:
                why = "no class has enough images to carve one out for it"
            raise UserError(
                f"The {split} split is empty: {why}. Add images or a {split}/ folder. Received: "
                f"{len(splits['train'])} train images over {len(class_names)} classes"
            )
    train_fingerprints = {key: fingerprints[key] for key in splits["train"].keys if key in fingerprints}
    return Splits(tuple(class_names), splits, tuple(bad), tuple(left_out), _same_images(splits, group_of),
                  kept_with_copies, train_fingerprints)


def _same_images(splits: dict[str, Examples], group_of: dict[str, int]) -> tuple[tuple[str, ...], ...]:
    """`copies.copy_groups` over the final splits."""
    entries = [(key, split, label) for split, examples in splits.items()
               for key, label in zip(examples.keys, examples.labels.tolist())]
    return copy_groups(*zip(*entries), group_of) if entries else ()


def files_text(source: str, splits: Splits) -> str:
    """One line per image of every split, its key and the digest of its bytes: what hosts compare to know they hold
    the same pictures (reads every file; "digits" for the embedded digits)."""
    if source == DIGITS:
        return source
    keys = [key for _, examples in sorted(splits.splits.items()) for key in examples.keys]
    with ThreadPoolExecutor(DECODE_THREADS) as pool:  # hashlib releases the GIL
        return "\n".join(f"{key}\t{digest}" for key, digest in
                         zip(keys, pool.map(lambda key: file_digest(Path(source) / key), keys)))


def missing_files(source: str, examples: Examples) -> list[str]:
    """The keys of `examples` with no file under `source` (none for the embedded digits)."""
    if source == DIGITS:
        return []
    root = Path(source)
    return [key for key in examples.keys if not (root / key).exists()]


def copies_of_train_in_test(splits: Splits) -> tuple[str, ...]:
    """The test keys that share a group of copies with a train key (`Splits.same_images`): their scores are no
    test. A carved test split has none; a test/ folder given with the data may."""
    test, train = set(splits.splits["test"].keys), set(splits.splits["train"].keys)
    return tuple(sorted(key for group in splits.same_images if train.intersection(group)
                        for key in group if key in test))
