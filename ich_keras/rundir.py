"""Read a run directory written by `python -m ich_keras.fit`: the one entry point for soup and analysis code.

    from ich_keras.rundir import load_run

    run = load_run("runs/demo")
    run.config                    # the resolved `Config` training ran with (config.json)
    run.class_names               # tuple of names in label order (classes.json)
    run.num_classes
    model = run.build_model()     # fresh, uncompiled keras.Model returning logits (weights not loaded)
    model = run.build_model(run.checkpoints[0].path)   # the same, holding that file's weights
    run.checkpoints               # kept checkpoints, by epoch: [Checkpoint(epoch, path, val={loss, accuracy, ...})]
    run.ranked("f1")              # that metric's kept checkpoints, best first (manifest order)
    run.best("accuracy")          # the best kept checkpoint by val accuracy, ties to the lower val loss
    model.load_weights(run.checkpoints[0].path)
    ds = run.dataset("val", batch_size=32)   # tf.data of (normalised float32 images, int64 labels) batches
    labels = run.labels("test")   # (n,) int64, the order `dataset("test", ...)` yields

`dataset(split, batch_size)` is deterministic, unshuffled and unaugmented, built from the split lists saved in the
run (`splits/{train,val,test}.csv`) with the run's image size and the model's normalisation: exactly what the
top-k callback scored on "val" and `results.json` on "test". The layout of the run directory:

    config.json  classes.json  splits/{train,val,test}.csv  [bad_images.txt]  [same_images.txt]
    train_fingerprints.npz (for predict to name inputs that copy a train image: `ich_keras.copies`)
    history.csv  results.json  state/state.npz
    checkpoints/epoch_NNN.weights.h5  checkpoints/manifest.json  (format: `ich_keras.checkpoints`)
    .lock  (held by a running fit, and shared by a soup or analyze reading the run: `ich_keras.folder_lock`)
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ich_keras import atomic, checkpoints, data, ranking, split_lists
from ich_keras.config import Config, apply_overrides, config_from_dict, parse_override
from ich_keras.errors import UserError


@dataclass(frozen=True)
class Checkpoint:
    """One kept epoch: its weights file and its validation metrics."""

    epoch: int
    path: Path
    val: dict = field(compare=False)


@dataclass(frozen=True)
class Run:
    """A loaded run directory; see the module docstring."""

    path: Path
    config: Config
    splits: data.Splits
    manifest: dict
    _checked: set = field(default_factory=set, compare=False, repr=False)  # splits whose files were found

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.splits.class_names

    @property
    def num_classes(self) -> int:
        return len(self.splits.class_names)

    @property
    def image_size(self) -> int:
        return self.config.data.image_size

    def _entry(self):
        # Imported late: the registry imports every architecture (and keras-hub), which reading a run needs not.
        from ich_keras import models

        return models.entry(self.config.model.name)

    @property
    def mean(self) -> tuple[float, float, float]:
        return tuple(self._entry().mean)

    @property
    def std(self) -> tuple[float, float, float]:
        return tuple(self._entry().std)

    def build_model_with_classes(self, num_classes: int):
        from ich_keras import models

        return models.build(self.config.model.name, num_classes, self.image_size)

    def build_model(self, weights: str | Path | None = None):
        """A fresh keras.Model of the run's architecture, class count and image size, built under the current keras
        dtype policy (float32 unless the caller set another): random weights, or those of the `.weights.h5` file
        `weights` of this model (`init_weights.build_with_weights`: no initializer runs)."""
        if weights is None:
            return self.build_model_with_classes(self.num_classes)
        from ich_keras.init_weights import build_with_weights  # not at the top: it imports the converter (and Keras)

        return build_with_weights(self.build_model, weights, new_head=False)

    def checkpoint_path(self, epoch: int) -> Path:
        return self.path / checkpoints.CHECKPOINT_DIR / checkpoints.checkpoint_name(epoch)

    @property
    def checkpoints(self) -> list[Checkpoint]:
        """Every kept checkpoint, by epoch."""
        return [
            Checkpoint(int(e), self.path / checkpoints.CHECKPOINT_DIR / name, self.manifest["epochs"][e])
            for e, name in sorted(self.manifest["kept"].items(), key=lambda item: int(item[0]))
        ]

    def check_kept(self, paths=None, command: str = "cook") -> None:
        """Raises a UserError naming the kept checkpoints among `paths` (default: all) whose file is gone.

        A file deleted by hand is never written again (`fit --resume` only adds epochs), so the message says to put
        it back or to give the soup `command` the files left, which it takes as --checkpoints.
        """
        wanted = None if paths is None else {Path(p).resolve() for p in paths}
        kept = self.checkpoints
        missing = [str(c.path) for c in kept if not c.path.is_file() and (wanted is None or c.path.resolve() in wanted)]
        if not missing:
            return
        left = [str(c.path) for c in kept if c.path.is_file()]
        flags = " (with your method flags)" if command == "cook" else ""
        argv = shlex.join(["python", "-m", "ich_keras.soup", command, str(self.path), "--checkpoints", *left])
        use_left = f", or {command} the {len(left)} left: `{argv}`{flags}" if left else " (no other is left)"
        raise self.missing_kept_error(missing, use_left)

    def none_kept_error(self, instead: str) -> UserError:
        """The error for a run without kept checkpoints; `instead` says what else the command takes. Where the
        manifest is gone but checkpoint files remain, it says so and names them (it read as "the run kept none")."""
        folder = self.path / checkpoints.CHECKPOINT_DIR
        files = sorted(p.name for p in folder.glob("epoch_*.weights.h5") if checkpoints.is_checkpoint_file(p.name))
        if files and not (folder / checkpoints.MANIFEST).is_file():
            return UserError(f"{folder / checkpoints.MANIFEST} is missing, so which of the {len(files)} checkpoint "
                             f"files in {folder} the run kept is unknown: put the manifest back, or {instead}. "
                             f"Received: files={files}")
        return UserError(f"The run kept no checkpoints; {instead}. Received: run_dir={str(self.path)!r}")

    def missing_kept_error(self, missing: list[str], instead: str) -> UserError:
        """The error for kept checkpoints deleted by hand; `instead` ends the advice (", or ...")."""
        return UserError(f"A kept checkpoint listed in {self.path / checkpoints.CHECKPOINT_DIR / checkpoints.MANIFEST} "
                         f"is missing, and nothing writes it again (not even fit --resume): put the file back"
                         f"{instead}. Received: missing={missing}")

    def ranked(self, metric: str) -> list[Checkpoint]:
        """The kept checkpoints of `metric`'s top-k list, best first."""
        if metric not in self.manifest["ranked"]:
            raise UserError(
                f"The run ranks no metric {metric!r}; it ranks {sorted(self.manifest['ranked'])}. "
                f"Received: metric={metric!r}"
            )
        by_epoch = {c.epoch: c for c in self.checkpoints}
        return [by_epoch[e] for e in self.manifest["ranked"][metric]]

    def best(self, metric: str) -> Checkpoint:
        """The best kept checkpoint by validation `metric`, picked as every command picks it
        (`ich_keras.ranking`: ties broken by lower validation loss, then by the earlier epoch)."""
        if not self.ranked(metric):  # raises naming the metrics the run ranks
            raise UserError(f"The run kept no checkpoint yet. Received: run_dir={str(self.path)!r}")
        kept = self.checkpoints
        return kept[ranking.best([c.val for c in kept], metric)]

    def labels(self, split: str) -> np.ndarray:
        return self._examples(split).labels.copy()

    def _examples(self, split: str) -> data.Examples:
        if split not in self.splits.splits:
            raise UserError(f"Unknown split; expected one of {data.SPLITS}. Received: split={split!r}")
        return self.splits.splits[split]

    def images_at(self, source: str) -> Run:
        """The run reading its images from the folder `source` instead of config.json's `data.source` (the data
        moved, or the run came from another machine); config.json is not changed. `image_source` checks the files."""
        cfg = self.config
        resolved = data.resolve_source(source)
        if resolved != cfg.data.source and resolved != data.DIGITS and not Path(resolved).is_dir():
            what = "is a file, not a folder" if Path(resolved).exists() else "does not exist"
            raise UserError(f"The folder given for the run's images (--set data.source=DIR) {what}. "
                            f"Received: data.source={source!r}")
        moved = dataclasses.replace(cfg.data, source=resolved)
        return dataclasses.replace(self, config=dataclasses.replace(cfg, data=moved), _checked=set())

    def image_source(self, split: str) -> str:
        """The data folder, once every image of `split` in the run's split list is found in it; else a UserError
        saying how to give the folder that holds them (--set data.source=DIR)."""
        source = self.config.data.source
        if split in self._checked:
            return source
        missing = data.missing_files(source, self._examples(split))
        if missing and not Path(source).is_dir():
            raise UserError(f"The run's data folder is not there (moved, or the run came from another machine?): "
                            f"give the folder that holds its images now with --set data.source=DIR (config.json "
                            f"keeps the old place). Received: data.source={source!r}")
        if missing:
            raise UserError(f"{len(missing)} of the {len(self._examples(split))} {split} images in the run's split "
                            f"list are not in its data folder (first: {missing[0]}): restore them, or give the "
                            f"folder that holds them with --set data.source=DIR. Received: data.source={source!r}")
        self._checked.add(split)
        return source

    def dataset(self, split: str, batch_size: int, cache: bool | None = None):
        """Deterministic, unshuffled, unaugmented tf.data of (normalised float32 images, int64 labels) batches.

        Args:
            split: "train", "val" or "test".
            batch_size: batch size; the last batch may be smaller.
            cache: keep decoded images in memory after the first pass (default: the run's `data.cache`).
        """
        from ich_keras import pipeline

        return pipeline.eval_dataset(
            self.image_source(split),
            self._examples(split),
            self.image_size,
            self.mean,
            self.std,
            batch_size,
            cache=self.config.data.cache if cache is None else cache,
            workers=self.config.data.workers,
        )

    def in_memory(self, split: str, batch_size: int):
        """`dataset`'s batches, decoded once and held in memory as uint8 (`pipeline.DecodedSplit`): for passing over
        one split many times."""
        from ich_keras import pipeline

        return pipeline.decoded_split(self.image_source(split), self._examples(split), self.image_size, self.mean,
                                      self.std, batch_size, workers=self.config.data.workers)

    def train_dataset(self, steps_per_epoch: int, initial_epoch: int = 0):
        """The augmented, shuffled training stream `fit` uses (epochs `initial_epoch` .. `train.epochs - 1`)."""
        from ich_keras import pipeline

        cfg = self.config
        return pipeline.train_dataset(
            self.image_source("train"),
            self._examples("train"),
            self.num_classes,
            self.image_size,
            self.mean,
            self.std,
            cfg.augment,
            cfg.train.batch_size,
            steps_per_epoch,
            cfg.train.seed,
            initial_epoch,
            cfg.train.epochs,
            cache=cfg.data.cache,
            workers=cfg.data.workers,
        )

    @property
    def results(self) -> dict | None:
        """results.json (test metrics of each metric's best checkpoint), or None before training finished."""
        path = self.path / "results.json"
        return atomic.read_json(path) if path.is_file() else None


SOURCE_KEY = "data.source"


def source_override(overrides) -> tuple[str | None, list[str]]:
    """`--set data.source=DIR` (where a run's images are now) taken out of `overrides`: (DIR or None, the rest)."""
    source, rest = None, []
    for override in overrides:
        key, value = parse_override(override)
        if ".".join(key) == SOURCE_KEY:
            source = value
        else:
            rest.append(override)
    return source, rest


def run_config(config_path: Path, overrides: list[str] = ()) -> Config:
    """A run's config.json (with `--set` overrides) as a `Config`; an error in it names the file, since a run
    written by another version of ich_keras can hold a key this one does not know."""
    try:
        saved = json.loads(config_path.read_text(encoding="utf-8"))
        config_from_dict(saved)
    except (UserError, json.JSONDecodeError) as error:
        raise UserError(f"The run's config cannot be read: {error} (in {config_path}; written by another version "
                        f"of ich_keras?)") from None
    return config_from_dict(apply_overrides(saved, list(overrides)))  # an error here is the override's


def _runs_near(path: Path) -> str:
    """For a folder that is no run, as advice: "there is no such folder" where it is missing, the run its parent or
    grandparent is (a run's checkpoints/ or soups/uniform/), or the runs it holds (a sweep's folder); else ""."""
    if not path.exists():
        return "; there is no such folder"
    for parent in list(path.resolve().parents)[:3 if path.is_file() else 2]:
        if (parent / "config.json").is_file():
            # A checkpoint or soup file given for its run: the run first, the file as its weights.
            return f"; it is {'a file ' * path.is_file()}inside the run {parent}"
    if not path.is_dir():
        return "; it is a file, not a folder"
    runs = sorted(entry.name for entry in path.iterdir() if (entry / "config.json").is_file())
    if not runs:
        return ""
    shown = ", ".join(runs[:3]) + (", ..." if len(runs) > 3 else "")
    return f"; it holds {len(runs)} run{'s' if len(runs) > 1 else ''} ({shown}): pass one of them"


def check_is_run(run_dir: str | Path) -> None:
    """Raises a UserError unless `run_dir` holds a run's config.json, saying which runs it is in or holds."""
    if not (Path(run_dir) / "config.json").is_file():
        raise UserError(f"Not a run directory (no config.json); pass a directory written by python -m ich_keras.fit"
                        f"{_runs_near(Path(run_dir))}. Received: run_dir={str(run_dir)!r}")


def load_run(run_dir: str | Path, data_source: str | None = None) -> Run:
    """Loads the run in `run_dir`.

    Args:
        run_dir: a directory `python -m ich_keras.fit` wrote (training may still be running or have crashed; the
            manifest then lists the epochs kept so far).
        data_source: where the run's images are now, if not in config.json's `data.source` (`Run.images_at`).

    Returns:
        A `Run`.
    """
    path = Path(run_dir)
    check_is_run(path)
    config = run_config(path / "config.json")
    manifest = checkpoints.read_manifest(path, config.checkpoint.keep)
    run = Run(path, config, split_lists.read_splits(path), manifest)
    return run if data_source is None else run.images_at(data_source)
