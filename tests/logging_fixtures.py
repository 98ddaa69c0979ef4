"""A tiny training config for the data-route and logger tests: coatnet_tiny at 32 px, a few images, seconds an epoch."""

from __future__ import annotations

from ich_keras.config import Config, config_from_dict


def tiny_config(source: str = "digits", epochs: int = 2, **sections) -> Config:
    """coatnet_tiny on `source` (default: 4 embedded digits per class), 32 px, batch 4, k = 1 for loss and F1.

    Args:
        source: data.source.
        epochs: train.epochs.
        **sections: per-section overrides, e.g. log={"tensorboard": True}.
    """
    cfg = {
        "data": {"source": source, "image_size": 32, "max_per_class": 4, "val_fraction": 0.25,
                 "test_fraction": 0.25},
        "augment": {"mixup_alpha": 0.0, "cutmix_alpha": 0.0},
        "model": {"name": "coatnet_tiny"},
        "train": {"epochs": epochs, "batch_size": 4, "learning_rate": 3e-3, "restart_epochs": 1.0},
        "checkpoint": {"keep": [{"metric": "loss", "mode": "min", "k": 1}, {"metric": "f1", "mode": "max", "k": 1}]},
        "log": {"verbose": 0},
    }
    for section, values in sections.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    return config_from_dict(cfg)
