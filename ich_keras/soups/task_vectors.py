"""Task-vector merges from a pretrained W0: task arithmetic, TIES and DARE.

A fine-tune's task vector is tau_i = W_i - W0. With N fine-tunes and a scale lambda:

    task arithmetic   W = W0 + lambda sum_i tau_i
    TIES              trim: keep the ceil(density * size) largest |tau_i| of each tensor (ties at the threshold
                      kept), zero the rest; elect: gamma = sign(sum_i trimmed tau_i); disjoint mean: the mean of
                      the trimmed tau_i whose sign is gamma (0 where none agrees); W = W0 + lambda merged
    DARE              each entry of each tau_i is dropped with probability `rate` and the rest scaled by
                      1 / (1 - rate), seeded per (seed, ingredient, variable key); W = W0 + lambda sum_i dare(tau_i)

lambda defaults to 1/N for task arithmetic and DARE (the mean task vector: task arithmetic is then the uniform
soup) and to 1 for TIES (its disjoint mean is already a mean). TIES trims per tensor, as mergekit does (the TIES
paper's code trims over the whole flattened model). A variable W0 lacks or holds with another shape (a new head)
has no task vector and is averaged uniformly in every method, as are BatchNorm's running statistics
(`per_tensor.pretrained_counterparts` says why).

Memory: task arithmetic streams one ingredient window at a time through the jitted running mean (it is linear:
W0 + lambda N (mean - W0)); TIES and DARE stream tensor by tensor, holding the N copies of one tensor.
"""

from __future__ import annotations

import math
import zlib

import numpy as np

from ich_keras.errors import UserError
from ich_keras.soups.averaging import running_mean
from ich_keras.soups.per_tensor import averaged_uniformly, merge_per_tensor, pretrained_counterparts, read_variable
from ich_keras.weight_files import WeightSet, as_source, as_sources, empty_flat


def check_density(density: float) -> None:
    if not 0.0 < density <= 1.0:
        raise UserError(f"The TIES density must lie in (0, 1]. Received: ties_density={density}")


def check_rate(rate: float) -> None:
    if not 0.0 <= rate < 1.0:
        raise UserError(f"The DARE drop rate must lie in [0, 1). Received: dare_rate={rate}")


def default_scale(lam: float | None, n: int) -> float:
    """lambda, or 1/N when not given."""
    return 1.0 / n if lam is None else float(lam)


def task_arithmetic(ingredients, pretrained, lam: float | None = None, progress: bool = False
                    ) -> tuple[WeightSet, dict]:
    """W0 + lambda sum_i (W_i - W0), streaming: the jitted running mean of the ingredients, then one pass with W0.

    Args:
        ingredients: the fine-tunes (`.weights.h5` paths, Keras models, `WeightSet`s or dicts).
        pretrained: W0; may have another head.
        lam: the scale lambda (default 1/N, which gives the uniform soup).
        progress: a progress bar over ingredients.

    Returns:
        (the soup, {"lambda": lambda, "new_head": [keys averaged uniformly], "running_statistics": count}).
    """
    sources = as_sources(ingredients)
    n, lam = len(sources), default_scale(lam, len(sources))
    mean = running_mean(sources, progress=progress)
    base = as_source(pretrained)
    matched = pretrained_counterparts(mean.layout, base)
    flat = empty_flat(mean.layout.size)
    flat[:] = np.asarray(mean.flat)
    buffer = empty_flat(max((v.size for v in matched.values()), default=0))
    with base.open(base.layout()) as handle:
        for key, w0_var in matched.items():
            v = mean.layout.by_key[key]
            soup = flat[v.offset:v.offset + v.size]
            w0 = read_variable(handle, w0_var, buffer, base.name)
            # sum_i (W_i - W0) = N (mean - W0), in float64 so a small lambda N (mean - W0) keeps its digits
            soup[:] = w0 + lam * n * (soup.astype(np.float64) - w0)
    uniform = [v.key for v in mean.layout.variables if v.is_float and v.key not in matched]
    return WeightSet(mean.layout, flat, mean.others), {"lambda": lam, **averaged_uniformly(mean.layout, uniform)}


def trim(tau: np.ndarray, density: float) -> np.ndarray:
    """tau with all but its ceil(density * size) largest magnitudes zeroed (values tied at the threshold kept)."""
    k = math.ceil(density * tau.size)
    if k >= tau.size:
        return tau.copy()
    magnitude = np.abs(tau)
    threshold = np.partition(magnitude, tau.size - k)[tau.size - k]  # the k-th largest magnitude
    return np.where(magnitude >= threshold, tau, 0.0).astype(tau.dtype)


def ties_tensor(w0: np.ndarray, stack: np.ndarray, density: float, lam: float) -> tuple[np.ndarray, dict]:
    """TIES of one tensor.

    Args:
        w0: (size,) pretrained values.
        stack: (N, size) the fine-tunes' values.
        density: the fraction of each task vector kept, in (0, 1].
        lam: the scale of the merged task vector.

    Returns:
        ((size,) float32 merged values, {"agreeing": mean number of task vectors in each entry's disjoint mean}).
    """
    trimmed = np.stack([trim(row - w0, density) for row in stack])  # (N, size)
    elected = np.sign(trimmed.sum(axis=0, dtype=np.float64))  # (size,)
    agree = (np.sign(trimmed) == elected) & (elected != 0)  # (N, size); a zero never agrees
    count = agree.sum(axis=0)
    total = np.where(agree, trimmed, 0.0).sum(axis=0, dtype=np.float64)
    merged = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    return (w0 + lam * merged).astype(np.float32), {"agreeing": float(count.mean())}


def ties(ingredients, pretrained, density: float = 0.2, lam: float = 1.0) -> tuple[WeightSet, dict]:
    """TIES-merging (Yadav et al., 2023): trim, elect sign, disjoint mean, per tensor.

    Streams tensor by tensor, holding the N copies of one tensor (the sign election needs them all).

    Args:
        ingredients: the fine-tunes; pretrained: W0 (may have another head).
        density: the fraction of each task vector's entries kept per tensor (the paper's k, as a fraction).
        lam: the scale of the merged task vector.

    Returns:
        (the soup, {"density", "lambda", "layers": {key: {"label", "agreeing"}}, "new_head": [keys],
        "running_statistics": count}).
    """
    check_density(density)
    weights, report = merge_per_tensor(
        ingredients, lambda v, w0, stack: ties_tensor(w0, stack, density, lam), pretrained)
    return weights, {"density": density, "lambda": lam, **report}


def drop_and_rescale(tau: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """DARE on one task vector: each entry zeroed with probability `rate`, the kept ones divided by 1 - rate."""
    keep = rng.random(tau.shape) >= rate
    return np.where(keep, tau / (1.0 - rate), 0.0).astype(tau.dtype)


def dare_rng(seed: int, ingredient: int, key: str) -> np.random.Generator:
    """The generator for one ingredient's variable: the same masks whatever the order variables are read in."""
    return np.random.default_rng([seed, ingredient, zlib.crc32(key.encode())])


def dare(ingredients, pretrained, rate: float = 0.5, seed: int = 0, lam: float | None = None
         ) -> tuple[WeightSet, dict]:
    """DARE (Yu et al., 2024) combined with task arithmetic: W0 + lambda sum_i drop_and_rescale(tau_i).

    Streams tensor by tensor, holding the N copies of one tensor.

    Args:
        ingredients: the fine-tunes; pretrained: W0 (may have another head).
        rate: the drop probability p, in [0, 1).
        seed: seeds the masks (see `dare_rng`).
        lam: the scale (default 1/N: a DARE'd mean task vector).

    Returns:
        (the soup, {"rate", "seed", "lambda", "new_head": [keys averaged uniformly], "running_statistics": count}).
    """
    check_rate(rate)
    lam = default_scale(lam, len(as_sources(ingredients)))

    def merge(v, w0, stack):
        taus = [drop_and_rescale(row - w0, rate, dare_rng(seed, i, v.key)) for i, row in enumerate(stack)]
        return (w0 + lam * np.sum(taus, axis=0, dtype=np.float64)).astype(np.float32), None

    weights, report = merge_per_tensor(ingredients, merge, pretrained)
    return weights, {"rate": rate, "seed": seed, "lambda": lam, "new_head": report["new_head"],
                     "running_statistics": report["running_statistics"]}
