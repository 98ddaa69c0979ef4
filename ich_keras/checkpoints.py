"""Top-k checkpoints per validation metric, recorded in `checkpoints/manifest.json`.

Manifest (JSON):
    {
      "rules":  [{"metric": "loss", "mode": "min", "k": 8}, ...],
      "epochs": {"1": {"loss": ..., "accuracy": ..., "precision": ..., "recall": ..., "f1": ...}, ...},
      "ranked": {"loss": [7, 5, ...], ...},          best first, at most k epochs per metric
      "kept":   {"5": "epoch_005.weights.h5", ...}   every epoch some list references, each saved once
    }
Epochs count from 1 (epoch 1 = the weights after the first pass). Ranking rule: by value (lowest first for
mode "min", highest first for "max"); ties go to the *earlier* epoch, so a later epoch must strictly improve on
an equal one to displace it; NaN ranks last. (That rule decides what is kept; the best of the kept checkpoints, as
every command picks it, breaks ties by lower val loss: `ich_keras.ranking`.) Rankings are recomputed from all
epochs' metrics, so they never depend on the order of updates. Files no ranked list references are deleted; every
write is atomic.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import keras

from ich_keras import _keras_compat, atomic, distributed
from ich_keras.config import KeepRule
from ich_keras.errors import UserError
from ich_keras.evaluation import evaluate, forward
from ich_keras.init_weights import save_model_weights

CHECKPOINT_DIR = "checkpoints"
MANIFEST = "manifest.json"


def checkpoint_name(epoch: int) -> str:
    return f"epoch_{epoch:03d}.weights.h5"


def checkpoint_epoch(name: str) -> int | None:
    """The epoch of a checkpoint file named as `checkpoint_name` names it, else None."""
    match = re.fullmatch(r"epoch_(\d+)\.weights\.h5", name)
    return int(match[1]) if match else None


def rank_epochs(epoch_metrics: dict[str, dict], metric: str, mode: str, k: int) -> list[int]:
    """The best `k` epochs by `metric` under the module's ranking rule.

    Args:
        epoch_metrics: {"epoch": {metric: value}} as stored in the manifest.
        metric: e.g. "f1".
        mode: "min" or "max".
        k: how many to keep.

    Returns:
        Epoch numbers, best first.
    """
    if mode not in ("min", "max"):
        raise ValueError(f'mode must be "min" or "max". Received: mode={mode!r}')

    def key(epoch: str):
        value = float(epoch_metrics[epoch][metric])
        if math.isnan(value):
            return (1, 0.0, int(epoch))
        return (0, value if mode == "min" else -value, int(epoch))

    return [int(epoch) for epoch in sorted(epoch_metrics, key=key)[:k]]


def empty_manifest(rules: tuple[KeepRule, ...]) -> dict:
    return {
        "rules": [{"metric": r.metric, "mode": r.mode, "k": r.k} for r in rules],
        "epochs": {},
        "ranked": {r.metric: [] for r in rules},
        "kept": {},
    }


def update_manifest(manifest: dict, epoch: int, metrics: dict) -> dict:
    """A new manifest with `epoch`'s metrics added and every ranking and the kept set recomputed."""
    epochs = {**manifest["epochs"], str(epoch): {name: float(metrics[name]) for name in _scalar(metrics)}}
    ranked = {r["metric"]: rank_epochs(epochs, r["metric"], r["mode"], r["k"]) for r in manifest["rules"]}
    kept_epochs = sorted({e for lst in ranked.values() for e in lst})
    return {
        "rules": manifest["rules"],
        "epochs": epochs,
        "ranked": ranked,
        "kept": {str(e): checkpoint_name(e) for e in kept_epochs},
    }


def _scalar(metrics: dict) -> list[str]:
    return [
        name for name, value in metrics.items() if isinstance(value, (int, float)) and name != "num_examples"
    ]


def read_manifest(run_dir: str | Path, rules: tuple[KeepRule, ...] = ()) -> dict:
    """The run's manifest, or an empty one for `rules` before the first epoch wrote it."""
    path = Path(run_dir) / CHECKPOINT_DIR / MANIFEST
    if not path.is_file():
        return empty_manifest(rules)
    manifest = atomic.read_json(path, atomic.RESTORE_FROM_A_COPY)
    shapes = {"rules": list, "epochs": dict, "ranked": dict, "kept": dict}
    if not isinstance(manifest, dict) or any(not isinstance(manifest.get(k), t) for k, t in shapes.items()):
        # Valid JSON of another shape (edited by hand): a KeyError or TypeError traceback in every command before.
        raise UserError(f"{path} is not a checkpoint manifest (a table of rules, epochs, ranked and kept); was it "
                        f"edited? {atomic.RESTORE_FROM_A_COPY} Received: {str(manifest)[:80]}")
    return manifest


def write_manifest(run_dir: str | Path, manifest: dict):
    atomic.write_json(Path(run_dir) / CHECKPOINT_DIR / MANIFEST, manifest)


def is_checkpoint_file(name: str) -> bool:
    """Whether `name` is one fit writes in checkpoints/: an epoch's checkpoint or a temporary file of one."""
    return re.fullmatch(r"(\.tmp-)?epoch_\d+\.weights\.h5(-.*)?", name) is not None


def delete_unreferenced(run_dir: str | Path, manifest: dict) -> list[str]:
    """Deletes the checkpoint files (and leftover temporary files) fit wrote that the manifest does not reference;
    returns their names. A file of another name is not fit's, and stays."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    referenced = set(manifest["kept"].values())
    deleted = []
    for path in folder.glob("*.weights.h5*"):
        if is_checkpoint_file(path.name) and path.name not in referenced:
            path.unlink()
            deleted.append(path.name)
    return sorted(deleted)


def check_finite_loss(split: str, loss: float, epoch: int) -> None:
    """Stops a diverged run before anything of its epoch is kept.

    Raises:
        UserError naming the epoch and the loss.
    """
    if not math.isfinite(float(loss)):
        raise UserError(f"Training diverged in epoch {epoch}: the {split} loss is {float(loss)}. Nothing of this "
                        f"epoch was kept; lower train.learning_rate or set train.global_clipnorm and start a new run "
                        f"(--resume would repeat it from the last finished epoch). Received: {split} loss={loss}")


class EMAWeights:
    """Context manager that puts the optimizer's moving averages into the model and restores the raw weights.

    Keras keeps EMA copies in `_keras_compat.ema_variables(optimizer)` (private, but the only handle; keras'
    own SwapEMAWeights callback reads the same list) and copies them into the model only when fit ends.
    """

    def __init__(self, model, enabled: bool):
        self.model, self.enabled = model, enabled

    def _swap(self):
        optimizer = self.model.optimizer
        optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer wraps it (float16)
        for variable, average in zip(self.model.trainable_variables, _keras_compat.ema_variables(optimizer)):
            value = keras.ops.copy(variable.value)
            variable.assign(average)
            average.assign(value)

    def __enter__(self):
        if self.enabled:
            self._swap()

    def __exit__(self, *exc):
        if self.enabled:
            self._swap()


class TopKCheckpoints(keras.callbacks.Callback):
    """After each epoch: scores the val split with `evaluate`, keeps the top-k epochs per metric on disk.

    Adds `val_<metric>` entries to the epoch logs for the callbacks after it (history, TensorBoard).

    Args:
        run_dir: the run directory; files go to `run_dir/checkpoints/`.
        val_dataset: finite tf.data of (normalised images, int labels) batches.
        class_names: names in label order.
        manifest: the manifest to continue (`empty_manifest(rules)` for a new run, the saved one on resume).
        ema: evaluate and save the EMA weights instead of the raw ones.
        verbose: print which epochs are kept after each epoch.
        writer: write files (False on every process but the first of a multi-process run: they only score).
    """

    def __init__(
        self, run_dir, val_dataset, class_names, manifest: dict, ema: bool = False, verbose: int = 1,
        writer: bool = True,
    ):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.val_dataset = val_dataset
        self.class_names = list(class_names)
        self.manifest = manifest
        self.ema = ema
        self.verbose = verbose
        self.writer = writer

    def on_epoch_end(self, epoch, logs=None):
        epoch += 1  # keras counts from 0; the manifest from 1
        check_finite_loss("train", (logs or {}).get("loss", 0.0), epoch)
        with EMAWeights(self.model, self.ema):
            labels, logits = forward(self.model, self.val_dataset)
            metrics = evaluate(labels, logits, self.class_names)
            check_finite_loss("val", metrics["loss"], epoch)
            manifest = update_manifest(self.manifest, epoch, metrics)
            if self.writer and str(epoch) in manifest["kept"]:
                with distributed.writing():
                    save_model_weights(self.model, self.run_dir / CHECKPOINT_DIR / checkpoint_name(epoch))
        # Order matters for crash safety: the file exists before the manifest names it. Files the new manifest no
        # longer names leave only after the resume state holds that manifest (`resume.SaveRunState`): a kill before
        # then resumes from the previous manifest, whose files must all still be there.
        if self.writer:
            write_manifest(self.run_dir, manifest)
        self.manifest = manifest
        if logs is not None:
            logs.update({f"val_{name}": manifest["epochs"][str(epoch)][name] for name in _scalar(metrics)})
        if self.verbose:
            print(f"Epoch {epoch}: kept epochs {sorted(map(int, manifest['kept']))}", flush=True)
