"""The CoAtNet attention's two CPU kernels: the relative-position bias added with a faster gradient, and the softmax's
weighted values with its sums divided out after the product. Each computes the plain formula's values; a CoAtNet
attention built while `rewrites.cpu_rewrites()` is true uses them (`ich_keras.models.layers.RelPosAttention`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from keras import ops


@jax.custom_vjp
def add_attention_bias(logits, bias):
    """logits (B, heads, N, N) + bias (heads, N, N), whose bias gradient sums over the batch as a matrix-vector
    product with a vector of ones.

    Autodiff's sum over the leading axis ran as a slow reduction on XLA's CPU backend (~40 ms for each of
    coatnet_0's stage-2 blocks at 224 px, batch 8); with the product coatnet_0's forward + backward ran
    1.03-1.19x faster (`benchmarks/conv_kernels.py --attention-bias`, benchmarks/README.md).
    """
    return logits + bias[None]


def _add_bias_forward(logits, bias):
    return logits + bias[None], None


def _add_bias_backward(_, grad):
    return grad, jnp.tensordot(jnp.ones(grad.shape[:1], grad.dtype), grad, axes=1)


add_attention_bias.defvjp(_add_bias_forward, _add_bias_backward)


def softmax_weighted_values(logits, values):
    """softmax(logits) @ values for logits (B, heads, N, N) and values (B, heads, N, d), each row's softmax sum
    divided out after the product: one division per (N, d) output instead of one per (N, N) weight, and XLA's CPU
    backend fuses the exponentials into the matmul's input. coatnet_0's inference at 224 px ran 1.03-1.05x faster
    with it (`benchmarks/attention_softmax.py`, benchmarks/README.md). The row maximum is subtracted first, as
    softmax does, so that no exponential overflows; the sums stay in the logits' dtype (float32 under mixed
    precision).
    """
    exp = ops.exp(logits - ops.stop_gradient(ops.max(logits, axis=-1, keepdims=True)))
    weighted = ops.einsum("bhnm,bhmd->bhnd", ops.cast(exp, values.dtype), values)
    return ops.cast(ops.cast(weighted, exp.dtype) / ops.sum(exp, axis=-1, keepdims=True), values.dtype)
