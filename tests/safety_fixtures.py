"""Run directories without training, for the safety tests: written by the same functions fit uses."""

from soup_fixtures import sane

from ich_keras import atomic, checkpoints, data, models, split_lists
from ich_keras.config import config_from_dict, config_to_dict

CONFIG = {
    "data": {"source": "digits", "image_size": 32, "max_per_class": 3},
    "model": {"name": "coatnet_tiny"},
    "train": {"batch_size": 8},
    "checkpoint": {"keep": [{"metric": "loss", "mode": "min", "k": 3}]},
}


def save_ingredient(model, seed: int, path):
    """Random coatnet_tiny weights with sane BatchNorm statistics (as fit would keep them), saved to `path`."""
    sane(model, seed).save_weights(path)


def make_run(path, seeds=(1, 2, 3), source="digits"):
    """A run directory as fit leaves it (config.json, splits, checkpoints + manifest), written by the same
    functions fit uses, with one random checkpoint per seed: no training needed. `source`: 10 classes of 32 px."""
    cfg = config_from_dict({**CONFIG, "data": {**CONFIG["data"], "source": source}})
    path.mkdir(parents=True)
    atomic.write_json(path / "config.json", config_to_dict(cfg))
    split_lists.write_splits(path, data.build_splits(cfg.data))
    model = models.build("coatnet_tiny", 10, 32)
    manifest = checkpoints.empty_manifest(cfg.checkpoint.keep)
    for epoch, seed in enumerate(seeds, start=1):
        (path / checkpoints.CHECKPOINT_DIR).mkdir(exist_ok=True)
        save_ingredient(model, seed, path / checkpoints.CHECKPOINT_DIR / checkpoints.checkpoint_name(epoch))
        manifest = checkpoints.update_manifest(manifest, epoch, {"loss": 1.0 / epoch, "accuracy": 0.1 * epoch})
    checkpoints.write_manifest(path, manifest)
    return path
