"""Model registry: `build(name, num_classes, image_size)` returns a functional Keras model that outputs logits.

CoAtNet variants are ours (layer for layer like timm's `maxxvit.py`); the baselines are keras-hub backbones built
from a config with a classification head. Every model also names its input normalisation, so the data pipeline
feeds it what its pretraining saw.
"""

from __future__ import annotations

import contextlib
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass

import keras

from ich_keras import _keras_compat
from ich_keras.errors import UserError
from ich_keras.models import baselines, coatnet
from ich_keras.models.sizes import ImageSizes


@dataclass(frozen=True)
class ModelEntry:
    """How to build one named model, which input sides it takes, and how to normalise its input (pixels scaled to
    [0, 1], then (x - mean) / std)."""

    build: Callable[[int, int], keras.Model]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str
    sizes: ImageSizes
    head_layer: str  # the Dense that maps pooled features to logits (replaced for another class count)
    timm_head: str  # the prefix of timm's classifier keys in a state dict ("head.fc.", "fc.")


def _registry() -> dict[str, ModelEntry]:
    entries = {}
    for name, variant in coatnet.VARIANTS.items():
        entries[name] = ModelEntry(
            build=lambda classes, size, v=variant, n=name: coatnet.build_coatnet(v, classes, size, name=n),
            mean=variant.mean,
            std=variant.std,
            source="ich_keras (timm maxxvit.py)",
            sizes=coatnet.IMAGE_SIZES,
            head_layer=coatnet.HEAD_NAME,
            timm_head=f"{coatnet.HEAD_NAME}.",  # the layer is named as timm's module
        )
    for name, baseline in baselines.BASELINES.items():
        entries[name] = ModelEntry(
            build=baseline.build, mean=baseline.mean, std=baseline.std, source=baseline.source, sizes=baseline.sizes,
            head_layer=baselines.HEAD_NAME, timm_head=baseline.timm_head,
        )
    return entries


MODELS: dict[str, ModelEntry] = _registry()
# The timm weights to convert into each model's ImageNet init (the README's table, from timm 1.0.31's
# `list_pretrained`); the other models have none published.
IMAGENET_WEIGHTS = {
    "coatnet_0_rw_224": "timm/coatnet_0_rw_224.sw_in1k",
    "coatnet_1_rw_224": "timm/coatnet_1_rw_224.sw_in1k",
    "coatnet_2_rw_224": "timm/coatnet_2_rw_224.sw_in12k_ft_in1k",
    "coatnet_3_rw_224": "timm/coatnet_3_rw_224.sw_in12k",
    "coatnet_bn_0_rw_224": "timm/coatnet_bn_0_rw_224.sw_in1k",
    "coatnet_nano_rw_224": "timm/coatnet_nano_rw_224.sw_in1k",
    "resnet50": "timm/resnet50.a1_in1k",
    "densenet121": "timm/densenet121.ra_in1k",
    "vit_base_patch16_224": "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k",
}


def model_names() -> list[str]:
    """All names `build` accepts, sorted."""
    return sorted(MODELS)


def entry(name: str) -> ModelEntry:
    """The registry entry of `name`; an unknown name is an error listing the known ones."""
    if name not in MODELS:
        raise UserError(f"Unknown model {name!r}. Known models: {', '.join(model_names())}")
    return MODELS[name]


def check(name: str, image_size: int, key: str = "image_size") -> None:
    """Raises a UserError unless `name` is a known model that takes `image_size` inputs (named as `key`, the config
    key or flag); builds nothing, so a command can check its config before minutes of data scanning or training."""
    entry(name).sizes.check(image_size, key)


def parameter_count(model: keras.Model) -> int:
    """The model's trainable weights, which are timm's parameters (Keras also counts BatchNorm's running statistics
    as weights); from the variables' shapes, so it works on a model whose initializers never ran."""
    return sum(math.prod(w.shape) for w in model.trainable_weights)


def build(name: str, num_classes: int = 1000, image_size: int = 224) -> keras.Model:
    """Builds model `name` for `num_classes` classes and square `image_size` inputs; it returns logits.

    Args:
        name: one of `model_names()`, e.g. "coatnet_0_rw_224", "resnet50".
        num_classes: width of the classification head.
        image_size: side of the square RGB input; CoAtNet needs a multiple of 32.

    Returns:
        An uncompiled functional `keras.Model` mapping (batch, size, size, 3) float images, already normalised
        with `entry(name).mean/std`, to (batch, num_classes) logits.
    """
    num_classes, image_size = _whole(num_classes, "num_classes"), _whole(image_size, "image_size")
    if num_classes < 1:
        raise UserError(f"num_classes must be >= 1. Received: num_classes={num_classes}")
    with _layout_and_dtype_of_the_weights():
        return entry(name).build(num_classes, image_size)


def _whole(value, name: str) -> int:
    """`value` as a Python int (numpy integers included: `labels.max() + 1`); a UserError naming `name` otherwise."""
    try:
        return operator.index(value)
    except TypeError:
        raise UserError(f"{name} must be a whole number. Received: {name}={value!r}") from None


@contextlib.contextmanager
def _layout_and_dtype_of_the_weights():
    """Channels-last layers with float32 variables and inputs for the block, whatever a notebook or
    ~/.keras/keras.json set (a mixed policy, as training sets, is kept): the models take NHWC images and their weights
    (timm's, converted) are laid out for channels-last kernels (under "channels_first" a ResNet-50 read the image
    width as its channel count). Layers keep what they are built with, so the caller's settings come back after."""
    data_format = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_last")
    try:
        with _keras_compat.float32_variables():
            yield
    finally:
        keras.config.set_image_data_format(data_format)
