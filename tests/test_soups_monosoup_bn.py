"""MonoSoup against its formulas on a hand-checkable layer, and BatchNorm recalibration against numpy."""

import math

import numpy as np
import pytest
from soup_fixtures import linear_model

from ich_keras import soups
from ich_keras.soups.monosoup import select_rank

# delta = W1 - W0 = diag(10, 1, 0.5, 0.1) in the (1x1 conv) kernel read as a 4x4 matrix
S = np.array([10.0, 1.0, 0.5, 0.1])


def _weights(kernel, bias, head):
    return {"layers/conv2d/vars/0": kernel.reshape(1, 1, 4, 4).astype("float32"),
            "layers/conv2d/vars/1": bias.astype("float32"), "layers/dense/vars/0": head.astype("float32")}


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    w0 = _weights(rng.normal(size=(4, 4)), rng.normal(size=4), rng.normal(size=(4, 1000)))  # pretrained head
    w1 = _weights(w0["layers/conv2d/vars/0"].reshape(4, 4) + np.diag(S), rng.normal(size=4), rng.normal(size=(4, 3)))
    return w0, w1


def test_rank_rules_by_hand():
    energy = S**2 / (S**2).sum()  # [0.98756, 0.00988, 0.00247, 0.0001]
    assert energy[0] < 0.99 < energy[:2].sum()
    assert select_rank(S, "variance", R=0.9) == 1
    assert select_rank(S, "variance", R=0.99) == 2
    assert select_rank(S, "variance", R=1.0) == 4
    p = S / S.sum()
    assert math.exp(-(p * np.log(p)).sum()) == pytest.approx(1.6749, abs=1e-4)  # effective rank -> ceil = 2
    assert select_rank(S, "vetterli") == 2
    assert select_rank(np.ones(5), "vetterli") == 5  # exp(log 5) = 5 exactly, not 6 by rounding


@pytest.mark.parametrize("rule, R, k", [("variance", 0.9, 1), ("vetterli", None, 2)])
def test_monosoup_matches_the_formulas(pair, rule, R, k):
    w0, w1 = pair
    soup, report = soups.monosoup(w0, w1, rule=rule, R=R or 0.9)
    energy = S**2
    P_k = energy[:k].sum() / energy.sum()
    rho = (S[k] / S[0]) ** 2
    lambda_low = rho + (1 - rho) * math.sqrt(1 - P_k)
    lambda_high = 1 - lambda_low
    high, low = np.diag(np.where(np.arange(4) < k, S, 0)), np.diag(np.where(np.arange(4) >= k, S, 0))
    expected = w0["layers/conv2d/vars/0"].reshape(4, 4) + lambda_high * high + lambda_low * low
    np.testing.assert_allclose(soup["layers/conv2d/vars/0"].reshape(4, 4), expected, atol=1e-5)
    stats = report["layers"]["layers/conv2d/vars/0"]
    assert stats["k"] == k and stats["rank"] == 4 and stats["matrix"] == [4, 4]
    assert stats["P_k"] == pytest.approx(P_k) and stats["rho"] == pytest.approx(rho)
    assert stats["lambda_low"] == pytest.approx(lambda_low) and stats["lambda_high"] == pytest.approx(lambda_high)
    # 1-D parameters and the new head (no pretrained counterpart of that shape) come from W1
    np.testing.assert_array_equal(soup["layers/conv2d/vars/1"], w1["layers/conv2d/vars/1"])
    np.testing.assert_array_equal(soup["layers/dense/vars/0"], w1["layers/dense/vars/0"])
    assert report["no_pretrained_counterpart"] == ["layers/dense/vars/0"]


def test_full_rank_keeps_the_finetuned_weights(pair):
    w0, w1 = pair
    soup, report = soups.monosoup(w0, w1, rule="variance", R=1.0)
    assert report["layers"]["layers/conv2d/vars/0"]["rho"] == 0.0
    np.testing.assert_allclose(soup["layers/conv2d/vars/0"], w1["layers/conv2d/vars/0"], atol=1e-6)


def test_monosoup_rejects_unknown_rule_and_R(pair):
    w0, w1 = pair
    with pytest.raises(ValueError, match=r"Received: rule='median'"):
        soups.monosoup(w0, w1, rule="median")
    with pytest.raises(ValueError, match=r"Received: R=1.5"):
        soups.monosoup(w0, w1, rule="variance", R=1.5)


def test_bn_recalibration_moves_statistics_to_the_data(tmp_path):
    model = linear_model(num_features=4, num_classes=2, batchnorm_momentum=0.9)
    soup = soups.read(model)  # moving mean 0, variance 1
    rng = np.random.default_rng(0)
    images = (rng.normal(size=(64, 4)) * [1, 2, 3, 4] + [5, -5, 0, 10]).astype("float32")
    data = soups.batched(images, np.zeros(64, int), 16) + [(images[:3], np.zeros(3))]  # short batch: skipped
    recalibrated, info = soups.recalibrate_bn(soup, model, data)
    assert info == {"layers": 1, "batches": 4}
    from_file, _ = soups.recalibrate_bn(soups.save(soup, tmp_path / "soup.weights.h5"), model, data)  # or its file
    np.testing.assert_array_equal(from_file.flat, recalibrated.flat)
    batches = images.reshape(4, 16, 4)
    np.testing.assert_allclose(recalibrated["layers/batch_normalization/vars/2"], batches.mean(1).mean(0), rtol=1e-4,
                               atol=1e-4)
    np.testing.assert_allclose(recalibrated["layers/batch_normalization/vars/3"], batches.var(1).mean(0), rtol=1e-4)
    # only the statistics change
    np.testing.assert_array_equal(recalibrated["layers/dense/vars/0"], soup["layers/dense/vars/0"])
    np.testing.assert_array_equal(recalibrated["layers/batch_normalization/vars/0"],
                                  soup["layers/batch_normalization/vars/0"])


def test_bn_recalibration_needs_batchnorm():
    model = linear_model(num_features=4, num_classes=2)
    with pytest.raises(ValueError, match=r"no trainable BatchNormalization.*Received: 'linear'"):
        soups.recalibrate_bn(soups.read(model), model, [(np.zeros((2, 4)), np.zeros(2))])
