"""What `--resume` needs after `kill -9`: `state/state.npz`, rewritten atomically after every epoch.

The file holds every model variable (weights, BatchNorm statistics, seed-generator states), every optimizer
variable (iteration count, hence the schedule position; Adam moments; EMA copies; accumulated gradients; the
float16 loss scale) and a JSON record: the completed epoch, the manifest and history rows as of that epoch, the
seed, and the training wall time so far. The data pipeline's shuffles, crops, flips, MixUp and CutMix are a pure
function of (seed, epoch) (`ich_keras.pipeline.train_dataset`), so restoring these is restoring the whole run;
except with `augment.rand_augment`: keras' RandAugment draws from a seed generator of its own, which a resumed run
starts afresh, so from the resumed epoch on its draws differ from an uninterrupted run's. `history.csv` is
rewritten from the same rows just after the state; a kill between the two leaves it a row short, which the resume
writes from the state.
"""

from __future__ import annotations

import csv
import io
import json
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from ich_keras import atomic, distributed
from ich_keras.checkpoints import CHECKPOINT_DIR, MANIFEST, checkpoint_epoch, delete_unreferenced
from ich_keras.errors import UserError
from ich_keras.weight_layout import Layout
from ich_keras.weight_files import H5Source

STATE_FILE = "state/state.npz"
HISTORY_FILE = "history.csv"


@dataclass
class RunState:
    """A loaded state file: `epoch` completed epochs, the variable values, and the JSON record."""

    epoch: int
    model_values: list[np.ndarray]
    optimizer_values: list[np.ndarray]
    record: dict


def _paths(variables) -> list[str]:
    return [v.path for v in variables]


def save_state(run_dir: str | Path, model: keras.Model, epoch: int, record: dict):
    """Writes model + optimizer variables and `record` (plus `epoch`) to `run_dir/state/state.npz` atomically."""
    arrays = {}
    for prefix, variables in (("model", model.variables), ("optimizer", model.optimizer.variables)):
        for i, variable in enumerate(variables):
            arrays[f"{prefix}/{i:05d}"] = np.asarray(keras.ops.convert_to_numpy(variable.value))
    record = {
        **record,
        "epoch": epoch,
        "model_paths": _paths(model.variables),
        "optimizer_paths": _paths(model.optimizer.variables),
    }
    arrays["record"] = np.frombuffer(json.dumps(record).encode(), dtype=np.uint8)
    with atomic.atomic_path(Path(run_dir) / STATE_FILE, suffix=".npz") as temp, open(temp, "wb") as f:
        np.savez(f, **arrays)


def load_state(run_dir: str | Path) -> RunState | None:
    """The saved state, or None when no epoch completed yet."""
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            record = json.loads(data["record"].tobytes().decode())
            model_values = [data[k] for k in sorted(k for k in data.files if k.startswith("model/"))]
            optimizer_values = [data[k] for k in sorted(k for k in data.files if k.startswith("optimizer/"))]
    # The file is written atomically: one that does not read was changed afterwards (cut short by a copy, say).
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise UserError(f"The run state {path} cannot be read ({type(error).__name__}: {error}); restore it from "
                        "a copy of the run, or start the run again in another --workdir.") from None
    return RunState(record["epoch"], model_values, optimizer_values, record)


def restore_state(model: keras.Model, state: RunState):
    """Assigns saved values to a compiled model's variables and its (built here) optimizer's.

    Raises:
        ValueError naming the first variable whose name or shape differs (the model or optimizer config changed).
    """
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    for kind, variables, values, paths in (
        ("model", model.variables, state.model_values, state.record["model_paths"]),
        ("optimizer", model.optimizer.variables, state.optimizer_values, state.record["optimizer_paths"]),
    ):
        if len(variables) != len(values):
            raise UserError(
                f"The saved state holds {len(values)} {kind} variables but the rebuilt {kind} has "
                f"{len(variables)}; was the config or the ich_keras version changed? "
                f"Received: state variables={len(values)}"
            )
        for variable, value, path in zip(variables, values, paths):
            # Compare the variable's own name (kernel, gamma, ...) and shape: layer and optimizer prefixes get
            # numbered suffixes when a process builds several models ("adam_w_1/iteration").
            if path.rsplit("/", 1)[-1] != variable.path.rsplit("/", 1)[-1] or tuple(variable.shape) != value.shape:
                raise UserError(
                    f"Saved {kind} variable {path!r} {value.shape} does not match the rebuilt "
                    f"{variable.path!r} {tuple(variable.shape)}; was the config or the ich_keras version changed? "
                    f"Received: variable={path!r}"
                )
            variable.assign(value)


def check_checkpoints(run_dir: str | Path, state: RunState, expected: Layout) -> None:
    """Raises a UserError naming the file where checkpoints/ disagrees with the state's manifest, the record of what
    the run kept; called before a resume writes anything. `expected` is the model's layout (`ModelSource(model)
    .layout()`), read on every process of a data-parallel job alike: reading a model's variables runs collectives.

    A kept file that is gone, or is not weights of the model (replaced, cut short), is never written again (a finished
    epoch is not trained twice), and the resumed run failed only when its training ended, scoring its best checkpoint
    on test, or in `soup`. A checkpoint file of an epoch after the next one was not written by the run as its state
    left it (a state restored from an older copy?): the resume would delete it, or overwrite it on reaching that
    epoch. Files of epochs the state knows (dropped from the top k) and of the next one (a kill before the state was
    saved) are the run's own leftovers, deleted as before. A replacement with other weights of this architecture
    cannot be told from the file: nothing records its contents.
    """
    folder = Path(run_dir) / CHECKPOINT_DIR
    manifest = state.record["manifest"]
    where = f"the run state {Path(run_dir) / STATE_FILE} (whose copy of {MANIFEST} says which files the run kept)"
    for epoch, name in sorted(manifest["kept"].items(), key=lambda item: int(item[0])):
        path = folder / name
        if not path.is_file():
            raise UserError(f"Epoch {epoch}'s kept checkpoint is missing, and a resume never trains a finished epoch "
                            f"again: put the file back (from a copy of the run), or start a new run. It is named in "
                            f"{where}. Received: missing={str(path)!r}")
        try:
            expected.check_matches(H5Source(path).layout(), "the run's model", str(path))
        except UserError as error:
            raise UserError(f"Epoch {epoch}'s kept checkpoint does not hold this run's weights (replaced or cut "
                            f"short?): put the run's file back, or start a new run. ({error}). "
                            f"Received: checkpoint={str(path)!r}") from None
    later = sorted(p.name for p in folder.glob("epoch_*.weights.h5")
                   if (checkpoint_epoch(p.name) or 0) > state.epoch + 1)
    if later:
        raise UserError(f"{folder} holds checkpoints of epochs after the next one, which this run (its state ends at "
                        f"epoch {state.epoch}) did not write: a resume would delete them, or write over them. Move "
                        f"them out of {folder}, or put back the run state they belong to. Received: files={later}")


def write_history(run_dir: str | Path, rows: list[dict]):
    """Rewrites history.csv from all rows (columns: the union of keys, epoch first)."""
    columns = ["epoch"] + sorted({k for row in rows for k in row} - {"epoch"})
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(Path(run_dir) / HISTORY_FILE, text.getvalue())


class SaveRunState(keras.callbacks.Callback):
    """After each epoch (after `TopKCheckpoints`): appends the history row, saves the state, then rewrites
    history.csv (never ahead of the state) and deletes the checkpoint files the new manifest no longer names.

    Args:
        run_dir: the run directory.
        topk: the run's `TopKCheckpoints` (its manifest is stored with the state).
        rows: history rows of the epochs already done (from the state on resume).
        seed: the run's seed, recorded for the reader.
        elapsed: training seconds already spent (before a resume).
        schedule: the learning-rate schedule, to log the rate reached at each epoch's end.
        writer: write files (False on every process but the first of a multi-process run); every process waits
            here until the writer is done, so none reads a half-finished epoch.
    """

    def __init__(self, run_dir, topk, rows: list[dict], seed: int, elapsed: float, schedule, writer: bool = True):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.topk = topk
        self.rows = list(rows)
        self.seed = seed
        self.elapsed = elapsed
        self.schedule = schedule
        self.writer = writer
        self._start = time.perf_counter()

    @property
    def wall_time(self) -> float:
        return self.elapsed + time.perf_counter() - self._start

    def on_epoch_end(self, epoch, logs=None):
        epoch += 1
        updates = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        row = {
            "epoch": epoch,
            "updates": updates,
            "lr": float(keras.ops.convert_to_numpy(self.schedule(updates))),
        }
        row.update({k: float(v) for k, v in (logs or {}).items() if np.ndim(v) == 0})
        row["wall_time_s"] = round(self.wall_time, 3)
        self.rows.append(row)
        if self.writer:
            record = {
                "manifest": self.topk.manifest,
                "history": self.rows,
                "seed": self.seed,
                "wall_time_s": self.wall_time,
            }
            with distributed.writing():
                save_state(self.run_dir, self.model, epoch, record)
            # history.csv only now: it never lists an epoch the state does not hold (a kill before this line leaves
            # it a row short, which the resume writes from the state); unreferenced checkpoints only now: the state
            # names the new manifest.
            write_history(self.run_dir, self.rows)
            delete_unreferenced(self.run_dir, self.topk.manifest)
        distributed.barrier(f"epoch {epoch} saved")
