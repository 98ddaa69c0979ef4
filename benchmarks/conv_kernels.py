"""XLA on CPU: a 1x1 convolution against the same matmul, and a 3x3 depthwise convolution against shifted sums.

    python benchmarks/conv_kernels.py
    python benchmarks/conv_kernels.py --depthwise-gradients
    python benchmarks/conv_kernels.py --attention
    python benchmarks/conv_kernels.py --batch-norm
    python benchmarks/conv_kernels.py --attention-bias
    python benchmarks/conv_kernels.py --pointwise-gradients
    python benchmarks/conv_kernels.py --residual-gradients
    python benchmarks/conv_kernels.py --stem-gradients

Forward + backward (gradients for input and kernel) of each form, jitted, in one process, best of 10 calls, at
shapes CoAtNet-0 meets (batch 8). These are the measurements behind `PointwiseConv2D` and `ShiftedDepthwiseConv2D`.
`--depthwise-gradients` compares ways of computing the shifted sums' backward pass instead (XLA writes every tap
out for the kernel gradient's reductions: 8 copies of the input at 224 px), all against autodiff of the shifted sums;
the last form is the library's (`shifted_depthwise_sum`: the kernel gradient summed over blocks of rows in turn);
then coatnet_0_rw_224's whole forward + backward with autodiff's backward and the library's, in alternating rounds.
`--attention` times CoAtNet's attention (qkv, attention, projection) on token-major (B, N, heads, d) operands
against head-major ones, then coatnet_0_rw_224's forward + backward and its inference with `RelPosAttention` each way.
`--batch-norm` times a training BatchNorm's forward + backward: autodiff of Keras' formula (`ops.moments`, then
`ops.batch_normalization`) against `FusedBatchNormalization`'s hand-written backward; then coatnet_0_rw_224's whole
forward + backward (cross-entropy) with each, in alternating rounds.
`--attention-bias` times the gradient of the attention's relative-position bias, which autodiff takes as a sum over
the batch axis: that reduction alone against the same sum as a chain of adds over the batch's slices and as the
library's product with a vector of ones (`add_attention_bias`), then the attention (bias included) forward + backward
with each, the others through a custom VJP; then coatnet_0_rw_224's whole forward + backward with autodiff's sum and
with `add_attention_bias`, in alternating rounds.
`--pointwise-gradients` times a 1x1 convolution's matmul (an elementwise op after it, as in the model) with
autodiff's backward against `pointwise_matmul`'s (the kernel gradient contracted as (in, out) directly), then
coatnet_0_rw_224's whole forward + backward with each, in alternating rounds.
`--residual-gradients` times coatnet_0_rw_224's whole forward + backward with `ResidualAdd`'s `gradient_boundary`
and without it (the identity), in alternating rounds, and counts the operands of the largest fusions XLA made.
`--stem-gradients` times the stem's 3x3 convolutions forward + backward with autodiff's kernel gradient (a
convolution over the batch) against `conv_patch_gradient`'s (one matmul over the input's patches), then
coatnet_0_rw_224's whole forward + backward with each, in alternating rounds.
"""

from __future__ import annotations

import argparse
import functools
from unittest import mock

import ich_keras  # noqa: F401  (selects the JAX backend before keras is imported)
import jax
import jax.numpy as jnp
import keras
import numpy as np
from keras import ops

import profile_step
from formulations import (
    TRAINING_SHAPES,
    best_ms,
    in_the_model,
    max_relative_difference,
    model_gradient,
    replaced_and_library,
)
from ich_keras import models
from ich_keras.models import layers, rewrites
from ich_keras.models.attention_kernels import add_attention_bias
from ich_keras.models.rewrites import (
    FusedBatchNormalization,
    conv_patch_gradient,
    fused_batch_norm,
    shifted_depthwise_sum,
)
from ich_keras.models.rewrites import pointwise_matmul as library_pointwise_matmul

NHWC = ("NHWC", "HWIO", "NHWC")


def pointwise_conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=NHWC)


def pointwise_matmul(x, w):
    return jnp.matmul(x, w[0, 0])


def depthwise_conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC,
                                        feature_group_count=x.shape[-1])


def depthwise_shifted(x, w):
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    height, width = x.shape[1:3]
    return sum(padded[:, i:i + height, j:j + width] * w[i, j, 0] for i in range(3) for j in range(3))


# Recomputes the taps in the backward pass instead of keeping them from the forward one.
depthwise_shifted_remat = jax.checkpoint(depthwise_shifted)


@jax.custom_vjp
def depthwise_channel_major(x, w):
    """Shifted sums whose kernel gradient reduces over the minor axes of a channel-major copy of input and gradient."""
    return depthwise_shifted(x, w)


def _save_inputs(x, w):
    return depthwise_shifted(x, w), (x, w)


def _channel_major_backward(saved, g):
    x, w = saved
    height, width = x.shape[1:3]
    grad_x = depthwise_shifted(g, w[::-1, ::-1])  # correlation with the kernel turned by 180 degrees
    x_cm = jnp.pad(jnp.transpose(x, (3, 0, 1, 2)), ((0, 0), (0, 0), (1, 1), (1, 1)))  # (C, B, H + 2, W + 2)
    g_cm = jnp.transpose(g, (3, 0, 1, 2))
    grad_w = jnp.stack([jnp.stack([jnp.sum(x_cm[:, :, i:i + height, j:j + width] * g_cm, axis=(1, 2, 3))
                                   for j in range(3)]) for i in range(3)])
    return grad_x, grad_w[:, :, None, :]


depthwise_channel_major.defvjp(_save_inputs, _channel_major_backward)


def depthwise_row_blocks(x, w):
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return shifted_depthwise_sum(padded, w[:, :, 0], (1, 1))


def depthwise_gradients(rng) -> None:
    print("| backward pass | input (B, H, W, C) | autodiff (ms) | this (ms) | speed-up | max rel diff |")
    print("|---|---|---:|---:|---:|---:|")
    # 224 px at batch 8, then 64 px at batch 8, 16 and 32: the depthwise convolutions of stages 0 and 1.
    for (batch, height, channels) in [(8, 56, 384), (8, 28, 768), (8, 16, 384), (16, 16, 384), (32, 16, 384),
                                      (32, 8, 768)]:
        x = jnp.asarray(rng.standard_normal((batch, height, height, channels)), "float32")
        w = jnp.asarray(rng.standard_normal((3, 3, 1, channels)), "float32")
        reference_ms, reference = best_ms(depthwise_shifted, x, w)
        for label, fn in (("taps recomputed (jax.checkpoint)", depthwise_shifted_remat),
                          ("custom VJP, channel-major kernel gradient", depthwise_channel_major),
                          ("custom VJP, kernel gradient over blocks of rows", depthwise_row_blocks)):
            ms, grads = best_ms(fn, x, w)
            diff = max_relative_difference(reference, grads)
            print(f"| {label} | ({batch}, {height}, {height}, {channels}) | {reference_ms:.2f} | {ms:.2f} | "
                  f"{reference_ms / ms:.2f}x | {diff:.1e} |", flush=True)
    print()
    depthwise_in_the_model(rng)


def attention_token_major(q, k, v):
    """`RelPosAttention`'s einsums on (B, N, heads, d) operands (the bias table is left out: the same either way)."""
    weights = jax.nn.softmax(jnp.einsum("bnhd,bmhd->bhnm", q, k), axis=-1)
    return jnp.einsum("bhnm,bmhd->bnhd", weights, v)


def attention_head_major(q, k, v):
    """The same on operands transposed to (B, heads, N, d) first: plain batched matmuls."""
    q, k, v = (jnp.transpose(t, (0, 2, 1, 3)) for t in (q, k, v))
    weights = jax.nn.softmax(q @ jnp.swapaxes(k, -1, -2), axis=-1)
    return jnp.transpose(weights @ v, (0, 2, 1, 3))


def attention_block(attention):
    """qkv matmul, `attention` over 32-wide heads, output projection: CoAtNet's attention on a (B, H, W, C) map."""
    def run(x, weights):
        batch, height, width, channels = x.shape
        qkv = (x @ weights[0]).reshape(batch, height * width, channels // 32, 3 * 32)
        out = attention(*jnp.split(qkv, 3, axis=-1)).reshape(x.shape)
        return out @ weights[1]
    return run


def token_major_attention_call(self, qkv):
    """`RelPosAttention.call` as it was before its operands went head-major: einsums over (B, N, heads, d)."""
    _, height, width, _ = qkv.shape
    tokens = height * width
    q, k, v = ops.split(ops.reshape(qkv, (-1, tokens, self.num_heads, 3 * self.dim_head)), 3, axis=-1)
    logits = ops.einsum("bnhd,bmhd->bhnm", q * self.dim_head**-0.5, k)
    bias = ops.take(self.relative_position_bias_table, self._index.reshape(-1), axis=0)
    logits = logits + ops.transpose(ops.reshape(bias, (tokens, tokens, self.num_heads)), (2, 0, 1))[None]
    out = ops.einsum("bhnm,bmhd->bnhd", ops.softmax(logits, axis=-1), v)
    return ops.reshape(out, (-1, height, width, self.num_heads * self.dim_head))


def attention_in_the_model(rng) -> None:
    for task, inference, shapes in (("forward + backward", False, TRAINING_SHAPES),
                                    ("inference", True, ((64, 16), (224, 16)))):
        def make_steps(size, images, labels, inference=inference):
            model = models.build("coatnet_0_rw_224", 10, size)
            with mock.patch.object(layers.RelPosAttention, "call", token_major_attention_call):
                token_major = model_gradient(model, images, labels, inference)
            return {"token-major": token_major, "head-major": model_gradient(model, images, labels, inference)}

        in_the_model(rng, ("token-major", "head-major"), make_steps, shapes=shapes, task=task)
        print()


def attention_layouts(rng) -> None:
    print("| attention block | input (B, H, W, C) | token-major (ms) | head-major (ms) | speed-up | max rel diff |")
    print("|---|---|---:|---:|---:|---:|")
    for (batch, height, channels) in [(8, 14, 384), (16, 14, 384), (8, 7, 768), (16, 7, 768)]:
        x = jnp.asarray(rng.standard_normal((batch, height, height, channels)), "float32")
        weights = [jnp.asarray(rng.standard_normal(shape) / np.sqrt(shape[0]), "float32")
                   for shape in ((channels, 3 * channels), (channels, channels))]
        a, reference = best_ms(attention_block(attention_token_major), x, weights)
        b, grads = best_ms(attention_block(attention_head_major), x, weights)
        diff = max_relative_difference(reference, grads)
        print(f"| qkv, attention, projection | ({batch}, {height}, {height}, {channels}) | {a:.2f} | {b:.2f} | "
              f"{a / b:.2f}x | {diff:.1e} |", flush=True)
    print()
    attention_in_the_model(rng)


def sum_over_batch(x):
    return jnp.sum(x, axis=0)


def add_over_batch(x):
    return functools.reduce(jnp.add, list(x))  # the batch size is static under jit


@jax.custom_vjp
def add_bias_summed_by_adds(logits, bias):
    """`logits + bias[None]` whose bias gradient is `add_over_batch` (autodiff's is `sum_over_batch`)."""
    return logits + bias[None]


add_bias_summed_by_adds.defvjp(lambda logits, bias: (logits + bias[None], None),
                               lambda _, g: (g, add_over_batch(g)))


def biased_attention(add_bias):
    """`attention_token_major` with a (heads, N, N) bias added to the logits by `add_bias`; weights = (bias,)."""
    def run(qkv, weights):
        q, k, v = jnp.split(qkv, 3, axis=-1)
        logits = add_bias(jnp.einsum("bnhd,bmhd->bhnm", q, k), weights[0])
        return jnp.einsum("bhnm,bmhd->bnhd", jax.nn.softmax(logits, axis=-1), v)
    return run


def times_ones(x):
    """`add_attention_bias`' bias gradient: a vector of ones times x over the batch axis."""
    return jnp.tensordot(jnp.ones(x.shape[:1], x.dtype), x, axes=1)


def plain_add_bias(logits, bias):
    return logits + bias[None]


def attention_bias(rng) -> None:
    print("| bias gradient | gradient (B, heads, N, N) | sum over axis 0 (ms) | chain of adds (ms) | ones-vector "
          "product (ms) | speed-up (chain, product) | max rel diff (chain, product) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    shapes = [(8, 12, 196, 196), (8, 24, 49, 49), (32, 12, 16, 16)]  # stages.2, stages.3 at 224 px; stages.2 at 64 px
    for shape in shapes:
        x = jnp.asarray(rng.standard_normal(shape), "float32")
        (a, reference), *others = (best_ms(lambda x, _, f=f: f(x), x, x)
                                   for f in (sum_over_batch, add_over_batch, times_ones))
        print(f"| reduction alone | {shape} | {a:.2f} | {others[0][0]:.2f} | {others[1][0]:.2f} | "
              + ", ".join(f"{a / ms:.1f}x" for ms, _ in others) + " | "
              + ", ".join(f"{max_relative_difference(reference, grads):.1e}" for _, grads in others) + " |", flush=True)
    for batch, heads, tokens, _ in shapes:
        qkv = jnp.asarray(rng.standard_normal((batch, tokens, heads, 3 * 32)), "float32")
        bias = [jnp.asarray(rng.standard_normal((heads, tokens, tokens)), "float32")]
        (a, reference), *others = (best_ms(biased_attention(add), qkv, bias)
                                   for add in (plain_add_bias, add_bias_summed_by_adds, add_attention_bias))
        print(f"| attention forward + backward | {(batch, heads, tokens, tokens)} | {a:.2f} | {others[0][0]:.2f} | "
              f"{others[1][0]:.2f} | " + ", ".join(f"{a / ms:.2f}x" for ms, _ in others) + " | "
              + ", ".join(f"{max_relative_difference(reference, grads):.1e}" for _, grads in others) + " |", flush=True)
    print()

    names = ("autodiff's sum", "ones-vector product")
    in_the_model(rng, names, replaced_and_library(layers, "add_attention_bias", plain_add_bias, names),
                 shapes=(*TRAINING_SHAPES, (224, 16)))


# best_ms' loss, sum(BN(x) ** 2), would not depend on x (normalised outputs have a fixed sum of squares): both forms
# multiply the outputs by a random array of their shape first (the third weight).
def keras_batch_norm(x, weights):
    """What `keras.layers.BatchNormalization` computes in training, differentiated by autodiff."""
    scale, offset, probe = weights
    mean, variance = ops.moments(x, axes=(0, 1, 2))
    return ops.batch_normalization(x, mean, variance, axis=-1, offset=offset, scale=scale, epsilon=1e-5) * probe


def hand_written_batch_norm(x, weights):
    scale, offset, probe = weights
    return fused_batch_norm(x, scale, offset, 1e-5)[0] * probe


def batch_norms(rng) -> None:
    print("| BatchNorm, training | input (B, H, W, C) | autodiff (ms) | hand-written (ms) | speed-up | max rel diff |")
    print("|---|---|---:|---:|---:|---:|")
    for shape in [(8, 56, 56, 96), (8, 56, 56, 384), (8, 28, 28, 768), (32, 16, 16, 384)]:
        x = jnp.asarray(rng.standard_normal(shape), "float32")
        weights = [jnp.asarray(rng.standard_normal(s), "float32") for s in (shape[-1:], shape[-1:], shape)]
        a, reference = best_ms(keras_batch_norm, x, weights)
        b, grads = best_ms(hand_written_batch_norm, x, weights)
        diff = max_relative_difference(reference, grads)
        print(f"| forward + backward | {shape} | {a:.2f} | {b:.2f} | {a / b:.2f}x | {diff:.1e} |", flush=True)
    print()
    batch_norm_in_the_model(rng)


def with_keras_batch_norm(model):
    """A copy of `model` whose `FusedBatchNormalization` layers are Keras' own, with the same weights."""
    def clone(layer):
        cls = keras.layers.BatchNormalization if isinstance(layer, FusedBatchNormalization) else type(layer)
        return cls.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def batch_norm_in_the_model(rng) -> None:
    def make_steps(size, images, labels):
        fused = models.build("coatnet_0_rw_224", 10, size)
        return {"Keras BN": model_gradient(with_keras_batch_norm(fused), images, labels),
                "fused": model_gradient(fused, images, labels)}

    in_the_model(rng, ("Keras BN", "fused"), make_steps)


def depthwise_in_the_model(rng) -> None:
    def make_steps(size, images, labels):
        model = models.build("coatnet_0_rw_224", 10, size)
        # The same layers differentiated by autodiff: the forward without its custom VJP.
        with mock.patch.object(rewrites, "shifted_depthwise_sum", rewrites.shifted_depthwise_sum.fun):
            autodiff = model_gradient(model, images, labels)
        return {"autodiff": autodiff, "blocks of rows": model_gradient(model, images, labels)}

    in_the_model(rng, ("autodiff", "blocks of rows"), make_steps)


def pointwise_gradients(rng) -> None:
    print("| 1x1 conv as a matmul, then GELU | input (B, H, W, C) | out channels | autodiff (ms) | "
          "`pointwise_matmul` (ms) | speed-up | max rel diff |")
    print("|---|---|---:|---:|---:|---:|---:|")
    # The 1x1 convolutions and MLPs of stages 0-2 at 224 px, batch 8, and of stages 1-2 at 64 px, batch 32.
    for (batch, height, channels, out) in [(8, 56, 96, 384), (8, 56, 384, 96), (8, 28, 192, 768), (8, 14, 384, 1536),
                                           (8, 14, 1536, 384), (32, 8, 192, 768), (32, 4, 1536, 384)]:
        x = jnp.asarray(rng.standard_normal((batch, height, height, channels)), "float32")
        w = jnp.asarray(rng.standard_normal((channels, out)) / np.sqrt(channels), "float32")
        reference_ms, reference = best_ms(lambda x, w: jax.nn.gelu(jnp.matmul(x, w)), x, w)
        ms, grads = best_ms(lambda x, w: jax.nn.gelu(library_pointwise_matmul(x, w)), x, w)
        diff = max_relative_difference(reference, grads)
        print(f"| forward + backward | ({batch}, {height}, {height}, {channels}) | {out} | {reference_ms:.2f} | "
              f"{ms:.2f} | {reference_ms / ms:.2f}x | {diff:.1e} |", flush=True)
    print()

    def make_steps(size, images, labels):
        model = models.build("coatnet_0_rw_224", 10, size)
        with mock.patch.object(rewrites, "pointwise_matmul", jnp.matmul):  # the same layers under autodiff
            autodiff = model_gradient(model, images, labels)
        return {"autodiff": autodiff, "pointwise_matmul": model_gradient(model, images, labels)}

    in_the_model(rng, ("autodiff", "pointwise_matmul"), make_steps)


def largest_fusions(model, images, labels, count: int = 3) -> list[int]:
    """Operand counts of the `count` largest fusions in `model`'s compiled forward + backward."""
    trainable, frozen = [v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables]
    grad = jax.jit(lambda *args: jax.grad(profile_step.training_loss(model), has_aux=True)(*args)[0])
    text = grad.lower(trainable, frozen, images, labels).compile().as_text()
    fusions = [line.split(" fusion(", 1)[1].split("), kind=", 1)[0] for line in text.splitlines()
               if line.lstrip().startswith("%") and " fusion(" in line]
    return sorted((operands.count("%") for operands in fusions), reverse=True)[:count]


def residual_gradients(rng) -> None:
    def without_boundary():
        return mock.patch.object(rewrites, "gradient_boundary", lambda x: x)

    images = jnp.asarray(rng.standard_normal((16, 224, 224, 3)), "float32")
    labels = jax.nn.one_hot(rng.integers(0, 10, 16), 10)
    model = models.build("coatnet_0_rw_224", 10, 224)
    with without_boundary():
        plain = largest_fusions(model, images, labels)
    print(f"Operands of the three largest fusions at 224 px, batch 16: {plain} without the boundary, "
          f"{largest_fusions(model, images, labels)} with it.\n")

    names = ("plain Add", "ResidualAdd")
    in_the_model(rng, names, replaced_and_library(rewrites, "gradient_boundary", lambda x: x, names),
                 shapes=(*TRAINING_SHAPES, (224, 16)))


def autodiff_convolution(x, kernel, strides, padding):
    return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=NHWC)


def stem_gradients(rng) -> None:
    print("| stem convolution | input (B, H, W, C) | out channels | stride | autodiff (ms) | patch matmul (ms) | "
          "speed-up | max rel diff |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    # stem.conv2 at 224 and 64 px, then stem.conv1 (its input padded by one pixel a side, as the model pads it).
    for shape, out, stride, padding in [((8, 112, 112, 32), 64, 1, "SAME"), ((32, 32, 32, 32), 64, 1, "SAME"),
                                        ((8, 226, 226, 3), 32, 2, "VALID"), ((32, 66, 66, 3), 32, 2, "VALID")]:
        x = jnp.asarray(rng.standard_normal(shape), "float32")
        w = jnp.asarray(rng.standard_normal((3, 3, shape[-1], out)) / np.sqrt(9 * shape[-1]), "float32")
        (a, reference), (b, grads) = (best_ms(functools.partial(f, strides=(stride, stride), padding=padding), x, w)
                                      for f in (autodiff_convolution, conv_patch_gradient))
        diff = max_relative_difference(reference, grads)
        print(f"| forward + backward | {shape} | {out} | {stride} | {a:.2f} | {b:.2f} | {a / b:.2f}x | {diff:.1e} |",
              flush=True)
    print()

    names = ("autodiff", "patch matmul")
    in_the_model(rng, names, replaced_and_library(rewrites, "conv_patch_gradient", autodiff_convolution, names),
                 shapes=(*TRAINING_SHAPES, (224, 16)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depthwise-gradients", action="store_true", help="compare backward passes of the sums")
    parser.add_argument("--attention", action="store_true", help="compare attention operand layouts")
    parser.add_argument("--batch-norm", action="store_true", help="compare BatchNorm backward passes")
    parser.add_argument("--attention-bias", action="store_true", help="compare attention bias gradients")
    parser.add_argument("--pointwise-gradients", action="store_true", help="compare 1x1 matmul backward passes")
    parser.add_argument("--residual-gradients", action="store_true", help="with and without gradient_boundary")
    parser.add_argument("--stem-gradients", action="store_true", help="compare the stem convolutions' backward passes")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for flag, section in ((args.depthwise_gradients, depthwise_gradients), (args.attention, attention_layouts),
                          (args.batch_norm, batch_norms), (args.attention_bias, attention_bias),
                          (args.pointwise_gradients, pointwise_gradients),
                          (args.residual_gradients, residual_gradients), (args.stem_gradients, stem_gradients)):
        if flag:
            return section(rng)
    print("| kernel | input (B, H, W, C) | out channels | standard form (ms) | rewritten (ms) | speed-up |")
    print("|---|---|---:|---:|---:|---:|")
    for (height, channels, out) in [(2, 768, 3072), (2, 3072, 768), (7, 768, 3072), (16, 96, 384), (56, 96, 384)]:
        x = jnp.asarray(rng.standard_normal((8, height, height, channels)), "float32")
        w = jnp.asarray(rng.standard_normal((1, 1, channels, out)), "float32")
        (a, _), (b, _) = best_ms(pointwise_conv, x, w), best_ms(pointwise_matmul, x, w)
        print(f"| 1x1 conv → matmul | (8, {height}, {height}, {channels}) | {out} | {a:.2f} | {b:.2f} | {a / b:.1f}x |",
              flush=True)
    for (height, channels) in [(16, 384), (56, 384)]:
        x = jnp.asarray(rng.standard_normal((8, height, height, channels)), "float32")
        w = jnp.asarray(rng.standard_normal((3, 3, 1, channels)), "float32")
        (a, _), (b, _) = best_ms(depthwise_conv, x, w), best_ms(depthwise_shifted, x, w)
        print(f"| 3x3 depthwise → shifted sums | (8, {height}, {height}, {channels}) | {channels} | {a:.2f} | "
              f"{b:.2f} | {a / b:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
