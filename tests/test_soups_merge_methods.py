"""Model Stock, task arithmetic, TIES, DARE and SLERP against their formulas on cases small enough to check by hand.

Weights are {key: array} dicts (the soups' in-memory source) with a 2-vector "body" the methods merge and a "head"
whose W0 has another class count; one test runs the same merges on real `.weights.h5` files of a Keras model.
"""

import keras
import numpy as np
import pytest
from soup_fixtures import conv_model, randomize

from ich_keras import soups
from ich_keras.soups.model_stock import interpolation_ratio, mean_pairwise_cosine
from ich_keras.soups.per_tensor import merge_per_tensor
from ich_keras.soups.slerp import slerp_tensor
from ich_keras.soups.task_vectors import dare_rng, trim

BODY, HEAD = "layers/body/vars/0", "layers/head/vars/0"
W0 = {BODY: np.array([1.0, 2.0], "float32"), HEAD: np.zeros((2, 5), "float32")}  # a 5-class head


def ingredient(body, head_value: float) -> dict:
    return {BODY: np.asarray(body, "float32"), HEAD: np.full((2, 3), head_value, "float32")}  # 3 classes


def test_model_stock_two_fine_tunes_by_hand():
    # offsets d1 = (1, 0), d2 = (0.6, 0.8): cos = 0.6, t = 2 * 0.6 / (1 + 0.6) = 0.75;
    # mean offset (0.8, 0.4), so W = W0 + 0.75 (0.8, 0.4) = (1.6, 2.3). The head has no W0: uniform mean 2.
    weights, report = soups.model_stock([ingredient([2.0, 2.0], 1.0), ingredient([1.6, 2.8], 3.0)], W0)
    np.testing.assert_allclose(weights[BODY], [1.6, 2.3], atol=1e-6)
    np.testing.assert_allclose(weights[HEAD], np.full((2, 3), 2.0))
    assert report["new_head"] == [HEAD]
    assert report["layers"][BODY]["cos"] == pytest.approx(0.6) and report["layers"][BODY]["t"] == pytest.approx(0.75)


def test_model_stock_three_fine_tunes_follow_the_formula():
    offsets = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # pairwise cosines 0, 1/sqrt(2), 1/sqrt(2)
    cos = (0 + 2 / np.sqrt(2)) / 3
    t = 3 * cos / (1 + 2 * cos)
    weights, report = soups.model_stock([ingredient(W0[BODY] + d, 0.0) for d in offsets], W0)
    np.testing.assert_allclose(weights[BODY], W0[BODY] + t * offsets.mean(axis=0), atol=1e-6)
    assert report["layers"][BODY]["t"] == pytest.approx(t)


def test_model_stock_stays_at_w0_when_offsets_disagree():
    # d1 = -d2: cos = -1, clipped to 0, so t = 0 (the formula's denominator would vanish)
    assert mean_pairwise_cosine(np.array([[1.0, 2.0], [-1.0, -2.0]])) == pytest.approx(-1.0)
    assert interpolation_ratio(-1.0, 2) == 0.0
    weights, _ = soups.model_stock([ingredient([2.0, 3.0], 0.0), ingredient([0.0, 1.0], 0.0)], W0)
    np.testing.assert_allclose(weights[BODY], W0[BODY])
    with pytest.raises(ValueError, match="at least 2 ingredients"):
        soups.model_stock([ingredient([2.0, 3.0], 0.0)], W0)


def test_task_arithmetic_by_hand():
    # tau1 = (1, 2), tau2 = (-1, 4): W0 + 0.25 (0, 6) = (1, 3.5); the default lambda 1/N is the uniform soup (1, 4)
    pair = [ingredient([2.0, 4.0], 1.0), ingredient([0.0, 6.0], 3.0)]
    weights, report = soups.task_arithmetic(pair, W0, lam=0.25)
    np.testing.assert_allclose(weights[BODY], [1.0, 3.5], atol=1e-6)
    np.testing.assert_allclose(weights[HEAD], np.full((2, 3), 2.0))
    assert report["new_head"] == [HEAD] and report["lambda"] == 0.25
    default, report = soups.task_arithmetic(pair, W0)
    np.testing.assert_allclose(default[BODY], soups.uniform(pair)[BODY], atol=1e-6)
    assert report["lambda"] == 0.5


def test_merges_of_a_model_that_is_all_new_head_are_its_uniform_mean():
    # Nothing has a counterpart in W0: task arithmetic failed on an empty max() where the others averaged.
    pair = [{HEAD: np.full((2, 3), 1.0, "float32")}, {HEAD: np.full((2, 3), 3.0, "float32")}]
    for merge in (soups.task_arithmetic, soups.ties, soups.model_stock):
        weights, report = merge(pair, {HEAD: W0[HEAD]})
        np.testing.assert_allclose(weights[HEAD], np.full((2, 3), 2.0), err_msg=merge.__name__)
        assert report["new_head"] == [HEAD]


def test_trim_keeps_the_largest_magnitudes_and_ties():
    np.testing.assert_array_equal(trim(np.array([3.0, -1.0, 0.5, -2.0]), 0.5), [3.0, 0.0, 0.0, -2.0])
    np.testing.assert_array_equal(trim(np.array([1.0, -1.0, 0.5]), 1 / 3), [1.0, -1.0, 0.0])  # a tie at the k-th
    np.testing.assert_array_equal(trim(np.array([0.1, 0.2]), 0.01), [0.0, 0.2])  # at least one entry stays


def test_ties_by_hand():
    w0 = {BODY: np.ones(4, "float32")}
    taus = np.array([[3.0, -1.0, 0.5, -2.0], [-1.0, 2.0, 0.2, -0.5], [1.0, -3.0, -0.1, 0.1]])
    # density 0.5 keeps 2 of 4: (3, 0, 0, -2), (-1, 2, 0, 0), (1, -3, 0, 0); sums (3, -1, 0, -2) elect (+, -, 0, -);
    # disjoint means: mean(3, 1) = 2, -3, nothing (0), -2. With lambda 0.5: W = 1 + 0.5 (2, -3, 0, -2).
    weights, report = soups.ties([{BODY: (1.0 + t).astype("float32")} for t in taus], w0, density=0.5, lam=0.5)
    np.testing.assert_allclose(weights[BODY], [2.0, -0.5, 1.0, 0.0], atol=1e-6)
    assert report["layers"][BODY]["agreeing"] == pytest.approx((2 + 1 + 0 + 1) / 4)
    with pytest.raises(ValueError, match="density must lie in"):
        soups.ties([w0], w0, density=0.0)


def test_ties_averages_a_new_head_uniformly():
    weights, report = soups.ties([ingredient([2.0, 4.0], 1.0), ingredient([0.0, 6.0], 3.0)], W0, density=1.0)
    # density 1 keeps everything: tau (1, 2), (-1, 4) -> elected (0 -> nothing, +) -> (0, mean(2, 4) = 3)
    np.testing.assert_allclose(weights[BODY], [1.0, 5.0], atol=1e-6)
    np.testing.assert_allclose(weights[HEAD], np.full((2, 3), 2.0))
    assert report["new_head"] == [HEAD]


def test_dare_drops_and_rescales_with_its_seeded_masks():
    rng = np.random.default_rng(0)
    w0 = {BODY: rng.normal(size=1000).astype("float32")}
    fine = [{BODY: (w0[BODY] + rng.normal(size=1000)).astype("float32")} for _ in range(2)]
    weights, report = soups.dare(fine, w0, rate=0.3, seed=7, lam=0.5)
    expected = w0[BODY].astype(np.float64)
    for i, f in enumerate(fine):
        keep = dare_rng(7, i, BODY).random(1000) >= 0.3
        expected += 0.5 * np.where(keep, (f[BODY] - w0[BODY]) / 0.7, 0.0)
        assert 0.25 < 1 - keep.mean() < 0.35  # about `rate` of the entries dropped
    np.testing.assert_allclose(weights[BODY], expected, atol=1e-5)
    assert report == {"rate": 0.3, "seed": 7, "lambda": 0.5, "new_head": [], "running_statistics": 0}
    np.testing.assert_array_equal(soups.dare(fine, w0, rate=0.3, seed=7, lam=0.5)[0][BODY], weights[BODY])
    assert not np.allclose(soups.dare(fine, w0, rate=0.3, seed=8, lam=0.5)[0][BODY], weights[BODY])


def test_dare_without_drops_is_task_arithmetic_and_averages_a_new_head():
    pair = [ingredient([2.0, 4.0], 1.0), ingredient([0.0, 6.0], 3.0)]
    weights, report = soups.dare(pair, W0, rate=0.0, lam=0.25)
    np.testing.assert_allclose(weights[BODY], [1.0, 3.5], atol=1e-6)
    np.testing.assert_allclose(weights[HEAD], np.full((2, 3), 2.0))
    assert report["new_head"] == [HEAD]
    with pytest.raises(ValueError, match="rate must lie in"):
        soups.dare(pair, W0, rate=1.0)


def test_slerp_by_hand():
    # orthogonal: omega = pi/2, W = sin(pi/4) (a + b) / sin(pi/2); norms kept apart: a = (2, 0), b = (0, 1)
    merged, stats = slerp_tensor(np.array([2.0, 0.0]), np.array([0.0, 1.0]), 0.5)
    np.testing.assert_allclose(merged, [np.sqrt(2), np.sqrt(2) / 2], atol=1e-6)
    assert stats == {"cos": 0.0, "linear": False}
    # colinear: linear interpolation
    merged, stats = slerp_tensor(np.array([1.0, 2.0]), np.array([2.0, 4.0]), 0.25)
    np.testing.assert_allclose(merged, [1.25, 2.5], atol=1e-6)
    assert stats["linear"]
    # 60 degrees apart, t = 1/2: sin(30) / sin(60) (a + b)
    a, b = np.array([1.0, 0.0]), np.array([0.5, np.sqrt(3) / 2])
    np.testing.assert_allclose(slerp_tensor(a, b, 0.5)[0], (a + b) / np.sqrt(3), atol=1e-6)
    np.testing.assert_allclose(slerp_tensor(a, b, 0.0)[0], a, atol=1e-6)


def test_slerp_merges_every_tensor_of_two_ingredients():
    first, second = ingredient([2.0, 0.0], 1.0), ingredient([0.0, 1.0], 3.0)
    weights, report = soups.slerp(first, second, t=0.5)
    np.testing.assert_allclose(weights[BODY], [np.sqrt(2), np.sqrt(2) / 2], atol=1e-6)
    np.testing.assert_allclose(weights[HEAD], np.full((2, 3), 2.0), atol=1e-6)  # colinear heads: linear
    assert report["layers"][HEAD]["linear"] and report["t"] == 0.5
    with pytest.raises(ValueError, match="exactly 2 ingredients"):
        merge_per_tensor([first, second, first], lambda v, w0, stack: (stack[0], None), exactly=2)
    with pytest.raises(ValueError, match="t must lie in"):
        soups.slerp(first, second, t=1.5)


def test_merges_of_keras_weight_files_with_a_new_head(tmp_path):
    """Real `.weights.h5` files: three 3-class fine-tunes, a 5-class W0; the soups load into the model."""
    model = conv_model(num_classes=3)
    paths = []
    for seed in (1, 2, 3):
        paths.append(tmp_path / f"epoch_{seed:03d}.weights.h5")
        randomize(model, seed).save_weights(paths[-1])
    w0_path = tmp_path / "w0.weights.h5"
    randomize(conv_model(num_classes=5), 9).save_weights(w0_path)
    fine = [soups.read(p) for p in paths]
    w0 = soups.read(w0_path)
    kernel = "layers/conv2d/vars/0"
    offsets = np.stack([f[kernel] - w0[kernel] for f in fine]).reshape(3, -1).astype(np.float64)
    cosines = [offsets[i] @ offsets[j] / np.linalg.norm(offsets[i]) / np.linalg.norm(offsets[j])
               for i, j in ((0, 1), (0, 2), (1, 2))]
    t = interpolation_ratio(float(np.mean(cosines)), 3)
    stock, report = soups.model_stock(paths, w0_path)
    np.testing.assert_allclose(stock[kernel], t * np.mean([f[kernel] for f in fine], axis=0) + (1 - t) * w0[kernel],
                               atol=1e-5)
    head = ["layers/dense/vars/0", "layers/dense/vars/1"]
    mean = soups.uniform(paths)
    merges = {"model_stock": (stock, report), "ties": soups.ties(paths, w0_path, density=0.3),
              "dare": soups.dare(paths, w0_path, rate=0.5), "task_arithmetic": soups.task_arithmetic(paths, w0_path)}
    for name, (weights, report) in merges.items():
        assert sorted(report["new_head"]) == head, name
        for key in head:
            np.testing.assert_allclose(weights[key], mean[key], atol=1e-6, err_msg=name)
        assert weights["layers/counter/vars/0"] == 1  # non-float variables come from the first ingredient
        soups.save(weights, tmp_path / f"{name}.weights.h5")
        conv_model(num_classes=3).load_weights(tmp_path / f"{name}.weights.h5")  # Keras accepts the soup
    np.testing.assert_allclose(merges["task_arithmetic"][0].flat, mean.flat, atol=1e-5)  # lambda = 1/N
    soups.save(soups.slerp(paths[0], paths[1])[0], tmp_path / "slerp.weights.h5")
    conv_model(num_classes=3).load_weights(tmp_path / "slerp.weights.h5")


BN = "layers/batch_normalization/vars"  # gamma, beta, moving mean, moving variance


def test_task_vector_merges_average_batchnorm_statistics_instead_of_extrapolating_them():
    # Four fine-tunes whose variances fell from W0's 1.0 to 0.5 or 0.1: lambda 0.5 over four is 2 mean - W0, which
    # would give a variance of 2 x 0.3 - 1 = -0.4 and NaN outputs. The statistics take their uniform mean, 0.3;
    # gamma (a weight) follows the formula: W0 + 0.5 sum of task vectors = 1 + 0.5 (4 x 1) = 3.
    w0 = {f"{BN}/0": np.ones(2, "float32"), f"{BN}/1": np.zeros(2, "float32"), f"{BN}/2": np.zeros(2, "float32"),
          f"{BN}/3": np.ones(2, "float32")}
    fine = [{f"{BN}/0": np.full(2, 2.0, "float32"), f"{BN}/1": np.zeros(2, "float32"),
             f"{BN}/2": np.full(2, m, "float32"), f"{BN}/3": np.full(2, v, "float32")}
            for m, v in ((1.0, 0.5), (3.0, 0.1), (1.0, 0.5), (3.0, 0.1))]
    merges = {"task_arithmetic": soups.task_arithmetic(fine, w0, lam=0.5), "dare": soups.dare(fine, w0, 0.0, lam=0.5),
              "ties": soups.ties(fine, w0, density=1.0, lam=2.0), "model_stock": soups.model_stock(fine, w0)}
    for name, (weights, report) in merges.items():
        np.testing.assert_allclose(weights[f"{BN}/2"], [2.0, 2.0], err_msg=name)
        np.testing.assert_allclose(weights[f"{BN}/3"], [0.3, 0.3], atol=1e-6, err_msg=name)
        assert report["running_statistics"] == 2 and report["new_head"] == [], name
    for name in ("task_arithmetic", "dare", "ties"):  # TIES: lambda 2 x the disjoint mean 1
        np.testing.assert_allclose(merges[name][0][f"{BN}/0"], [3.0, 3.0], atol=1e-6, err_msg=name)


def test_slerp_interpolates_batchnorm_statistics_linearly():
    # Two variance vectors 90 degrees apart: SLERP at t = 1/2 would give (a + b) / sqrt(2), sqrt(2) times their mean.
    first = {f"{BN}/0": np.array([1.0, 0.0], "float32"), f"{BN}/1": np.zeros(2, "float32"),
             f"{BN}/2": np.zeros(2, "float32"), f"{BN}/3": np.array([2.0, 0.0], "float32")}
    second = {**first, f"{BN}/0": np.array([0.0, 1.0], "float32"), f"{BN}/3": np.array([0.0, 4.0], "float32")}
    weights, report = soups.slerp(first, second, t=0.25)
    np.testing.assert_allclose(weights[f"{BN}/3"], [1.5, 1.0], atol=1e-6)  # 0.75 a + 0.25 b
    np.testing.assert_allclose(weights[f"{BN}/0"], [np.cos(np.pi / 8), np.sin(np.pi / 8)], atol=1e-6)  # gamma: SLERP
    assert report["running_statistics"] == 2 and f"{BN}/3" not in report["layers"]


@pytest.mark.parametrize("name", ["coatnet_tiny", "resnet50", "densenet121"])
def test_batchnorm_statistics_are_found_by_their_place_in_the_file(name):
    from ich_keras import models
    from ich_keras.weight_layout import running_statistics
    from ich_keras.weight_files import ModelSource

    layout = ModelSource(models.build(name, 3, 32)).layout()  # its keys are the file's, its labels the names
    named = {v.key for v in layout.variables if v.label.endswith(("/moving_mean", "/moving_variance"))}
    assert named and running_statistics(layout) == named


class NormedDense(keras.layers.Layer):
    """A Dense, then a BatchNormalization held in an attribute: its file group is layers/normed_dense/norm."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense, self.norm = keras.layers.Dense(3), keras.layers.BatchNormalization()

    def build(self, shape):
        self.dense.build(shape)
        self.norm.build((*shape[:-1], 3))

    def call(self, x):
        return self.norm(self.dense(x))


def test_batchnorm_statistics_inside_a_custom_layer_are_averaged_not_extrapolated(tmp_path):
    # The statistics were found by the group's name alone (layers/batch_normalization_3): under .../norm
    # they were merged as weights, task arithmetic's lambda 0.5 over four giving a variance of -0.4.
    models, paths = [], []
    for i, variance in enumerate((1.0, 0.5, 0.1, 0.5, 0.1)):  # W0, then four fine-tunes
        inputs = keras.Input((4,))
        block = NormedDense(name="block")
        models.append(keras.Model(inputs, keras.layers.Dense(2, name="head")(block(inputs))))
        block.norm.moving_variance.assign(np.full(3, variance, "float32"))
        paths.append(tmp_path / f"{i}.weights.h5")
        models[-1].save_weights(paths[-1])
    for w0, fine_tunes in ((paths[0], paths[1:]), (models[0], models[1:])):  # files, and live models
        weights, report = soups.task_arithmetic(fine_tunes, w0, lam=0.5)
        np.testing.assert_allclose(weights["layers/normed_dense/norm/vars/3"], np.full(3, 0.3), atol=1e-6)
        assert report["running_statistics"] == 2


def test_bfloat16_variables_are_refused_not_copied_from_the_first_ingredient(tmp_path):
    # They were taken for non-float variables: the "soup" was the first ingredient, in a file Keras could not load.
    paths = []
    for i in range(2):
        inputs = keras.Input((4,))
        model = keras.Model(inputs, keras.layers.Dense(2, dtype="bfloat16", name="head")(inputs))
        paths.append(tmp_path / f"{i}.weights.h5")
        model.save_weights(paths[-1])
    with pytest.raises(ValueError, match=r"layers/dense/vars/0 \(head #0\) is opaque 2-byte \(bfloat16\?\)"):
        soups.uniform(paths)
    with pytest.raises(ValueError, match=r"layers/dense/vars/0 \(head/kernel\) is bfloat16 in model"):
        soups.uniform([model, model])


def test_a_pretrained_file_of_another_body_is_rejected(tmp_path):
    conv_model(num_classes=3).save_weights(tmp_path / "a.weights.h5")
    conv_model(num_classes=3, width=6).save_weights(tmp_path / "w0.weights.h5")
    with pytest.raises(ValueError, match="beyond its head"):
        soups.model_stock([tmp_path / "a.weights.h5"] * 2, tmp_path / "w0.weights.h5")


def test_a_pretrained_file_of_another_coatnet_is_not_called_one_of_another_image_size(tmp_path):
    # Its relative-position tables differ too, among 70 other arrays: `soup cook --pretrained` said "The weights
    # are of another image size".
    from ich_keras import models
    from ich_keras.weight_layout import check_pretrained_fits
    from ich_keras.weight_files import H5Source

    target = H5Source(_saved(models.build("coatnet_tiny", 3, 32), tmp_path / "tiny_32.weights.h5")).layout()
    other = H5Source(_saved(models.build("test_coatnet", 5, 32), tmp_path / "other_32.weights.h5")).layout()
    with pytest.raises(ValueError, match="beyond its head.*Another architecture") as error:
        check_pretrained_fits(other, target, "the ingredients' model")
    assert "another image size" not in str(error.value)
    at_64 = H5Source(_saved(models.build("coatnet_tiny", 5, 64), tmp_path / "tiny_64.weights.h5")).layout()
    with pytest.raises(ValueError, match="beyond its head.*The weights are of another image size"):
        check_pretrained_fits(at_64, target, "the ingredients' model")


def _saved(model, path):
    model.save_weights(path)
    return path


def test_a_new_head_is_found_wherever_the_layout_lists_it():
    # A .weights.h5 lists variables in HDF5 name order, where the head need not come last ("layers/dense" sorts
    # before "layers/layer_normalization"): the head is the one layer differing in its last axis, wherever it is.
    first = {HEAD: np.full((2, 3), 1.0, "float32"), BODY: np.array([2.0, 2.0], "float32")}
    second = {HEAD: np.full((2, 3), 3.0, "float32"), BODY: np.array([1.6, 2.8], "float32")}
    weights, report = soups.model_stock([first, second], {HEAD: np.zeros((2, 5), "float32"), BODY: W0[BODY]})
    assert report["new_head"] == [HEAD]
    np.testing.assert_allclose(weights[BODY], [1.6, 2.3], atol=1e-6)
