"""CPU rewrites of Keras layers: the same weights and names, another computation, measured faster on XLA's CPU
backend (benchmarks/README.md). `cpu_rewrites` says whether a model built now uses them.

The layer classes here are built on every backend and run their Keras base class's computation where the rewrites
are off: Keras 3 names a layer's group in `.weights.h5` after its class, so one class for each layer, whatever the
backend, keeps a checkpoint written on a CPU loadable on a GPU and the other way round."""

from __future__ import annotations

import contextlib
import functools
import math
import os

import jax
import jax.numpy as jnp
import keras
from jax import lax
from keras import ops

from ich_keras.errors import UserError

CONV_IMPL_ENV = "ICH_KERAS_CONV_IMPL"
CONV_IMPLS = ("auto", "standard", "rewritten")


class CpuRewrite:
    """Mixin for a rewritten Keras layer: `rewritten` is `cpu_rewrites()` when the layer is made (not saved in its
    config, so a model loaded elsewhere chooses again); where it is False the layer is its Keras base class."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rewritten = cpu_rewrites()


@keras.saving.register_keras_serializable(package="ich_keras")
class ShiftedDepthwiseConv2D(CpuRewrite, keras.layers.DepthwiseConv2D):
    """`keras.layers.DepthwiseConv2D` (multiplier 1, channels last) computed as a sum of k*k shifted copies of the
    input, each scaled per channel.

    Same weights, same result. XLA's CPU depthwise convolution (a grouped conv with one group per channel) is slow
    and its gradient far slower; the shifted sum is plain elementwise work that XLA fuses (see benchmarks/README.md).
    """

    def call(self, inputs):
        kernel_h, kernel_w = self.kernel_size
        unsupported = self.depth_multiplier != 1 or tuple(self.dilation_rate) != (1, 1)
        unsupported = unsupported or self.data_format != "channels_last" or keras.backend.backend() != "jax"
        # "same" is handled at stride 1 with odd kernels only, where it pads (k - 1) / 2 on every side.
        odd_same = self.strides == (1, 1) and kernel_h % 2 == 1 and kernel_w % 2 == 1
        if not self.rewritten or unsupported or (self.padding == "same" and not odd_same):
            return super().call(inputs)
        x = inputs
        if self.padding == "same":
            x = ops.pad(x, ((0, 0), (kernel_h // 2, kernel_h // 2), (kernel_w // 2, kernel_w // 2), (0, 0)))
        out = shifted_depthwise_sum(x, ops.cast(self.kernel[:, :, :, 0], x.dtype), tuple(self.strides))
        if self.use_bias:
            out = out + ops.cast(self.bias, out.dtype)
        return self.activation(out) if self.activation is not None else out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def shifted_depthwise_sum(x, kernel, strides: tuple[int, int]):
    """Depthwise correlation of an already padded x (B, H, W, C) with kernel (kh, kw, C), no padding added.

    The kernel's gradient is summed over blocks of a few output rows in turn, each block small enough for the CPU's
    caches: under autodiff XLA's CPU backend writes every tap of the whole input out before reducing it, and this
    convolution's forward + backward ran 1.1-3.7x slower (`benchmarks/conv_kernels.py --depthwise-gradients`).
    """
    return _shifted_sum(x, kernel, strides)


def _shifted_sum(x, kernel, strides):
    out = None
    for (i, j), tap in _taps(x, kernel.shape[:2], strides, _output_size(x, kernel, strides)):
        term = tap * kernel[i, j]
        out = term if out is None else out + term
    return out


def _output_size(x, kernel, strides) -> tuple[int, int]:
    return tuple((x.shape[axis] - kernel.shape[k]) // strides[k] + 1 for k, axis in enumerate((1, 2)))


def _taps(x, kernel_size, strides, out_size):
    """((i, j), the (B, out_h, out_w, C) strided view of x that tap (i, j) of every output position reads)."""
    # lax.slice, not x[::s]: numpy indexing over a symbolic batch becomes a gather, which the TFLite converter
    # rejects when the model is exported.
    for i in range(kernel_size[0]):
        rows = lax.slice_in_dim(x, i, i + strides[0] * (out_size[0] - 1) + 1, strides[0], axis=1)
        for j in range(kernel_size[1]):
            yield (i, j), lax.slice_in_dim(rows, j, j + strides[1] * (out_size[1] - 1) + 1, strides[1], axis=2)


def _shifted_sum_forward(x, kernel, strides):
    return _shifted_sum(x, kernel, strides), (x, kernel)


def _shifted_sum_backward(strides, residuals, grad_out):
    x, kernel = residuals
    _, transpose = jax.vjp(lambda x: _shifted_sum(x, kernel, strides), x)
    (grad_x,) = transpose(grad_out)
    out_h, out_w = grad_out.shape[1:3]
    rows = _rows_per_block(grad_out)
    in_rows = strides[0] * (rows - 1) + kernel.shape[0]  # the input rows a block of output rows reads

    def add_block(block, total):
        x_block = lax.dynamic_slice_in_dim(x, block * rows * strides[0], in_rows, axis=1)
        grad_block = lax.dynamic_slice_in_dim(grad_out, block * rows, rows, axis=1)
        taps = _taps(x_block, kernel.shape[:2], strides, (rows, out_w))
        return total + jnp.stack([jnp.sum(tap * grad_block, axis=(0, 1, 2), dtype=jnp.float32) for _, tap in taps])

    total = jnp.zeros((kernel.shape[0] * kernel.shape[1], kernel.shape[2]), jnp.float32)
    total = lax.fori_loop(0, out_h // rows, add_block, total)
    return grad_x, total.reshape(kernel.shape).astype(kernel.dtype)


def _rows_per_block(grad_out, block_bytes: int = 3 << 19) -> int:
    """The most output rows (a divisor of the height) whose block of the gradient stays under 1.5 MB: small enough
    for the CPU's caches, large enough that the loop's steps are few."""
    batch, height, width, channels = grad_out.shape
    if not isinstance(batch, int):  # a symbolic batch (the exporter traces gradients too): one block
        return height
    row_bytes = batch * width * channels * grad_out.dtype.itemsize
    return max([rows for rows in range(1, height + 1) if height % rows == 0 and rows * row_bytes <= block_bytes],
               default=1)


shifted_depthwise_sum.defvjp(_shifted_sum_forward, _shifted_sum_backward)


@keras.saving.register_keras_serializable(package="ich_keras")
class PointwiseConv2D(CpuRewrite, keras.layers.Conv2D):
    """`keras.layers.Conv2D` with a 1x1 kernel at stride 1 (channels last) computed as a matmul over channels.

    Same weights, same result. As a convolution, XLA's CPU backward pass copies every kernel into the transposed
    layout first (a 768x3072 kernel: 5 ms, for a 2x2 feature map) and runs the 1x1 convolution itself slower
    than a dot; as a matmul (`pointwise_matmul`) the gradients are two dots (see benchmarks/README.md).
    """

    def call(self, inputs):
        pointwise = tuple(self.kernel_size) == (1, 1) and tuple(self.strides) == (1, 1) and self.groups == 1
        plain = pointwise and tuple(self.dilation_rate) == (1, 1) and self.data_format == "channels_last"
        if not (self.rewritten and plain):
            return super().call(inputs)
        out = pointwise_matmul(inputs, ops.cast(self.kernel[0, 0], inputs.dtype))  # (B, H, W, in) @ (in, out)
        if self.use_bias:
            out = out + ops.cast(self.bias, out.dtype)
        return self.activation(out) if self.activation is not None else out


@jax.custom_vjp
def pointwise_matmul(x, kernel):
    """x (..., in) @ kernel (in, out), whose kernel gradient transposes the narrower of x and the output gradient.

    The kernel gradient contracts the leading axes of both, and XLA's CPU backend first writes its left operand out
    transposed, channel-major. Autodiff puts the output gradient on the left, so an expanding 1x1 convolution or MLP
    (out = 4 * in) copied the wider of the two: those copies were the largest non-matmul cost of a CoAtNet step
    (`benchmarks/conv_kernels.py --pointwise-gradients`, benchmarks/README.md).
    """
    return jnp.matmul(x, kernel)


def _pointwise_forward(x, kernel):
    return jnp.matmul(x, kernel), (x, kernel)


def _pointwise_backward(residuals, grad_out):
    x, kernel = residuals
    grad_x = lax.dot_general(grad_out, kernel, (((x.ndim - 1,), (1,)), ((), ())))
    return grad_x.astype(x.dtype), contract_leading_axes(x, grad_out).astype(kernel.dtype)


pointwise_matmul.defvjp(_pointwise_forward, _pointwise_backward)


def contract_leading_axes(x, grad_out):
    """x (..., in) and grad_out (..., out) contracted over all their leading axes: a kernel's gradient (in, out).

    XLA's CPU backend writes a contraction's left operand out transposed first, so the narrower of the two goes on
    the left. Where the rows are many and the result small (its two partial sums at most an eighth of the operands'
    size), they are split into two halves, contracted as a batch of two and summed in float32. One contraction over
    all rows ran up to 2.5x slower there; halves ran up to 2x slower where the result is large, as for a stage-3
    MLP at 64 px (64 rows into 768 x 3072). See `benchmarks/kernel_gradient.py` and benchmarks/README.md.
    """
    narrow_left = x.shape[-1] <= grad_out.shape[-1]
    left, right = (x, grad_out) if narrow_left else (grad_out, x)
    rows = math.prod(left.shape[:-1])
    if _in_halves(rows, left.shape[-1], right.shape[-1]):
        half = rows // 2
        halves = (left.reshape(2, half, left.shape[-1]), right.reshape(2, half, right.shape[-1]))
        gram = lax.dot_general(*halves, (((1,), (1,)), ((0,), (0,))), preferred_element_type=jnp.float32).sum(0)
    else:
        axes = tuple(range(left.ndim - 1))
        gram = lax.dot_general(left, right, ((axes, axes), ((), ())))
    return gram if narrow_left else gram.T


def _in_halves(rows, width_in: int, width_out: int) -> bool:
    """Whether `contract_leading_axes` splits its rows: a static, even count, and the two partial sums
    (2 * in * out) at most an eighth of the operands (rows * (in + out))."""
    return isinstance(rows, int) and rows % 2 == 0 and 16 * width_in * width_out <= rows * (width_in + width_out)


@keras.saving.register_keras_serializable(package="ich_keras")
class PatchGradientConv2D(CpuRewrite, keras.layers.Conv2D):
    """`keras.layers.Conv2D` (channels last, no groups or dilation) whose kernel gradient is one matmul over the
    input's patches (`conv_patch_gradient`).

    Same weights, same forward (Keras' convolution); gradients equal up to rounding. For CoAtNet's stem, whose
    kernel gradient XLA's CPU backend computed several times slower than the convolution itself.
    """

    def call(self, inputs):
        plain = self.groups == 1 and tuple(self.dilation_rate) == (1, 1) and self.data_format == "channels_last"
        if not (self.rewritten and plain and keras.backend.backend() == "jax"):
            return super().call(inputs)
        out = conv_patch_gradient(inputs, ops.cast(self.kernel, inputs.dtype), tuple(self.strides),
                                  self.padding.upper())
        if self.use_bias:
            out = out + ops.cast(self.bias, out.dtype)
        return self.activation(out) if self.activation is not None else out


_NHWC = ("NHWC", "HWIO", "NHWC")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_patch_gradient(x, kernel, strides: tuple[int, int], padding: str):
    """x (B, H, W, in) convolved with kernel (kh, kw, in, out) as Keras convolves ("SAME" or "VALID" padding),
    whose kernel gradient is one matmul (`contract_leading_axes`): the input's kh*kw strided taps side by side
    (im2col) against the output gradient.

    Autodiff's kernel gradient is a convolution over the batch, and XLA's CPU backend ran it as one slow kernel
    without metadata: ~0.3 s of kernel time in coatnet_0's ~1 s forward + backward at 64 px, batch 32. The input
    gradient stays autodiff's. The patches are a transient kh*kw times the input's size (`benchmarks/conv_kernels.py
    --stem-gradients`, benchmarks/README.md).
    """
    return _convolve(x, kernel, strides, padding)


def _convolve(x, kernel, strides, padding):
    return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_NHWC)


def _conv_forward(x, kernel, strides, padding):
    return _convolve(x, kernel, strides, padding), (x, kernel)


def _conv_backward(strides, padding, residuals, grad_out):
    x, kernel = residuals
    _, transpose = jax.vjp(lambda x: _convolve(x, kernel, strides, padding), x)
    (grad_x,) = transpose(grad_out)
    if padding == "SAME":
        x = jnp.pad(x, ((0, 0), *lax.padtype_to_pads(x.shape[1:3], kernel.shape[:2], strides, padding), (0, 0)))
    patches = jnp.concatenate([tap for _, tap in _taps(x, kernel.shape[:2], strides, grad_out.shape[1:3])], axis=-1)
    grad_kernel = contract_leading_axes(patches, grad_out)  # (kh*kw*in, out)
    return grad_x, grad_kernel.reshape(kernel.shape).astype(kernel.dtype)


conv_patch_gradient.defvjp(_conv_forward, _conv_backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def fused_batch_norm(x, gamma, beta, epsilon: float):
    """BatchNorm with batch statistics over every axis but the last, as Keras computes it: (outputs, mean, variance).

    The backward pass is the textbook one (two channel sums, then one elementwise pass) rather than autodiff through
    the two-pass variance: coatnet_0's forward + backward on XLA's CPU backend ran 1.06-1.29x faster with it
    (`benchmarks/conv_kernels.py --batch-norm`, benchmarks/README.md).
    """
    return _batch_norm_forward(x, gamma, beta, epsilon)[0]


def _batch_norm_forward(x, gamma, beta, epsilon):
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axes)
    variance = jnp.var(x, axis=axes)
    inv = lax.rsqrt(variance + epsilon)
    scale = inv * gamma
    outputs = x * scale + (beta - mean * scale)  # Keras' ops.batch_normalization, term for term
    return (outputs, mean, variance), (x, mean, inv, gamma)


def _batch_norm_backward(epsilon, residuals, cotangents):
    x, mean, inv, gamma = residuals
    d_outputs, d_mean, d_variance = cotangents  # the statistics' cotangents: zero unless a loss reads them
    axes = tuple(range(x.ndim - 1))
    count = x.size // x.shape[-1]
    centered = x - mean
    normalised = centered * inv
    d_beta = jnp.sum(d_outputs, axes)
    d_gamma = jnp.sum(d_outputs * normalised, axes)
    d_x = (gamma * inv) * (d_outputs - (d_beta + normalised * d_gamma) / count)
    d_x = d_x + (d_mean + 2 * centered * d_variance) / count
    return d_x, d_gamma, d_beta


fused_batch_norm.defvjp(_batch_norm_forward, _batch_norm_backward)


@keras.saving.register_keras_serializable(package="ich_keras")
class FusedBatchNormalization(CpuRewrite, keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` whose training step runs `fused_batch_norm` (a hand-written backward).

    Same weights, same forward values and moving-average updates; gradients equal up to rounding. Anything beyond
    the plain case (a mask, renorm, synchronized statistics, no scale or offset, another axis) is Keras' own code.
    """

    def call(self, inputs, training=None, mask=None):
        plain = mask is None and not self.renorm and not self.synchronized and self.scale and self.center
        plain = plain and self.axis in (-1, len(inputs.shape) - 1) and keras.backend.backend() == "jax"
        if not (self.rewritten and training and self.trainable and plain):
            return super().call(inputs, training=training, mask=mask)
        inputs = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        outputs, mean, variance = fused_batch_norm(
            inputs, ops.cast(self.gamma, inputs.dtype), ops.cast(self.beta, inputs.dtype), self.epsilon
        )
        for moving, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
            moving.assign(ops.cast(moving, inputs.dtype) * self.momentum + batch * (1.0 - self.momentum))
        return ops.cast(outputs, self.compute_dtype)


@keras.saving.register_keras_serializable(package="ich_keras")
class ResidualAdd(CpuRewrite, keras.layers.Add):
    """`keras.layers.Add` for a residual connection, whose output's gradient passes `gradient_boundary`."""

    def call(self, inputs):
        out = super().call(inputs)
        return gradient_boundary(out) if self.rewritten and keras.backend.backend() == "jax" else out


@jax.custom_vjp
def gradient_boundary(x):
    """The identity, whose gradient XLA's fusion passes cannot look through.

    Backward through a stack of residual blocks, each block's input gradient is the next one's plus cheap
    elementwise terms, and XLA's CPU backend fuses that sum into every consumer: the first transformer block of
    coatnet_0's stage 2 recomputed the gradients of all seven, reading ~100 arrays. `optimization_barrier` left
    the CPU fusions as they were (tried), so the gradient goes through a while loop instead, whose trip count (1, or 0
    for a NaN) and added zero are runtime values: XLA can neither remove nor fuse across it. The gradient's values
    are unchanged (a zero is added). coatnet_0's forward + backward ran 1.05-1.19x faster with it at 64 px and at
    224 px, batch 8, 0.98x at 224 px, batch 16 (`benchmarks/conv_kernels.py --residual-gradients`).
    """
    return x


def _boundary_forward(x):
    first = jnp.reshape(x, (-1,))[0]
    zero = jnp.where(jnp.isfinite(first), first * 0, 0).astype(x.dtype)
    return x, (jnp.where(jnp.isnan(first), 0, 1), zero)


def _boundary_backward(residuals, grad):
    trips, zero = residuals
    return (lax.while_loop(lambda state: state[0] < trips, lambda state: (state[0] + 1, state[1] + zero),
                           (jnp.zeros_like(trips), grad))[1],)


gradient_boundary.defvjp(_boundary_forward, _boundary_backward)


def cpu_rewrites() -> bool:
    """Whether layers made now (`PointwiseConv2D`, `PatchGradientConv2D`, `ShiftedDepthwiseConv2D`,
    `FusedBatchNormalization`, `ResidualAdd`) run their rewritten computation rather than their Keras base class's,
    and whether a CoAtNet attention built now adds the bias with `add_attention_bias` and takes the softmax's
    weighted values with `softmax_weighted_values`.

    The rewrites were measured faster only on XLA's CPU backend (benchmarks/README.md); on an accelerator cuDNN's
    kernels are the known quantity. `ICH_KERAS_CONV_IMPL=auto|standard|rewritten` overrides the choice
    ("auto": rewritten on the JAX CPU backend). Either way the layers have the same classes, names and weights.
    """
    choice = os.environ.get(CONV_IMPL_ENV, "auto").strip().lower() or "auto"
    if choice not in CONV_IMPLS:
        raise UserError(f"{CONV_IMPL_ENV} must be one of {', '.join(CONV_IMPLS)}. "
                        f"Received: {CONV_IMPL_ENV}={os.environ[CONV_IMPL_ENV]!r}")
    if choice == "auto":
        if keras.backend.backend() != "jax":
            return False
        return jax.default_backend() == "cpu"
    return choice == "rewritten"


@contextlib.contextmanager
def standard_layers_unless_chosen():
    """Layers made inside compute as their Keras base classes, unless `ICH_KERAS_CONV_IMPL` names a choice: for an
    export, which runs in TensorFlow, TFLite or onnxruntime rather than on the XLA CPU kernels the rewrites were
    measured on (`benchmarks/export_layers.py`). The weights and layer names are the same either way."""
    chosen = os.environ.get(CONV_IMPL_ENV)
    if chosen is not None and chosen.strip().lower() not in ("", "auto"):
        yield
        return
    os.environ[CONV_IMPL_ENV] = "standard"
    try:
        yield
    finally:
        if chosen is None:
            del os.environ[CONV_IMPL_ENV]
        else:
            os.environ[CONV_IMPL_ENV] = chosen
