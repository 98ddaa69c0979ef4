"""Baselines: keras-hub backbones built from a config (no preset download) plus a timm-style classification head.

Each model is `images -> backbone -> pool -> head`, where the backbone is one nested layer named `BACKBONE_NAME`
(so keras-hub's timm weight converters can walk it by its own layer names) and the head is a `Dense` named
`HEAD_NAME`. With 1000 classes Keras counts exactly timm's parameters plus its BatchNorm running statistics:
resnet50 25,610,152, densenet121 8,062,504, vit_base_patch16_224 86,567,656.

How each differs from keras-hub's own classifier:
- resnet50: keras-hub `ResNetBackbone` as its timm converter configures it (v1.5 bottleneck: stride in the 3x3,
  symmetric zero padding, no conv biases), so timm weights load as they are.
- densenet121: keras-hub's dense and transition blocks, but our stem. `DenseNetBackbone` pads its stride-2 7x7 conv
  and 3x3 max pool with "same", which on JAX pads (2, 3) and (0, 1) where torch pads (3, 3) and (1, 1): the whole
  feature map shifts by a pixel and timm weights give other logits. Layer names stay keras-hub's.
- vit_base_patch16_224: keras-hub `ViTBackbone`; the head reads the class token of the final LayerNorm output.

keras-hub is imported where a baseline is built, not with this module: it imports TensorFlow (~2 s), which a process
that builds only CoAtNets and reads no images (convert, curves, a notebook) never needs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import keras

from ich_keras import _keras_compat
from ich_keras.models.normalisation import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD
from ich_keras.models.sizes import ImageSizes


BACKBONE_NAME = "backbone"
HEAD_NAME = "head"

# ViT-B/16 as timm builds it: 12 blocks of width 768, 12 heads, MLP 3072, LayerNorm eps 1e-6, qkv bias.
VIT_B16 = {"patch_size": 16, "num_layers": 12, "num_heads": 12, "hidden_dim": 768, "mlp_dim": 3072}
VIT_SIZES = ImageSizes(16, 16, "ViT-B/16 needs a square image size that is a positive multiple of its 16-pixel patches")
DENSENET_SIZES = ImageSizes(1, 32, "DenseNet-121 needs an image size of at least 32 (it halves the input five times)")


def resnet50_backbone(image_size: int) -> keras.Model:
    """keras-hub `ResNetBackbone` configured like timm's `resnet50` (the config keras-hub's timm converter uses).

    Args:
        image_size: side of the square input.

    Returns:
        A functional model (B, S, S, 3) -> (B, S/32, S/32, 2048) named `BACKBONE_NAME`.
    """
    from keras_hub.models import ResNetBackbone

    convert_resnet, _ = _keras_compat.keras_hub_timm_converters()
    config = convert_resnet.convert_backbone_config({"architecture": "resnet50"})
    return ResNetBackbone(**config, image_shape=(image_size, image_size, 3), name=BACKBONE_NAME)


def densenet121_backbone(image_size: int) -> keras.Model:
    """DenseNet-121 from keras-hub's blocks with a torch-padded stem, layer names as in keras-hub's `DenseNetBackbone`.

    Args:
        image_size: side of the square input.

    Returns:
        A functional model (B, S, S, 3) -> (B, S/32, S/32, 1024) named `BACKBONE_NAME`.
    """
    DENSENET_SIZES.check(image_size)
    _, convert_densenet = _keras_compat.keras_hub_timm_converters()
    densenet_backbone = _keras_compat.keras_hub_densenet_blocks()
    config = convert_densenet.convert_backbone_config({"architecture": "densenet121"})
    repeats, ratio = config["stackwise_num_repeats"], config["compression_ratio"]
    eps = densenet_backbone.BN_EPSILON  # the blocks below use it too; timm's 1e-5 differs by 1e-8, invisible
    images = keras.Input((image_size, image_size, 3), name="images")
    # Explicit symmetric padding where torch pads (3 for the 7x7/2 conv, 1 for the 3x3/2 pool) instead of "same".
    x = keras.layers.ZeroPadding2D(3, name="conv1_pad")(images)
    x = keras.layers.Conv2D(64, 7, strides=2, use_bias=False, name="conv1_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=eps, name="conv1_bn")(x)
    x = keras.layers.Activation("relu", name="conv1_relu")(x)
    # Zero padding equals torch's -inf padding here: the input is a ReLU output, so never below 0.
    x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    for stack, num_repeats in enumerate(repeats, start=1):
        x = densenet_backbone.apply_dense_block(
            x, -1, num_repeats, config["growth_rate"], name=f"stack{stack}"
        )
        if stack < len(repeats):
            x = densenet_backbone.apply_transition_block(x, -1, ratio, name=f"transition{stack}")
    x = keras.layers.BatchNormalization(epsilon=eps, name="bn")(x)
    x = keras.layers.Activation("relu", name="relu")(x)
    return keras.Model(images, x, name=BACKBONE_NAME)


def vit_b16_backbone(image_size: int) -> keras.Model:
    """keras-hub `ViTBackbone` with timm's ViT-B/16 dimensions.

    Args:
        image_size: side of the square input, a multiple of 16.

    Returns:
        A functional model (B, S, S, 3) -> (B, 1 + (S/16)^2, 768) tokens (class token first) after the final
        LayerNorm, named `BACKBONE_NAME`.
    """
    from keras_hub.models import ViTBackbone

    VIT_SIZES.check(image_size)
    return ViTBackbone(image_shape=(image_size, image_size, 3), **VIT_B16, name=BACKBONE_NAME)


def is_vit_backbone(layer: keras.Layer) -> bool:
    """Whether `layer` is keras-hub's `ViTBackbone`; without importing keras-hub, which a model holding one has."""
    vit_module = sys.modules.get("keras_hub.models")
    return vit_module is not None and isinstance(layer, vit_module.ViTBackbone)


def _pool_average(features: keras.KerasTensor) -> keras.KerasTensor:
    return keras.layers.GlobalAveragePooling2D(name="avg_pool")(features)


def _pool_class_token(tokens: keras.KerasTensor) -> keras.KerasTensor:
    # (B, 1 + N, D) -> (B, D): timm's global_pool="token". A split, not `tokens[:, 0]`: under the export's dynamic
    # batch JAX lowers that index to a dynamic gather, which TFLite's converter cannot translate.
    return keras.ops.squeeze(keras.ops.split(tokens, [1], axis=1)[0], axis=1)


@dataclass(frozen=True)
class Baseline:
    """One baseline: how to build its backbone, how to pool it, and its timm pretraining normalisation."""

    name: str
    backbone: Callable[[int], keras.Model]
    pool: Callable[[keras.KerasTensor], keras.KerasTensor]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str
    timm_head: str  # timm's classifier prefix: its keys go to our `HEAD_NAME` Dense
    sizes: ImageSizes = ImageSizes()

    def build(self, num_classes: int, image_size: int) -> keras.Model:
        """Builds backbone + pool + Dense head.

        Args:
            num_classes: width of the head `Dense` (named `HEAD_NAME`).
            image_size: side of the square input.

        Returns:
            A functional model mapping (B, S, S, 3) normalised float images to (B, num_classes) logits.
        """
        images = keras.Input((image_size, image_size, 3), name="images")
        features = self.backbone(image_size)(images)
        # Logits in float32 under mixed precision, as for CoAtNet (Keras' advice for the last layer).
        logits = keras.layers.Dense(num_classes, dtype="float32", name=HEAD_NAME)(self.pool(features))
        return keras.Model(images, logits, name=self.name)


BASELINES: dict[str, Baseline] = {
    b.name: b
    for b in (
        Baseline(
            "resnet50",
            resnet50_backbone,
            _pool_average,
            IMAGENET_MEAN,
            IMAGENET_STD,
            "keras-hub ResNetBackbone",
            "fc.",
        ),
        Baseline(
            "densenet121",
            densenet121_backbone,
            _pool_average,
            IMAGENET_MEAN,
            IMAGENET_STD,
            "keras-hub DenseNet blocks, torch-padded stem",
            "classifier.",
            DENSENET_SIZES,
        ),
        Baseline(
            "vit_base_patch16_224",
            vit_b16_backbone,
            _pool_class_token,
            INCEPTION_MEAN,
            INCEPTION_STD,
            "keras-hub ViTBackbone",
            "head.",
            VIT_SIZES,
        ),
    )
}
