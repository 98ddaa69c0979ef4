"""Resizing relative-position bias tables to another feature-map size, the way timm does when it loads weights.

timm (`timm.layers.pos_embed_rel.resize_rel_pos_bias_table`, without scipy) places the source table's rows on a
geometric progression of offsets, wider apart towards the edges (BEiT's scheme), and linearly interpolates the
target's integer offsets on that uneven grid, each head and axis independently.
"""

from __future__ import annotations

import numpy as np


def _source_offsets(source: int, target: int) -> np.ndarray:
    """The offsets timm assigns to the `source` rows of one axis when resampling it to `target` rows."""
    half_target = target // 2
    left, right = 1.01, 1.5
    while right - left > 1e-6:  # bisect the ratio whose geometric series spans the target's half width
        ratio = (left + right) / 2.0
        if (1.0 - ratio ** (source // 2)) / (1.0 - ratio) > half_target:
            right = ratio
        else:
            left = ratio
    distances, current = [], 1.0
    for i in range(source // 2):
        distances.append(current)
        current += ratio ** (i + 1)
    return np.array([-d for d in reversed(distances)] + [0.0] + distances)


def resize_rel_pos_table(table: np.ndarray, new_feature_size: int) -> np.ndarray:
    """Resizes a square ((2s-1)^2, heads) table to ((2t-1)^2, heads) for a t x t feature map.

    Args:
        table: (rows, heads) table of a square feature map; rows must be an odd square.
        new_feature_size: side t of the new feature map.

    Returns:
        The resized table (float32); the input itself when the size already matches.
    """
    rows, heads = table.shape
    source = int(round(rows**0.5))
    if source * source != rows or source % 2 == 0:
        raise ValueError(
            f"A relative-position table of a square map has (2s-1)^2 rows. Received: table.shape={table.shape}"
        )
    target = 2 * new_feature_size - 1
    if source == target:
        return table
    offsets = _source_offsets(source, target)
    grid = np.arange(-(target // 2), target // 2 + 0.1, 1.0)
    # Separable linear interpolation (np.interp clamps at the ends, as timm's interpolator does).
    planes = table.astype(np.float64).T.reshape(heads, source, source)
    along_rows = np.stack([[np.interp(grid, offsets, plane[:, c]) for c in range(source)] for plane in planes])
    # along_rows: (heads, source cols, target rows)
    resized = np.stack([[np.interp(grid, offsets, row) for row in plane.T] for plane in along_rows])
    # resized: (heads, target rows, target cols)
    return resized.reshape(heads, -1).T.astype(np.float32)
