"""Greedy placement of point labels so that they overlap neither each other nor the points (MDS figure).

Pure geometry in display pixels: each label, in the order given, takes the nearest candidate position around its
point (8 directions at growing distances) that collides with nothing placed so far; when every candidate collides,
the one with the least overlap. A caller draws a leader line for labels pushed away from their point.
"""

from __future__ import annotations

import numpy as np

# Right, upper right, lower right, up, down, left, upper left, lower left: text reads left to right, so a label
# right of its point is the most natural.
DIRECTIONS = np.array([(1, 0), (1, 1), (1, -1), (0, 1), (0, -1), (-1, 0), (-1, 1), (-1, -1)], dtype=float)
RADII = (4.0, 12.0, 24.0, 40.0, 60.0, 85.0, 115.0, 150.0)


def _overlap(box, boxes) -> float:
    """Total area of `box` (x0, y0, x1, y1) shared with each of `boxes` ((n, 4))."""
    if len(boxes) == 0:
        return 0.0
    boxes = np.asarray(boxes)
    width = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    height = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    return float((width * height).sum())


def _outside(box, bounds) -> float:
    """Area of `box` outside `bounds` (x0, y0, x1, y1); 0 when no bounds."""
    if bounds is None:
        return 0.0
    inside_w = max(0.0, min(box[2], bounds[2]) - max(box[0], bounds[0]))
    inside_h = max(0.0, min(box[3], bounds[3]) - max(box[1], bounds[1]))
    return float((box[2] - box[0]) * (box[3] - box[1]) - inside_w * inside_h)


def place_labels(anchors, sizes, obstacles=(), bounds=None, radii=RADII) -> np.ndarray:
    """Centres for labels beside their points such that, where room allows, no two labels and no label and
    obstacle overlap.

    Args:
        anchors: (M, 2) points in display pixels, in priority order (earlier labels get the better places).
        sizes: (M, 2) label widths and heights in pixels.
        obstacles: (P, 4) boxes (x0, y0, x1, y1) labels must avoid, e.g. the markers.
        bounds: (x0, y0, x1, y1) the labels should stay inside, or None.
        radii: gaps in pixels between a point and its label's nearest edge, tried in order.

    Returns:
        (M, 2) label centres in pixels.
    """
    anchors, sizes = np.asarray(anchors, float), np.asarray(sizes, float)
    if anchors.shape != sizes.shape or anchors.ndim != 2 or anchors.shape[1] != 2:
        raise ValueError(f"anchors and sizes must both be (M, 2). Received: anchors.shape={anchors.shape}, "
                         f"sizes.shape={sizes.shape}")
    blocked = [tuple(b) for b in np.asarray(obstacles, float).reshape(-1, 4)]
    centres = np.zeros_like(anchors)
    for i, ((x, y), (w, h)) in enumerate(zip(anchors, sizes)):
        best, best_cost = None, np.inf
        for radius in radii:
            for dx, dy in DIRECTIONS:
                # The label's nearest edge (or corner, diagonally) sits `radius` from the point.
                cx, cy = x + dx * (radius + w / 2), y + dy * (radius + h / 2)
                box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
                cost = _overlap(box, blocked) + 4 * _outside(box, bounds)
                if cost < best_cost:
                    best, best_cost = (cx, cy), cost
                if cost == 0:
                    break
            if best_cost == 0:
                break
        centres[i] = best
        blocked.append((best[0] - w / 2, best[1] - h / 2, best[0] + w / 2, best[1] + h / 2))
    return centres
