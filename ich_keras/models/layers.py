"""CoAtNet's layers that own unusual weights: `RelPosAttention` (a relative-position bias table) and `LayerScale`.
Everything else in the models is a plain named Keras layer or one of its CPU rewrites (`ich_keras.models.rewrites`)."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from ich_keras.models.attention_kernels import add_attention_bias, softmax_weighted_values


def relative_position_index(height: int, width: int) -> np.ndarray:
    """Swin-style index into a ((2H-1)(2W-1), heads) bias table for every (query, key) pair of an HxW map.

    Returns:
        (H*W, H*W) int32 array; entry [q, k] is the table row for the offset between positions q and k.
    """
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    coords = np.stack([rows.ravel(), cols.ravel()])  # (2, N)
    offsets = coords[:, :, None] - coords[:, None, :]  # (2, N, N), each offset in [-(size-1), size-1]
    return ((offsets[0] + height - 1) * (2 * width - 1) + offsets[1] + width - 1).astype(np.int32)


class RelPosAttention(keras.layers.Layer):
    """Multi-head self-attention over a whole feature map with a learned relative-position bias.

    Takes the output of the qkv 1x1 convolution, laid out head-first as timm's `Attention2d` does:
    per head `dim_head` channels of q, then of k, then of v. Owns only the bias table (timm's
    `attn.rel_pos.relative_position_bias_table`); the qkv and output projections are ordinary Conv2D layers.
    With `bias_gradient_as_matmul` the bias is added by `add_attention_bias` (same values, a faster gradient on
    XLA's CPU backend); with `normalise_after_values` the softmax's sums are divided out after the product with v
    (`softmax_weighted_values`: the same values, a faster forward pass there).
    """

    def __init__(self, num_heads: int, dim_head: int, feature_size: int, bias_gradient_as_matmul: bool = False,
                 normalise_after_values: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.dim_head = dim_head
        self.feature_size = feature_size
        self.bias_gradient_as_matmul = bias_gradient_as_matmul
        self.normalise_after_values = normalise_after_values
        # Not a weight (timm does not save it either): recomputed from the feature-map size.
        self._index = relative_position_index(feature_size, feature_size)

    def build(self, input_shape):
        table_rows = (2 * self.feature_size - 1) ** 2
        self.relative_position_bias_table = self.add_weight(
            name="relative_position_bias_table",
            shape=(table_rows, self.num_heads),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        )

    def call(self, qkv):
        _, height, width, _ = qkv.shape  # static in a functional graph
        tokens = height * width
        qkv = ops.reshape(qkv, (-1, tokens, self.num_heads, 3 * self.dim_head))  # (B, N, h, 3*d)
        # Head-major before the two matmuls, so that (B, h) are the batched matmuls' leading axes: coatnet_0's
        # inference at 224 px ran 1.27x faster on XLA's CPU backend than with einsums over (B, N, h, d) operands
        # (`benchmarks/conv_kernels.py --attention`, benchmarks/README.md).
        qkv = ops.transpose(qkv, (0, 2, 1, 3))  # (B, h, N, 3*d)
        q, k, v = ops.split(qkv, 3, axis=-1)  # each (B, h, N, d)
        q = q * ops.cast(self.dim_head**-0.5, q.dtype)
        logits = ops.einsum("bhnd,bhmd->bhnm", q, k)  # (B, h, N, N)
        bias = ops.take(self.relative_position_bias_table, self._index.reshape(-1), axis=0)  # (N*N, h)
        bias = ops.transpose(ops.reshape(bias, (tokens, tokens, self.num_heads)), (2, 0, 1))  # (h, N, N)
        # Softmax in float32 even under mixed precision: large logits in bf16 lose the small differences.
        add_bias = add_attention_bias if self.bias_gradient_as_matmul else lambda logits, bias: logits + bias[None]
        logits = add_bias(ops.cast(logits, "float32"), ops.cast(bias, "float32"))
        if self.normalise_after_values:  # (a 1x1 map too: its one exponential is 1, divided by a sum of 1)
            out = softmax_weighted_values(logits, v)
        else:
            out = ops.einsum("bhnm,bhmd->bhnd", _softmax(logits, v.dtype), v)
        out = ops.transpose(out, (0, 2, 1, 3))  # (B, N, h, d)
        return ops.reshape(out, (-1, height, width, self.num_heads * self.dim_head))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:3], self.num_heads * self.dim_head)

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "dim_head": self.dim_head,
            "feature_size": self.feature_size,
            "bias_gradient_as_matmul": self.bias_gradient_as_matmul,
            "normalise_after_values": self.normalise_after_values,
        }


def _softmax(logits, dtype):
    """Softmax over the last axis, cast to `dtype`."""
    # A 1x1 map (small inputs, last stage): the one key gets weight 1, exactly as softmax gives, without Keras'
    # warning about a softmax over one value.
    if logits.shape[-1] == 1:
        return ops.ones_like(logits, dtype=dtype)
    return ops.cast(ops.softmax(logits, axis=-1), dtype)


class LayerScale(keras.layers.Layer):
    """Per-channel learned scale (timm's `LayerScale2d`, weight `gamma`)."""

    def __init__(self, init_value: float, **kwargs):
        super().__init__(**kwargs)
        self.init_value = init_value

    def build(self, input_shape):
        self.gamma = self.add_weight(
            name="gamma", shape=(input_shape[-1],), initializer=keras.initializers.Constant(self.init_value)
        )

    def call(self, x):
        return x * ops.cast(self.gamma, x.dtype)

    def get_config(self):
        return {**super().get_config(), "init_value": self.init_value}
