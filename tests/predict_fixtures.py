"""A real run shared by the predict, export and analyze tests: coatnet_tiny on the generated ImageFolder (conftest's
`image_folder`), with uniform and greedy soups and soft voting. Trained once per pytest session by conftest's
`trained_run` fixture.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

SOUP = "soups/uniform/soup.weights.h5"


def train_shared_run(root: Path, source: Path) -> Path:
    """Trains the run in `root`: 8 images per class and split at 32 px (so prediction resizes from 64 px), 2 epochs,
    batch 8, 2 kept checkpoints; then cooks `SOUP`, a greedy soup and soft voting from them.

    Returns:
        `root`.
    """
    from ich_keras import soup
    from ich_keras.config import config_from_dict
    from ich_keras.train import run

    cfg = config_from_dict({
        "data": {"source": str(source), "image_size": 32, "val_fraction": 0.25},
        "model": {"name": "coatnet_tiny"},
        "train": {"epochs": 2, "batch_size": 8, "learning_rate": 3e-3, "restart_epochs": 2.0},
        "checkpoint": {"keep": [{"metric": "loss", "mode": "min", "k": 2}]},
        "log": {"verbose": 0},
    })
    run(cfg, root)
    soup.main([str(root), "--uniform", "--greedy", "--soft-voting", "--quiet"])
    return root


def copy_test_split(run_dir: Path, destination: Path) -> tuple[list[Path], np.ndarray]:
    """Copies the run's test images into destination/<class>/<file> (a folder of photos, as a curator has).

    Returns:
        (copied paths, their labels), in the run's test-split order.
    """
    from ich_keras.rundir import load_run

    run = load_run(run_dir)
    examples = run.splits.splits["test"]
    paths = []
    for key, label in zip(examples.keys, examples.labels):
        target = destination / run.class_names[label] / Path(key).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(run.config.data.source) / key, target)
        paths.append(target)
    return paths, examples.labels.copy()
