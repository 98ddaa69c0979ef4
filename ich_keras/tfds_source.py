"""`data.source = "tfds:NAME"`: a TensorFlow Datasets dataset, written once as an ImageFolder tree.

Materialising to files keeps one code path (scan, check, split lists of relative paths) for every source; the
tree lands in `$ICH_KERAS_TFDS_DIR` (default ~/.cache/ich_keras/tfds/NAME). tfds' "validation" split becomes
val/. Needs `pip install tensorflow-datasets` and, the first time, the internet.
"""

from __future__ import annotations

import os
from pathlib import Path

from ich_keras import atomic

SPLIT_NAMES = {"train": "train", "validation": "val", "test": "test"}


def materialize(name: str) -> str:
    """Downloads tfds dataset `name` (if needed) and writes it as PNG files; returns the ImageFolder root.

    Args:
        name: a tfds name with an `image` and a `label` (ClassLabel) feature, e.g. "beans".

    Returns:
        The root directory holding train/ (and val/, test/ when tfds has them).
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise ValueError(
            f"tfds sources need tensorflow-datasets (pip install tensorflow-datasets). "
            f"Received: data.source={'tfds:' + name!r}"
        ) from None
    root = Path(os.environ.get("ICH_KERAS_TFDS_DIR", "~/.cache/ich_keras/tfds")).expanduser() / name
    done = root / ".complete"
    if done.is_file():
        return str(root)
    builder = tfds.builder(name)
    builder.download_and_prepare()
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise ValueError(
            f"A tfds source needs 'image' and 'label' features; {name} has {list(features)}. "
            f"Received: data.source={'tfds:' + name!r}"
        )
    class_names = features["label"].names
    import tensorflow as tf

    for tfds_split, split in SPLIT_NAMES.items():
        if tfds_split not in builder.info.splits:
            continue
        for index, example in enumerate(tfds.as_numpy(builder.as_dataset(split=tfds_split))):
            path = root / split / class_names[int(example["label"])] / f"{index:07d}.png"
            with atomic.atomic_path(path, suffix=".png") as temp:
                temp.write_bytes(tf.io.encode_png(example["image"]).numpy())
    done.write_text(f"{name}\n")
    return str(root)
