"""Model Stock (Jang et al., 2024): how far to move from W0 towards the fine-tunes' mean, per weight tensor.

With W0 the pretrained weights, N fine-tunes W_1..W_N and their offsets d_i = W_i - W0, per tensor:

    cos   = mean over pairs i < j of <d_i, d_j> / (|d_i| |d_j|)
    t     = N cos / (1 + (N - 1) cos)
    W     = t mean(W_i) + (1 - t) W0

"Per layer" is read as per weight tensor (a kernel and its bias get their own t), as the authors' code does
(`compute_angle` walks the state dict key by key). A tensor W0 lacks or holds with another shape (a new head) is
averaged uniformly (t = 1). Where the offsets disagree (cos < 0) the paper's derivation does not hold and t would
be negative or unbounded (the denominator vanishes at cos = -1/(N-1)); cos is clipped at 0 there, so t = 0 and
the tensor stays at W0. A zero offset counts as cosine 0 with anything (the pair has no angle).
"""

from __future__ import annotations

import numpy as np

from ich_keras.soups.per_tensor import merge_per_tensor
from ich_keras.weight_files import WeightSet


def mean_pairwise_cosine(offsets: np.ndarray) -> float:
    """Mean cosine over the N (N - 1) / 2 pairs of rows of `offsets` (N, size); a zero row has cosine 0."""
    d = np.asarray(offsets, np.float64)
    gram = d @ d.T  # (N, N)
    norms = np.sqrt(np.diag(gram))
    scale = np.outer(norms, norms)
    cosines = np.divide(gram, scale, out=np.zeros_like(gram), where=scale > 0)
    upper = np.triu_indices(len(d), k=1)
    return float(np.clip(cosines[upper].mean(), -1.0, 1.0))


def interpolation_ratio(cos: float, n: int) -> float:
    """t = N cos / (1 + (N - 1) cos), with cos clipped to [0, 1] (see the module docstring)."""
    cos = min(max(cos, 0.0), 1.0)
    return n * cos / (1.0 + (n - 1) * cos)


def model_stock_tensor(w0: np.ndarray, stack: np.ndarray) -> tuple[np.ndarray, dict]:
    """Model Stock of one tensor.

    Args:
        w0: (size,) pretrained values.
        stack: (N, size) the fine-tunes' values, N >= 2.

    Returns:
        ((size,) float32 merged values, {"cos": mean pairwise cosine, "t": ratio}).
    """
    n = stack.shape[0]
    cos = mean_pairwise_cosine(stack - w0)
    t = interpolation_ratio(cos, n)
    merged = t * stack.mean(axis=0, dtype=np.float64) + (1.0 - t) * w0
    return merged.astype(np.float32), {"cos": cos, "t": t}


def model_stock(ingredients, pretrained) -> tuple[WeightSet, dict]:
    """Model Stock of N >= 2 fine-tunes of one pretrained model.

    Streams tensor by tensor (`per_tensor.merge_per_tensor`): it holds the soup plus the N copies of one tensor,
    never N models.

    Args:
        ingredients: the fine-tunes (`.weights.h5` paths, Keras models, `WeightSet`s or dicts), N >= 2.
        pretrained: W0, the weights they were all fine-tuned from; may have another head.

    Returns:
        (the soup, {"layers": {key: {"label", "cos", "t"}}, "new_head": [keys averaged uniformly],
        "running_statistics": count}).
    """
    return merge_per_tensor(ingredients, lambda v, w0, stack: model_stock_tensor(w0, stack), pretrained,
                            min_ingredients=2)
