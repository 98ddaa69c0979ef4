"""Significance against the best single checkpoint: McNemar's exact test, the paired bootstrap, a fair baseline."""

import numpy as np
import pytest
from scipy.stats import binomtest

from ich_keras.ranking import ranked
from ich_keras.ranking import best as best_single
from ich_keras.soups.significance import compare, mcnemar_exact, paired_bootstrap


def pairs(only_method: int, only_baseline: int, both: int = 3, neither: int = 2):
    """Correct vectors with the given numbers of discordant and concordant images."""
    method = [1] * only_method + [0] * only_baseline + [1] * both + [0] * neither
    baseline = [0] * only_method + [1] * only_baseline + [1] * both + [0] * neither
    return np.array(method, bool), np.array(baseline, bool)


def test_mcnemar_by_hand():
    # 5 images only the method gets right, none only the baseline: p = 2 (1/2)^5
    assert mcnemar_exact(*pairs(5, 0)) == {"only_method": 5, "only_baseline": 0, "p_value": 0.0625}
    assert mcnemar_exact(*pairs(0, 0))["p_value"] == 1.0  # no discordant pair: no evidence either way
    assert mcnemar_exact(*pairs(4, 4))["p_value"] == 1.0


# 30,000 discordant images: the sum of binomial coefficients in Python integers took a minute.
@pytest.mark.parametrize("only_method, only_baseline", [(1, 0), (3, 9), (10, 2), (7, 8), (40, 61), (600, 540),
                                                       (15100, 14900)])
def test_mcnemar_matches_scipy_binomtest(only_method, only_baseline):
    expected = binomtest(min(only_method, only_baseline), only_method + only_baseline, 0.5).pvalue
    assert mcnemar_exact(*pairs(only_method, only_baseline))["p_value"] == pytest.approx(expected, rel=1e-12)


def test_paired_bootstrap_follows_its_formula():
    method, baseline = pairs(12, 2, both=60, neither=26)  # 100 images: difference (12 - 2) / 100
    result = paired_bootstrap(method, baseline, resamples=500, seed=3)
    diff = method.astype(int) - baseline.astype(int)
    means = diff[np.random.default_rng(3).integers(0, 100, (500, 100))].mean(axis=1)
    assert result["difference"] == pytest.approx(0.1)
    assert result["low"] == pytest.approx(np.percentile(means, 2.5))
    assert result["high"] == pytest.approx(np.percentile(means, 97.5))
    assert 0.0 < result["low"] < 0.1 < result["high"]
    assert paired_bootstrap(method, baseline, resamples=500, seed=3) == result  # seeded
    same = paired_bootstrap(method, method)
    assert (same["low"], same["high"]) == (0.0, 0.0)
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap(method, baseline[:-1])


def test_compare_scores_logits():
    labels = np.array([0, 1, 1, 0])
    method = np.eye(2)[[0, 1, 1, 1]]  # 3 right
    baseline = np.eye(2)[[1, 0, 1, 0]]  # 2 right; only the method: images 0, 1; only the baseline: image 3
    result = compare(labels, method, baseline, resamples=100)
    assert result["bootstrap"]["difference"] == pytest.approx(0.25)
    assert (result["mcnemar"]["only_method"], result["mcnemar"]["only_baseline"]) == (2, 1)


def test_best_single_breaks_ties_by_val_loss():
    val = [{"accuracy": 0.8, "loss": 0.9}, {"accuracy": 0.9, "loss": 0.7}, {"accuracy": 0.9, "loss": 0.5},
           {"accuracy": 0.9, "loss": 0.5}]
    assert best_single(val, "accuracy") == 2  # epochs 1 and 2 tie on accuracy; 2 has the lower loss; then order
    assert best_single(val, "loss") == 2
    assert best_single(val[:2], "accuracy") == 1
    with pytest.raises(ValueError, match="metric must be one of"):
        best_single(val, "auc")
    assert ranked(val, "accuracy") == [2, 3, 1, 0]
