"""A tiny generated ImageFolder for tests that need real image files but not real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def make_image_folder(root: str | Path, classes: int, per_class: int, size: int = 64, splits=("train", "test"),
                      seed: int = 0) -> Path:
    """Writes `root/<split>/class_<c>/<i>.png|jpg`: noisy images whose mean colour depends on the class (learnable).

    Args:
        root: the folder to create.
        classes: number of class folders.
        per_class: images per class in each split.
        size: side in pixels.
        splits: split folders to write.
        seed: seed of the noise.

    Returns:
        `root`.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    for split in splits:
        for c in range(classes):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            colour = np.array([255 * c / max(classes - 1, 1), 128, 255 - 255 * c / max(classes - 1, 1)])
            for i in range(per_class):
                pixels = np.clip(colour + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                suffix = "png" if i % 2 else "jpg"
                Image.fromarray(pixels).save(folder / f"{i:03d}.{suffix}")
    return root
