"""What the benchmarks train and feed: a model compiled as `ich_keras.fit` compiles it, and a random batch."""

from __future__ import annotations

import ich_keras  # noqa: F401  (selects the JAX backend before keras is imported)
import keras
import numpy as np

from ich_keras.optimizers import GroupedAdamW

LEARNING_RATE, WEIGHT_DECAY, CLIP_NORM = 1e-4, 1e-3, 1.0
# Keras' dtype policy for each precision a benchmark can ask for (torch's autocast dtype: train_throughput).
KERAS_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16"}


def compile_as_fit(model: keras.Model, optimizer_class=GroupedAdamW, learning_rate=LEARNING_RATE) -> None:
    """The optimizer `ich_keras.fit` uses (lr 1e-4 or a schedule, wd 1e-3, global clipnorm 1.0) and cross-entropy
    from logits."""
    model.compile(optimizer=optimizer_class(learning_rate, weight_decay=WEIGHT_DECAY, global_clipnorm=CLIP_NORM),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True))


def fit_like_schedule():
    """A learning rate like `fit`'s, from 1e-4: linear warmup over 100 updates, then cosine restarts every 1000."""
    from ich_keras.schedules import WarmupCosineRestarts

    return WarmupCosineRestarts(LEARNING_RATE, 1000, warmup_steps=100)


def random_batch(batch: int, size: int, classes: int, seed: int = 0):
    """(batch, size, size, 3) standard-normal float32 images and one-hot float32 labels."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, size, size, 3)).astype(np.float32)
    labels = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, batch)]
    return images, labels
