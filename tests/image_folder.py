"""A tiny generated ImageFolder for tests that need real image files but not real photos, and where AHE64 lives
for the tests where real photos are the point (marked `data`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

AHE64 = Path(__file__).resolve().parents[2] / "shared/data/ahe64"
# Every kind of file a curator's folder holds that decodes differently: colour JPEG and PNG, CMYK JPEG, 16-bit and
# 8-bit grayscale PNG.
ODD_FORMATS = ("jpg", "png", "cmyk.jpg", "gray16.png", "gray.png")


def _save(pixels: np.ndarray, path: Path, kind: str) -> None:
    """Writes the uint8 RGB `pixels` to `path` as `kind` (one of ODD_FORMATS)."""
    image = Image.fromarray(pixels)
    if kind == "cmyk.jpg":
        image.convert("CMYK").save(path, quality=95)
    elif kind == "gray16.png":
        gray = np.asarray(image.convert("L"), np.uint16)
        Image.fromarray(gray * 257).save(path)  # 0..65535; PIL writes mode I;16 as a 16-bit PNG
    elif kind == "gray.png":
        image.convert("L").save(path)
    elif kind in ("jpg", "png"):
        image.save(path)
    else:
        raise ValueError(f"Unknown image kind; expected one of {ODD_FORMATS}. Received: kind={kind!r}")


def noise_folder(tmp_path, classes=("a", "b"), per_class=3, splits=("train",), size=(12, 10)) -> Path:
    """A small ImageFolder tree under tmp_path/ds of PNG files of random noise (no two alike); returns its root."""
    rng = np.random.default_rng(0)
    for split in splits:
        for name in classes:
            folder = tmp_path / "ds" / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size + (3,), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return tmp_path / "ds"


def make_image_folder(root: str | Path, classes: int, per_class: int, size: int = 64, splits=("train", "test"),
                      seed: int = 0, formats: tuple[str, ...] = ("jpg", "png")) -> Path:
    """Writes `root/<split>/class_<c>/<i>.png|jpg`: noisy images whose mean colour depends on the class (learnable).

    Args:
        root: the folder to create.
        classes: number of class folders.
        per_class: images per class in each split.
        size: side in pixels.
        splits: split folders to write.
        seed: seed of the noise.
        formats: kinds of file (from ODD_FORMATS), taken in turn: image i of a class is `formats[i % len(formats)]`.

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
                kind = formats[i % len(formats)]
                _save(pixels, folder / f"{i:03d}.{kind.rsplit('.', 1)[-1]}", kind)
    return root
