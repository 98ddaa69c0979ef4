"""CoAtNet as functional Keras graphs, layer for layer like timm's `maxxvit.py` rw variants.

Layer names are timm module paths ("stages.2.blocks.0.attn.qkv"), so the converter maps a timm state dict by name
and a test pins the names. Tensors are NHWC; timm's are NCHW, which changes nothing else: every timm 1x1 conv is a
1x1 Conv2D here and LayerNorm2d is a LayerNormalization over the channel axis.

How timm's rw variants differ from the CoAtNet paper (from `_rw_coat_cfg` / `_rw_max_cfg`):
  - MBConv expands to 4x the *input* width, uses SiLU, and has no bias in its shortcut and last 1x1 conv
    (pico/nano, built from the MaxViT defaults, do have those biases).
  - The transformer's attention keeps the input width and expands in its output projection.
  - Downsampling is 2x2 average pooling ("pool") or a stride-2 depthwise conv ("dw"); shortcuts always pool.
  - coatnet_0/1/bn_0 put squeeze-excite (ReLU) before the second norm; coatnet_2/3 after it, with SiLU.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers

from ich_keras.models.layers import LayerScale, RelPosAttention
from ich_keras.models.normalisation import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD
from ich_keras.models.sizes import ImageSizes
from ich_keras.models.rewrites import (
    FusedBatchNormalization,
    PatchGradientConv2D,
    PointwiseConv2D,
    ResidualAdd,
    ShiftedDepthwiseConv2D,
    cpu_rewrites,
)

BLOCK_TYPES = ("C", "C", "T", "T")  # MBConv stages, then transformer stages
DIM_HEAD = 32
IMAGE_SIZES = ImageSizes(32, 32, "CoAtNet needs a square image size that is a positive multiple of 32 (it "
                                    "downsamples 32x)")
HEAD_NAME = "head.fc"  # timm's name: the converter finds the classifier by it


@dataclass(frozen=True)
class CoAtNetVariant:
    """One CoAtNet variant; field names follow timm's `MaxxVitCfg` / `_rw_coat_cfg` flags."""

    embed_dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    stem_widths: tuple[int, int]
    stride_mode: str  # "pool": 2x2 avg pool before the expansion; "dw": stride-2 depthwise conv
    pre_norm_act: bool  # SiLU after the MBConv pre-norm
    se_early: bool  # squeeze-excite before norm2 (else after it)
    se_act: str
    conv_output_bias: bool  # bias in the MBConv shortcut and last 1x1 conv
    transformer_shortcut_bias: bool
    transformer_norm: str = "layernorm"  # or "batchnorm" (coatnet_bn_0)
    layer_scale: float | None = None  # LayerScale init value (coatnet_3)
    timm_name: str | None = None  # the timm model this variant reproduces, if any
    mean: tuple[float, float, float] = INCEPTION_MEAN  # timm's pretrained_cfg for the variant's weights
    std: tuple[float, float, float] = INCEPTION_STD


_COAT_RW = dict(  # `_rw_coat_cfg` defaults
    stride_mode="pool", pre_norm_act=True, se_early=False, se_act="relu", conv_output_bias=False,
    transformer_shortcut_bias=True,
)
_MAX_RW = dict(  # `_rw_max_cfg` with the conv overrides pico/nano/test_coatnet pass
    stride_mode="dw", pre_norm_act=False, se_early=False, se_act="silu", conv_output_bias=True,
    transformer_shortcut_bias=True,
)

VARIANTS: dict[str, CoAtNetVariant] = {
    "coatnet_pico_rw_224": CoAtNetVariant(
        (64, 128, 256, 512), (2, 3, 5, 2), (32, 64), **_MAX_RW, timm_name="coatnet_pico_rw_224"
    ),
    "coatnet_nano_rw_224": CoAtNetVariant(
        (64, 128, 256, 512), (3, 4, 6, 3), (32, 64), **{**_MAX_RW, "stride_mode": "pool"},
        timm_name="coatnet_nano_rw_224",
    ),
    "coatnet_0_rw_224": CoAtNetVariant(
        (96, 192, 384, 768), (2, 3, 7, 2), (32, 64),
        **{**_COAT_RW, "se_early": True, "transformer_shortcut_bias": False}, timm_name="coatnet_0_rw_224",
    ),
    "coatnet_1_rw_224": CoAtNetVariant(
        (96, 192, 384, 768), (2, 6, 14, 2), (32, 64),
        **{**_COAT_RW, "stride_mode": "dw", "se_early": True, "transformer_shortcut_bias": False},
        timm_name="coatnet_1_rw_224",
    ),
    "coatnet_2_rw_224": CoAtNetVariant(
        (128, 256, 512, 1024), (2, 6, 14, 2), (64, 128), **{**_COAT_RW, "stride_mode": "dw", "se_act": "silu"},
        timm_name="coatnet_2_rw_224",
    ),
    "coatnet_3_rw_224": CoAtNetVariant(
        (192, 384, 768, 1536), (2, 6, 14, 2), (96, 192), **{**_COAT_RW, "stride_mode": "dw", "se_act": "silu"},
        layer_scale=1e-6, timm_name="coatnet_3_rw_224",
    ),
    "coatnet_bn_0_rw_224": CoAtNetVariant(
        (96, 192, 384, 768), (2, 3, 7, 2), (32, 64),
        **{**_COAT_RW, "stride_mode": "dw", "se_early": True, "transformer_shortcut_bias": False},
        transformer_norm="batchnorm", timm_name="coatnet_bn_0_rw_224", mean=IMAGENET_MEAN, std=IMAGENET_STD,
    ),
    # timm's own unit-test variant (160 px by default there; any multiple of 32 here).
    "test_coatnet": CoAtNetVariant(
        (32, 64, 96, 128), (1, 1, 2, 1), (16, 32), **{**_MAX_RW, "stride_mode": "pool"}, timm_name="test_coatnet"
    ),
    # Ours: coatnet_0_rw's flags at toy width and depth, for tests and CPU demos. timm builds the same function
    # from a `MaxxVitCfg` with these numbers (see `ich_keras.parity`).
    "coatnet_tiny": CoAtNetVariant(
        (16, 32, 64, 128), (1, 1, 1, 1), (16, 16),
        **{**_COAT_RW, "se_early": True, "transformer_shortcut_bias": False},
    ),
}


def make_divisible(value: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """timm's channel rounding: nearest multiple of `divisor`, never more than 10% below `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < round_limit * value else rounded


@keras.saving.register_keras_serializable(package="ich_keras")
def gelu_exact(x):
    """The erf GELU timm uses (`keras.ops.gelu` defaults to the tanh approximation)."""
    return keras.ops.gelu(x, approximate=False)


# MBConv convs follow timm's EfficientNet-style init; transformer layers keep Keras' Glorot (timm: xavier).
def _conv_init():
    # A new instance per layer: one shared instance reuses its seed, giving same-shaped kernels equal values.
    return keras.initializers.VarianceScaling(2.0, mode="fan_out", distribution="untruncated_normal")


def _conv(x, filters, kernel, name, stride=1, bias=False, initializer="glorot_uniform"):
    if stride > 1 and kernel > 1:
        # timm pads k//2 on every side; Keras "same" would pad only bottom/right at stride 2.
        x = layers.ZeroPadding2D(kernel // 2, name=f"{name}.pad")(x)
        padding = "valid"
    else:
        padding = "same"
    return _conv_class(kernel, stride)(
        filters, kernel, strides=stride, padding=padding, use_bias=bias, kernel_initializer=initializer, name=name
    )(x)


def _conv_class(kernel: int, stride: int) -> type[layers.Conv2D]:
    return PointwiseConv2D if (kernel, stride) == (1, 1) else PatchGradientConv2D


def _depthwise_conv(x, kernel, name, stride=1):
    padding = "same"
    if stride > 1:
        x = layers.ZeroPadding2D(kernel // 2, name=f"{name}.pad")(x)
        padding = "valid"
    return ShiftedDepthwiseConv2D(
        kernel, strides=stride, padding=padding, use_bias=False, depthwise_initializer=_conv_init(), name=name
    )(x)


def _batch_norm(x, name, act=None, epsilon=1e-5):
    # torch's BN momentum 0.1 updates the running stats as Keras' momentum 0.9 does.
    x = FusedBatchNormalization(epsilon=epsilon, momentum=0.9, name=name)(x)
    return layers.Activation(act, name=f"{name}.act")(x) if act else x


def _transformer_norm(x, variant: CoAtNetVariant, name):
    if variant.transformer_norm == "batchnorm":
        return _batch_norm(x, name, epsilon=1e-6)
    return layers.LayerNormalization(epsilon=1e-6, name=name)(x)


def _squeeze_excite(x, reduced, act, name):
    scale = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}.pool")(x)
    scale = _conv(scale, reduced, 1, f"{name}.fc1", bias=True, initializer=_conv_init())
    scale = layers.Activation(act, name=f"{name}.act")(scale)
    scale = _conv(scale, x.shape[-1], 1, f"{name}.fc2", bias=True, initializer=_conv_init())
    scale = layers.Activation("sigmoid", name=f"{name}.gate")(scale)
    return layers.Multiply(name=f"{name}.mul")([x, scale])


def _downsample_shortcut(x, out_channels, bias, name, initializer):
    """timm's `Downsample2d`: 2x2 average pool, then a 1x1 conv when the width changes."""
    x = layers.AveragePooling2D(2, name=f"{name}.pool")(x)
    if x.shape[-1] != out_channels:
        x = _conv(x, out_channels, 1, f"{name}.expand", bias=bias, initializer=initializer)
    return x


def mbconv_block(x, out_channels: int, stride: int, variant: CoAtNetVariant, name: str):
    """Pre-norm inverted bottleneck: BN(+SiLU), 1x1 expand, BN+SiLU, depthwise 3x3, SE, BN+SiLU, 1x1 project."""
    in_channels = x.shape[-1]
    mid_channels = make_divisible(in_channels * 4)
    shortcut = x
    if stride == 2:
        shortcut = _downsample_shortcut(x, out_channels, variant.conv_output_bias, f"{name}.shortcut", _conv_init())

    x = _batch_norm(x, f"{name}.pre_norm", act="silu" if variant.pre_norm_act else None)
    depthwise_stride = stride
    if stride == 2 and variant.stride_mode == "pool":
        x = layers.AveragePooling2D(2, name=f"{name}.down.pool")(x)
        depthwise_stride = 1
    x = _conv(x, mid_channels, 1, f"{name}.conv1_1x1", initializer=_conv_init())
    x = _batch_norm(x, f"{name}.norm1", act="silu")
    x = _depthwise_conv(x, 3, f"{name}.conv2_kxk", stride=depthwise_stride)
    se_channels = int(0.25 * mid_channels)
    if variant.se_early:
        x = _squeeze_excite(x, se_channels, variant.se_act, f"{name}.se_early")
    x = _batch_norm(x, f"{name}.norm2", act="silu")
    if not variant.se_early:
        x = _squeeze_excite(x, se_channels, variant.se_act, f"{name}.se")
    x = _conv(x, out_channels, 1, f"{name}.conv3_1x1", bias=variant.conv_output_bias, initializer=_conv_init())
    return _residual_add([x, shortcut], f"{name}.add")


def _residual_add(inputs, name):
    return ResidualAdd(name=name)(inputs)


def _layer_scale(x, variant: CoAtNetVariant, name):
    return LayerScale(variant.layer_scale, name=name)(x) if variant.layer_scale else x


def transformer_block(x, out_channels: int, stride: int, feature_size: int, variant: CoAtNetVariant, name: str):
    """Pre-norm transformer over the whole map: (pool) + relative-position attention, then a 4x GELU MLP."""
    in_channels = x.shape[-1]
    if in_channels % DIM_HEAD:
        raise ValueError(
            f"Transformer block {name} needs a width divisible by {DIM_HEAD} (heads of {DIM_HEAD} channels). "
            f"Received: in_channels={in_channels}"
        )
    shortcut = x
    if stride == 2:
        # The block's own init (timm's `_init_transformer` covers the shortcut too), as for its other layers.
        shortcut = _downsample_shortcut(x, out_channels, variant.transformer_shortcut_bias, f"{name}.shortcut",
                                        "glorot_uniform")
        y = _transformer_norm(x, variant, f"{name}.norm1.norm")
        y = layers.AveragePooling2D(2, name=f"{name}.norm1.down.pool")(y)
    else:
        y = _transformer_norm(x, variant, f"{name}.norm1")
    y = _conv(y, 3 * in_channels, 1, f"{name}.attn.qkv", bias=True)
    rewritten = cpu_rewrites()
    y = RelPosAttention(in_channels // DIM_HEAD, DIM_HEAD, feature_size, bias_gradient_as_matmul=rewritten,
                        normalise_after_values=rewritten, name=f"{name}.attn.rel_pos")(y)
    y = _conv(y, out_channels, 1, f"{name}.attn.proj", bias=True)
    x = _residual_add([shortcut, _layer_scale(y, variant, f"{name}.ls1")], f"{name}.add1")

    y = _transformer_norm(x, variant, f"{name}.norm2")
    y = _conv(y, 4 * out_channels, 1, f"{name}.mlp.fc1", bias=True)
    y = layers.Activation(gelu_exact, name=f"{name}.mlp.act")(y)
    y = _conv(y, out_channels, 1, f"{name}.mlp.fc2", bias=True)
    return _residual_add([x, _layer_scale(y, variant, f"{name}.ls2")], f"{name}.add2")


def build_coatnet(variant: CoAtNetVariant, num_classes: int, image_size: int, name: str = "coatnet") -> keras.Model:
    """Builds `variant` for square `image_size` inputs (a multiple of 32); the model returns logits.

    The relative-position tables are sized for the feature maps of this image size: (2s-1)^2 rows for an s x s
    map, i.e. 729 and 169 at 224 px; the converter resizes pretrained tables to match.
    """
    IMAGE_SIZES.check(image_size)
    inputs = keras.Input((image_size, image_size, 3), name="images")
    x = _conv(inputs, variant.stem_widths[0], 3, "stem.conv1", stride=2, initializer=_conv_init())
    x = _batch_norm(x, "stem.norm1", act="silu")
    x = _conv(x, variant.stem_widths[1], 3, "stem.conv2", initializer=_conv_init())

    feature_size = image_size // 2
    for stage, (kind, width, depth) in enumerate(zip(BLOCK_TYPES, variant.embed_dims, variant.depths)):
        feature_size //= 2
        for index in range(depth):
            block_name, stride = f"stages.{stage}.blocks.{index}", 2 if index == 0 else 1
            if kind == "C":
                x = mbconv_block(x, width, stride, variant, block_name)
            else:
                x = transformer_block(x, width, stride, feature_size, variant, block_name)

    x = _transformer_norm(x, variant, "norm")
    x = layers.GlobalAveragePooling2D(name="head.global_pool")(x)
    # Logits in float32 under mixed precision, as Keras advises for the last layer.
    logits = layers.Dense(num_classes, dtype="float32", name=HEAD_NAME)(x)
    return keras.Model(inputs, logits, name=name)
