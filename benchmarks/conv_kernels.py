"""XLA on CPU: a 1x1 convolution against the same matmul, and a 3x3 depthwise convolution against shifted sums.

    python benchmarks/conv_kernels.py

Forward + backward (gradients for input and kernel) of each form, jitted, in one process, best of 10 calls, at
shapes CoAtNet-0 meets (batch 8). These are the measurements behind `PointwiseConv2D` and `ShiftedDepthwiseConv2D`.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

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


def best_ms(fn, x, w, calls: int = 10) -> float:
    grad = jax.jit(jax.grad(lambda x, w: jnp.sum(fn(x, w) ** 2), argnums=(0, 1)))
    jax.block_until_ready(grad(x, w))
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        jax.block_until_ready(grad(x, w))
        times.append(time.perf_counter() - start)
    return min(times) * 1000


def main() -> None:
    rng = np.random.default_rng(0)
    print("| kernel | input (B, H, W, C) | out channels | standard form (ms) | rewritten (ms) | speed-up |")
    print("|---|---|---:|---:|---:|---:|")
    for (height, channels, out) in [(2, 768, 3072), (2, 3072, 768), (7, 768, 3072), (16, 96, 384), (56, 96, 384)]:
        x = jnp.asarray(rng.standard_normal((8, height, height, channels)), "float32")
        w = jnp.asarray(rng.standard_normal((1, 1, channels, out)), "float32")
        a, b = best_ms(pointwise_conv, x, w), best_ms(pointwise_matmul, x, w)
        print(f"| 1x1 conv → matmul | (8, {height}, {height}, {channels}) | {out} | {a:.2f} | {b:.2f} | {a / b:.1f}x |",
              flush=True)
    for (height, channels) in [(16, 384), (56, 384)]:
        x = jnp.asarray(rng.standard_normal((8, height, height, channels)), "float32")
        w = jnp.asarray(rng.standard_normal((3, 3, 1, channels)), "float32")
        a, b = best_ms(depthwise_conv, x, w), best_ms(depthwise_shifted, x, w)
        print(f"| 3x3 depthwise → shifted sums | (8, {height}, {height}, {channels}) | {channels} | {a:.2f} | "
              f"{b:.2f} | {a / b:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
