"""Tiny models and weight files shared by the soup tests (fast: a few hundred weights, 8x8 inputs)."""

from __future__ import annotations

import os

# Keras picks its backend at first import. Test modules import keras only through this file, so the soups' JAX
# code gets the JAX backend however an import sorter orders their imports.
os.environ.setdefault("KERAS_BACKEND", "jax")

import keras
import numpy as np


class Counter(keras.layers.Layer):
    """Identity with an integer variable, so tests see a non-float variable in the weights file."""

    def build(self, input_shape):
        self.count = self.add_weight(shape=(), dtype="int32", initializer="zeros", trainable=False, name="count")

    def call(self, x):
        return x


def conv_model(num_classes: int = 3, width: int = 4, batchnorm: bool = True) -> keras.Model:
    """Conv -> BN -> ReLU -> pool -> Dense logits on (8, 8, 3) images."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(width, 3, padding="same", name="stem_conv")(inputs)
    if batchnorm:
        x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU()(x)
    x = Counter(name="counter")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="head")(x), name="tiny_conv")


def linear_model(num_features: int = 3, num_classes: int = 3, batchnorm_momentum: float | None = None):
    """logits = x @ kernel + bias (after a BatchNormalization if a momentum is given): easy to reason about."""
    inputs = keras.Input((num_features,))
    x = inputs
    if batchnorm_momentum is not None:
        x = keras.layers.BatchNormalization(momentum=batchnorm_momentum, name="bn")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="head")(x), name="linear")


def trained_conv_model() -> keras.Model:
    """`conv_model` after one compiled training step, so `save_weights` also writes optimizer state."""
    model = conv_model()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(np.zeros((2, 8, 8, 3)), np.array([0, 1]), epochs=1, verbose=0)
    return model


def randomize(model: keras.Model, seed: int) -> keras.Model:
    """Gives every float variable random values (moving variances positive) and the counter the seed."""
    rng = np.random.default_rng(seed)
    for var in model.weights:
        if "int" in str(var.dtype):
            var.assign(np.full(var.shape, seed, dtype=var.dtype))
        elif "variance" in var.path:
            var.assign(rng.uniform(0.5, 1.5, var.shape).astype("float32"))
        else:
            var.assign(rng.normal(size=var.shape).astype("float32"))
    return model


def save_random(model: keras.Model, directory, count: int, prefix: str = "epoch") -> list:
    """`count` random weight files of `model`'s architecture; returns their paths."""
    paths = []
    for i in range(count):
        path = directory / f"{prefix}_{i:03d}.weights.h5"
        randomize(model, seed=i + 1).save_weights(path)
        paths.append(path)
    return paths


def save_linear(model: keras.Model, kernel, path, bias=None):
    """Writes a linear model's weights with the given kernel (bias zero unless given)."""
    kernel = np.asarray(kernel, dtype="float32")
    model.get_layer("head").set_weights([kernel, np.zeros(kernel.shape[1], "float32") if bias is None else bias])
    model.save_weights(path)
    return path


# A tiny CoAtNet on a few digits: the config the soup command tests run (10 val and 10 test images).
TINY_CONFIG = """
[data]
source = "digits"
image_size = 32
max_per_class = 3
[model]
name = "coatnet_tiny"
[train]
batch_size = 8
"""


def sane(model: keras.Model, seed: int) -> keras.Model:
    """`randomize`, then BatchNorm statistics that do not blow activations up and kernels scaled down by 10."""
    randomize(model, seed)
    for var in model.weights:
        if "moving_variance" in var.path:
            var.assign(np.ones(var.shape, "float32"))
        elif "moving_mean" in var.path:
            var.assign(np.zeros(var.shape, "float32"))
        elif var.path.endswith("kernel"):
            var.assign(np.asarray(var) * 0.1)
    return model
