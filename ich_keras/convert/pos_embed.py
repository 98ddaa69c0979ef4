"""Resampling ViT's absolute position embeddings to another patch grid, the way timm does when it loads weights.

timm's ViT `checkpoint_filter_fn` (`timm.layers.pos_embed.resample_abs_pos_embed`) keeps the class token's
embedding, lays the others out on their square grid and resizes it with torch's antialiased bicubic interpolation
(`F.interpolate(mode="bicubic", antialias=True)`). Per axis, each output sample is a normalised weighted sum of the
inputs within 2 of its centre (2 x the scale when shrinking, where the kernel is stretched as wide), under Keys'
cubic kernel with a = -0.5, PIL's choice, not the -0.75 of torch's bicubic without antialiasing.
"""

from __future__ import annotations

import math

import numpy as np

from ich_keras.errors import UserError

PREFIX_TOKENS = 1  # the class token, whose embedding is kept as it is


def _keys_cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def antialiased_bicubic_weights(source: int, target: int) -> np.ndarray:
    """(target, source) matrix whose row i weights the source samples of output sample i (torch's
    `_compute_weights_aa` for bicubic, align_corners=False)."""
    scale = source / target
    stretch = max(scale, 1.0)
    weights = np.zeros((target, source))
    for i in range(target):
        centre = scale * (i + 0.5)
        # int() truncates towards zero, as the C++ cast does; max() then clamps at the first sample.
        first = max(int(centre - 2 * stretch + 0.5), 0)
        last = min(int(centre + 2 * stretch + 0.5), source)
        row = _keys_cubic((np.arange(first, last) - centre + 0.5) / stretch)
        weights[i, first:last] = row / row.sum() if row.sum() else row
    return weights


def resample_abs_pos_embed(pos_embed: np.ndarray, grid: int) -> np.ndarray:
    """timm's (1, 1 + g*g, D) position embedding for a `grid` x `grid` patch grid: (1, 1 + grid*grid, D) float32;
    the input itself when its grid already matches."""
    patches = pos_embed.shape[1] - PREFIX_TOKENS if pos_embed.ndim == 3 else 0
    source = math.isqrt(max(patches, 0))
    if patches < 1 or source * source != patches:
        raise UserError(f"pos_embed is not (1, 1 + g*g, D), one class token and a square patch grid: the "
                        f"checkpoint is of another ViT. Received: pos_embed.shape={tuple(pos_embed.shape)}")
    if source == grid:
        return pos_embed
    prefix, tokens = pos_embed[:, :PREFIX_TOKENS], pos_embed[:, PREFIX_TOKENS:]
    weights = antialiased_bicubic_weights(source, grid)
    plane = tokens.reshape(source, source, -1).astype(np.float64)
    resized = np.einsum("ij,kjd->kid", weights, plane)  # along the width
    resized = np.einsum("ik,kjd->ijd", weights, resized)  # then the height
    return np.concatenate([prefix, resized.reshape(1, grid * grid, -1)], axis=1).astype(np.float32)
