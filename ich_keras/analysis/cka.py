"""Linear centred kernel alignment (Kornblith et al. 2019), as MonoSoup reports it between block outputs.

For features X (n, d1) and Y (n, d2) of the same n examples, with every column centred to mean 0:

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)

It lies in [0, 1], is 1 for identical representations, and is invariant to orthogonal transforms and isotropic
scaling of either side (not to arbitrary invertible linear maps).
"""

from __future__ import annotations

import numpy as np


def _centred(features, name: str) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim < 2:
        raise ValueError(f"Expected {name} of shape (n, ...) with features after the first axis. "
                         f"Received: shape={features.shape}")
    flat = features.reshape(features.shape[0], -1)  # (n, H, W, C) feature maps -> (n, H*W*C)
    return flat - flat.mean(axis=0, keepdims=True)


def linear_cka(x, y) -> float:
    """Linear CKA between two representations of the same examples.

    Args:
        x: (n, ...) features of model A (trailing axes are flattened).
        y: (n, ...) features of model B.

    Returns:
        CKA in [0, 1]; 0 when either representation is constant over the examples.
    """
    x, y = _centred(x, "x"), _centred(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must hold the same examples. Received: {x.shape[0]} and {y.shape[0]} rows")
    n, d1, d2 = x.shape[0], x.shape[1], y.shape[1]
    if d1 * d2 <= n * n:
        # Feature space: (d2, d1) cross-covariance, cheaper when features are few.
        cross = np.sum((y.T @ x) ** 2)
        norm_x, norm_y = np.linalg.norm(x.T @ x), np.linalg.norm(y.T @ y)
    else:
        # Example space: ||Y^T X||_F^2 = <X X^T, Y Y^T>_F with (n, n) Gram matrices, cheaper for wide maps.
        gram_x, gram_y = x @ x.T, y @ y.T
        cross = np.sum(gram_x * gram_y)
        norm_x, norm_y = np.linalg.norm(gram_x), np.linalg.norm(gram_y)
    if norm_x == 0 or norm_y == 0:
        return 0.0
    return float(cross / (norm_x * norm_y))
