"""Logits for a whole tf.data split, compiling the model's predict step for one batch shape only."""

from __future__ import annotations

import numpy as np


def predict_logits(model, dataset) -> tuple[np.ndarray, np.ndarray]:
    """Runs `model` over a dataset of (images, labels) batches.

    The last, smaller batch is padded to the first batch's size and the padding dropped again: on CPU every new
    input shape costs seconds of XLA compilation, and this runs after every epoch.

    Args:
        model: a Keras model returning logits.
        dataset: a finite `tf.data.Dataset` (or any iterable) of (images, int labels) batches.

    Returns:
        (labels (n,) int64, logits (n, num_classes) float32), in dataset order.
    """
    all_labels, all_logits = [], []
    batch_size = None
    for images, labels in dataset:
        images, labels = np.asarray(images), np.asarray(labels)
        n = images.shape[0]
        batch_size = batch_size or n
        if n < batch_size:
            padding = np.zeros((batch_size - n,) + images.shape[1:], images.dtype)
            images = np.concatenate([images, padding])
        logits = np.asarray(model.predict_on_batch(images), dtype=np.float32)[:n]
        all_labels.append(labels.astype(np.int64))
        all_logits.append(logits)
    if not all_labels:
        raise ValueError("Cannot predict on an empty dataset. Received: dataset with 0 batches")
    return np.concatenate(all_labels), np.concatenate(all_logits)
