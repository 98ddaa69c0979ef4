"""Soups across runs: ingredients from several run directories (a sweep's fine-tunes), checked to be compatible.

Every run must share the architecture (model name, image size), the pretrained init, the class list and the val
and test splits: a soup averages fine-tunes of one pretrained model (and the merges from W0 take it as theirs); the
soups are chosen on the first run's val split and scored on its test split, so a run whose val or test images
differ (another data seed) could have trained on them. Ingredients are labelled `run/epoch_NNN`, the run named by
its path relative to the runs' common parent, which is also the root of the paths in provenance.json.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from pathlib import Path

import numpy as np

from ich_keras import folder_lock
from ich_keras.errors import UserError


def expand(patterns) -> list[Path]:
    """Run directories from paths or (quoted) glob patterns, in the order given, each pattern's matches sorted."""
    found = []
    for pattern in patterns:
        if Path(pattern).exists() or not glob.has_magic(pattern):
            found.append(Path(pattern))
            continue
        matches = sorted(Path(p) for p in glob.glob(pattern) if Path(p).is_dir())
        if not matches:
            raise UserError(f"No run directory matches the pattern. Received: {pattern!r}")
        found.extend(matches)
    return list(dict.fromkeys(found))


def check_compatible(runs) -> None:
    """Raises a UserError naming the first run that differs from the first one in model, image size, pretrained
    init, classes, the seed of a new head or val / test images."""
    first, digests = runs[0], {}  # each W0 file hashed once, however many runs name it
    for run in runs[1:]:
        apart = differences(first, run, digests)
        if apart:
            what, a, b = apart[0]
            raise UserError(f"Run {str(run.path)!r} cannot be souped with {str(first.path)!r}: its {what} differs "
                            f"({b!r} vs {a!r}). Received: run_dir={str(run.path)!r}")


def differences(first, run, digests: dict | None = None) -> list[tuple[str, object, object]]:
    """(what, first's, run's) for each way the fine-tunes of two runs cannot be souped together (see the module
    docstring); `digests` keeps each W0 file's sha256 across calls."""
    # A model.init of the runs' class count gave them its own head, drawn from no seed (the init is checked the same
    # below, and the classes): their model.head_seed went unused.
    heads = (("the init's own head",) * 2 if _init_gave_its_own_head(first)
             else (_head_origin(first), _head_origin(run)))
    return (start_differences(first.config, run.config, {} if digests is None else digests, heads)
            + splits_apart(first.splits, run.splits))


def start_differences(first, other, digests: dict, heads=None) -> list[tuple[str, object, object]]:
    """(what, first's, other's) for each way fine-tunes of configs `first` and `other` start apart: model, image
    size, pretrained init, and a new head drawn from another seed (`heads`: the two origins, by default their
    `model.head_seed`). `digests` keeps each W0 file's sha256 across calls."""
    differences = [(what, a, b) for what, a, b in (
        ("model", first.model.name, other.model.name),
        ("image size", first.data.image_size, other.data.image_size),
    ) if a != b]
    first_head, other_head = heads or (first.model.head_seed, other.model.head_seed)
    if not _same_init(first.model.init, other.model.init, digests):
        differences.append(("pretrained init (model.init)", first.model.init, other.model.init))
    elif first.model.init and first_head != other_head:
        # A new head drawn from another seed: their average is one of two unrelated heads.
        differences.append(("new head's seed (model.head_seed)", first_head, other_head))
    return differences


def split_differences(first, other) -> list[tuple[str, object, object]]:
    """(key, first's, other's) for each data setting in which configs `first` and `other` could give their runs
    other classes or other val / test images (`data.build_splits`), read from the configs alone: a sweep's first
    check before its points train, for `check_compatible` to find none later. Where it finds some, the splits may
    still be the same (a val_count equal to what val_fraction gives): `built_split_differences` tells."""
    a, b = _split_settings(first.data), _split_settings(other.data)
    return [(key, a.get(key), b.get(key)) for key in dict.fromkeys([*a, *b]) if a.get(key) != b.get(key)]


def built_split_differences(first, other, built: dict, progress: bool = False) -> list[tuple[str, object, object]]:
    """(what, first's, other's) for each way the splits that data sections `first` and `other` build differ, as
    fit builds them (`data.build_splits`: every image decoded and fingerprinted, about 7 s for AHE64's 11,458 on
    two cores): their classes, val or test images.

    Args:
        first, other: `DataConfig`s, their sources as typed (resolved here as fit resolves them).
        built: {DataConfig: Splits} kept across calls, so each data section is built once.
        progress: show the image check's count on stderr where it takes a while.
    """
    for cfg in (first, other):
        if cfg not in built:
            built[cfg] = build_as_fit(cfg, progress)
    return splits_apart(built[first], built[other])


def build_as_fit(data_cfg, progress: bool = False):
    """The `data.Splits` data section `data_cfg` builds, its source resolved as fit resolves it."""
    from ich_keras import data

    return data.build_splits(dataclasses.replace(data_cfg, source=data.resolve_source(data_cfg.source)), progress)


def splits_apart(first, other) -> list[tuple[str, object, object]]:
    """(what, first's, other's) for each way two `data.Splits` differ in their classes or val / test images."""
    differences = []
    if list(first.class_names) != list(other.class_names):
        differences.append(("classes", list(first.class_names), list(other.class_names)))
    for split in ("val", "test"):
        if not _same_examples(first.splits[split], other.splits[split]):
            differences.append((f"{split} split", f"{len(first.splits[split])} images",
                                f"{len(other.splits[split])} other images"))
    return differences


def _split_settings(data_cfg) -> dict:
    """{data.KEY: value} of the settings that decide a run's classes and val / test images: the source and its
    per-class cap always (with the seeds of the cap), a carve's settings only for a split the source has no folder
    for (`data._carve`). Near copies move carved images back to train, so which are carved depends on them too."""
    from ich_keras.data import DIGITS, absolute_source

    source = absolute_source(data_cfg.source)
    settings = {"data.source": source, "data.max_per_class": data_cfg.max_per_class}
    carved = [split for split in ("test", "val") if split not in _split_folders(source)]
    if carved or data_cfg.max_per_class > 0:  # split_seed seeds the carves and the caps
        settings["data.split_seed"] = data_cfg.split_seed
    if carved and source != DIGITS:  # the embedded digits are never compared as copies
        settings["data.near_copies"] = data_cfg.near_copies
    if "test" in carved:
        settings["data.test_fraction"] = data_cfg.test_fraction
    if "val" in carved:
        settings["data.val_count"] = data_cfg.val_count
        if data_cfg.val_count <= 0:  # a count, when given, replaces the fraction
            settings["data.val_fraction"] = data_cfg.val_fraction
    return settings


def _split_folders(source: str) -> set[str]:
    """The splits `source` has folders for; a tfds dataset not yet written as a folder tree counts as none (what
    it has shows only then), so each of its carve settings counts."""
    from ich_keras import tfds_source
    from ich_keras.data import DIGITS

    if source == DIGITS:
        return set()
    if source.startswith(tfds_source.PREFIX):
        root = tfds_source.cache_root(source[len(tfds_source.PREFIX):])
        if not (root / tfds_source.COMPLETE).is_file():
            return set()
    else:
        root = Path(source)
    return {split for split in ("train", "val", "test") if (root / split).is_dir()}


def _head_origin(run):
    """What a run's new head was drawn from: its `model.head_seed`, or, for a run fit before that key existed (its
    config.json has none, which reads as the default 0), its `train.seed`, drawn another way: such a run's head is
    unrelated to that of a run of either kind with another seed, and to a head_seed run's whatever the seeds."""
    written = Path(run.path) / "config.json"  # a config's view of a run (soup --config) has none: its own config
    if not written.is_file() or "head_seed" in json.loads(written.read_text(encoding="utf-8")).get("model", {}):
        return run.config.model.head_seed
    return f"train.seed {run.config.train.seed}, a fit from before model.head_seed"


def _init_gave_its_own_head(run) -> bool:
    """Whether `run`'s model.init holds its class count, so that fit drew no new head: no array of its kept
    checkpoint differs from the init's in the head's class axis. False where that cannot be told (no init, or no
    longer there, or no checkpoint kept)."""
    from ich_keras import weight_layout as layout
    from ich_keras.weight_files import H5Source

    init = run.config.model.init
    if not (init and Path(init).is_file() and run.checkpoints):
        return False
    kept, start = H5Source(run.checkpoints[0].path).layout(), H5Source(init).layout()
    differing = layout.reshaped_keys(start, kept)
    return not set(differing) - set(layout.beyond_head(start, kept, differing))


def _same_init(a: str, b: str, digests: dict) -> bool:
    """Whether two runs' model.init name the same weights: the same path, or two files of the same bytes (`digests`
    keeps each file's sha256). A file no longer where a run was trained cannot be told apart, and is taken for the
    same (a moved W0)."""
    if a == b:
        return True
    if not (a and b):  # one run from scratch, the other from a file
        return False
    if not (Path(a).is_file() and Path(b).is_file()):
        return True
    from ich_keras.soups.provenance import sha256

    return Path(a).stat().st_size == Path(b).stat().st_size and sha256(a, digests) == sha256(b, digests)


def _same_examples(a, b) -> bool:
    return a.keys == b.keys and np.array_equal(a.labels, b.labels)


def collect(patterns, data_source: str | None = None):
    """Loads the runs and lists their kept checkpoints as ingredients.

    Args:
        patterns: run directories or glob patterns.
        data_source: where the runs' images are now, if not in their config.json (`Run.images_at`).

    Returns:
        (runs, checkpoint paths, labels `run/epoch_NNN`, the runs' common parent directory).
    """
    from ich_keras.rundir import load_run

    paths = expand(patterns)
    for path in paths:
        folder_lock.check_not_held(path, "souping")
    runs = [load_run(path, data_source) for path in paths]
    check_compatible(runs)
    root = Path(os.path.commonpath([run.path.resolve().parent for run in runs]))
    paths, names = [], []
    for run in runs:
        label = Path(os.path.relpath(run.path.resolve(), root)).as_posix()
        if not run.checkpoints:
            raise run.none_kept_error(f"leave {run.path} out of --runs")
        missing = [str(c.path) for c in run.checkpoints if not c.path.is_file()]
        if missing:
            raise run.missing_kept_error(missing, f", or leave {run.path} out of --runs")
        for checkpoint in run.checkpoints:
            paths.append(checkpoint.path)
            names.append(f"{label}/epoch_{checkpoint.epoch:03d}")
    return runs, paths, names, root
