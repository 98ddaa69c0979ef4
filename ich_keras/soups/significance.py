"""Is a soup's gain over the best single checkpoint more than the luck of the test set? Pure functions of arrays.

Two classifiers scored on the same n test images give two (n,) boolean "correct" vectors. The paired bootstrap
resamples images (with replacement, seeded) and reads the 2.5 and 97.5 percentiles of the accuracy difference;
McNemar's exact test asks whether the images only one of them gets right split more unevenly than a fair coin
would (two-sided binomial test on the discordant pairs). On 359 test images one image is 0.28 points, so a
"+0.5" is two images: these say so.
"""

from __future__ import annotations

import numpy as np
import scipy.stats

from ich_keras.errors import UserError


def paired_bootstrap(correct: np.ndarray, baseline: np.ndarray, resamples: int = 2000, seed: int = 0,
                     level: float = 0.95) -> dict:
    """Percentile bootstrap interval of accuracy(correct) - accuracy(baseline), resampling images in pairs.

    Args:
        correct: (n,) bool, whether the method got each image right.
        baseline: (n,) bool, the same for the baseline, on the same images in the same order.
        resamples: bootstrap resamples.
        seed: seeds the resampling.
        level: the interval's coverage.

    Returns:
        {"difference": the observed difference, "low", "high": the interval's ends, "resamples", "seed", "level"}
        (fractions, not percent).
    """
    a, b = _pair(correct, baseline)
    if resamples < 1 or not 0.0 < level < 1.0:
        raise UserError(f"Expected resamples >= 1 and 0 < level < 1. Received: resamples={resamples}, "
                        f"level={level}")
    diff = a.astype(np.int8) - b.astype(np.int8)  # (n,) in {-1, 0, 1}
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    step = max(1, (1 << 22) // max(len(diff), 1))  # about 4M indices (32 MiB) at a time
    for start in range(0, resamples, step):
        count = min(step, resamples - start)
        means[start:start + count] = diff[rng.integers(0, len(diff), (count, len(diff)))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return {"difference": float(diff.mean()), "low": float(low), "high": float(high), "resamples": resamples,
            "seed": seed, "level": level}


def mcnemar_exact(correct: np.ndarray, baseline: np.ndarray) -> dict:
    """McNemar's exact test: two-sided binomial p-value of the discordant pairs under p = 1/2.

    Args:
        correct, baseline: (n,) bool, as `paired_bootstrap`.

    Returns:
        {"only_method": images only the method gets right, "only_baseline": images only the baseline gets
        right, "p_value": min(1, 2 P(X <= min(b, c))) for X ~ Binomial(b + c, 1/2); 1 with no discordant pair}.
    """
    a, b = _pair(correct, baseline)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n, k = only_a + only_b, min(only_a, only_b)
    # The binomial's own tail (a regularised incomplete beta): a sum of binomial coefficients in Python integers
    # took a minute at 30,000 discordant images, per method.
    p = min(1.0, 2 * float(scipy.stats.binom.cdf(k, n, 0.5))) if n else 1.0
    return {"only_method": only_a, "only_baseline": only_b, "p_value": p}


def compare(labels, logits, baseline_logits, resamples: int = 2000, seed: int = 0) -> dict:
    """The paired bootstrap and McNemar test of a method against a baseline, from their logits on one split.

    Args:
        labels: (n,) int class indices.
        logits: (n, classes) the method's scores; baseline_logits: the baseline's, same images and order.
        resamples, seed: as `paired_bootstrap`.

    Returns:
        {"bootstrap": `paired_bootstrap`, "mcnemar": `mcnemar_exact`} (JSON-ready).
    """
    labels = np.asarray(labels).reshape(-1)
    correct = np.argmax(logits, axis=-1) == labels
    baseline = np.argmax(baseline_logits, axis=-1) == labels
    return {"bootstrap": paired_bootstrap(correct, baseline, resamples, seed), "mcnemar": mcnemar_exact(correct,
                                                                                                        baseline)}


def _pair(correct, baseline) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(correct, bool).reshape(-1), np.asarray(baseline, bool).reshape(-1)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"Expected two non-empty vectors over the same images. Received: shapes {a.shape} and "
                         f"{b.shape}")
    return a, b
