"""A real run shared by the predict and export tests: coatnet_tiny on a slice of AHE64 photos, plus a uniform soup.

Trained once per pytest session (in the session's base temp directory), whichever test module asks first.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

AHE64 = Path(__file__).resolve().parents[2] / "shared/data/ahe64"
SOUP = "soups/uniform/soup.weights.h5"


def trained_run(tmp_path_factory) -> Path:
    """A run directory: 12 AHE64 images per class and split at 32 px (so prediction resizes from 64 px), 2 epochs,
    batch 8, and `SOUP` cooked from its kept checkpoints."""
    from ich_keras import soup
    from ich_keras.config import config_from_dict
    from ich_keras.train import run

    root = tmp_path_factory.getbasetemp() / "ahe64_run"
    done = root / "ready"
    if done.is_file():
        return root
    if root.exists():
        shutil.rmtree(root)
    cfg = config_from_dict({
        "data": {"source": str(AHE64), "image_size": 32, "max_per_class": 12, "val_fraction": 0.25},
        "model": {"name": "coatnet_tiny"},
        "train": {"epochs": 2, "batch_size": 8, "learning_rate": 3e-3, "restart_epochs": 2.0},
        "checkpoint": {"keep": [{"metric": "loss", "mode": "min", "k": 2}]},
        "log": {"verbose": 0},
    })
    run(cfg, root)
    soup.main([str(root), "--uniform", "--quiet"])
    done.write_text("")
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
        shutil.copyfile(AHE64 / key, target)
        paths.append(target)
    return paths, examples.labels.copy()
