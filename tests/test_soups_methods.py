"""Greedy and pruned soups on a constructed case, no recompilation, soft voting, learned soups, WiSE-FT.

The constructed case: a linear classifier on one-hot inputs, so the logits of class k's examples are row k of the
kernel and each soup's accuracy can be read off by hand. Ingredients are given in the order [C, B, A]:
    A = 3 I                                   accuracy 1
    B = rows e0, e1, 0.5 e1                    accuracy 2/3; (A + B) / 2 still has accuracy 1 (a tie)
    C = a cyclic permutation times 5           accuracy 0; every soup containing C gets accuracy 0
"""

import sys
from pathlib import Path

import numpy as np
import pytest
from soup_fixtures import conv_model, linear_model, save_linear, save_random

from ich_keras import soups
from ich_keras.evaluation import evaluate
from ich_keras.ranking import best as best_single

A = 3 * np.eye(3)
B = np.array([[1, 0, 0], [0, 1, 0], [0, 0.5, 0]])
C = 5 * np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]])


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    directory = tmp_path_factory.mktemp("constructed")
    model = linear_model()
    paths = [save_linear(model, kernel, directory / f"{name}.weights.h5") for name, kernel in zip("CBA", (C, B, A))]
    images = np.repeat(np.eye(3, dtype="float32"), 2, axis=0)  # two examples per class, x = e_k
    labels = np.repeat(np.arange(3), 2)
    return model, paths, soups.batched(images, labels, 4)  # batches of 4 and 2: the short one is padded


def test_individual_accuracies_match_the_construction(case):
    model, paths, data = case
    results = soups.evaluate_ingredients(paths, model, data)
    assert [r["accuracy"] for r in results] == pytest.approx([0.0, 2 / 3, 1.0])


@pytest.mark.parametrize("accept, expected", [("ge", [2, 1]), ("gt", [2])])
def test_greedy_picks_the_expected_set(case, accept, expected):
    model, paths, data = case
    result = soups.greedy(paths, model, data, metric="accuracy", accept=accept)
    assert result.chosen == expected
    assert result.info["order"] == [2, 1, 0]  # best first by val accuracy
    assert result.val["accuracy"] == 1.0
    np.testing.assert_allclose(result.weights["layers/dense/vars/0"], np.mean([[A, B, C][2 - i] for i in expected],
                                                                              axis=0), atol=1e-6)


@pytest.mark.parametrize("accept, expected, tried", [("gt", [1, 2], [0, 1, 2]), ("ge", [2], [0, 1])])
def test_pruned_drops_the_expected_ingredients(case, accept, expected, tried):
    model, paths, data = case
    result = soups.pruned(paths, model, data, metric="accuracy", accept=accept)
    # uniform soup of all three has accuracy 0; without C it is 1 (removed); without B it stays 1 (a tie);
    # with gt, A is then tried too (B alone: 2/3, kept); with ge only A is left and a soup keeps one ingredient.
    assert result.chosen == expected
    assert [s["ingredient"] for s in result.steps] == tried  # worst first
    np.testing.assert_allclose(result.weights["layers/dense/vars/0"], np.mean([[C, B, A][i] for i in expected],
                                                                              axis=0), atol=1e-6)


def test_greedy_by_loss_prefers_lower(case):
    model, paths, data = case
    result = soups.greedy(paths, model, data, metric="loss", accept="gt")
    values = [s["value"] for s in result.steps]
    assert result.chosen[0] == 2 and values[0] == min(r["loss"] for r in soups.evaluate_ingredients(paths, model,
                                                                                                     data))


def test_greedy_and_pruned_break_ties_on_val_loss_as_the_best_single_checkpoint_does(case):
    model, paths, data = case
    tied = [{"accuracy": 0.5, "loss": 0.9}, {"accuracy": 0.5, "loss": 0.4}, {"accuracy": 0.0, "loss": 2.0}]
    result = soups.greedy(paths, model, data, metric="accuracy", ingredient_val=tied)
    assert result.info["order"] == [1, 0, 2] and result.chosen[0] == best_single(tied, "accuracy") == 1
    pruned = soups.pruned(paths, model, data, metric="accuracy", ingredient_val=tied)
    assert [s["ingredient"] for s in pruned.steps][:2] == [2, 0]  # worst first: the tie's higher loss goes first


def test_greedy_does_not_recompile_the_forward_function(case):
    model, paths, data = case
    evaluator = soups.Evaluator(model, soups.read(paths[0]).layout)
    soups.greedy(paths, model, data, accept="ge", evaluator=evaluator)
    # 3 ingredients + 2 candidates evaluated on 2 batches each (one padded): still a single trace
    assert evaluator.num_traces == 1
    soups.pruned(paths, model, data, evaluator=evaluator)
    assert evaluator.num_traces == 1


def test_bad_selection_arguments_are_rejected(case):
    model, paths, data = case
    with pytest.raises(ValueError, match=r"Received: metric='top5'"):
        soups.greedy(paths, model, data, metric="top5")
    with pytest.raises(ValueError, match=r"Received: accept='gte'"):
        soups.pruned(paths, model, data, accept="gte")


def test_an_ingredient_whose_outputs_are_not_finite_is_named_wherever_ingredients_are_scored(case, tmp_path):
    # Finite weights that do not compute: a BatchNorm variance below zero gives NaN logits. Scored alone (as
    # evaluate_ingredients does, and greedy and pruned without ingredient_val), it must be an error naming the file,
    # not a NaN loss that is ranked and averaged like a number.
    from ich_keras.errors import UserError

    _, _, data = case
    model = linear_model(batchnorm_momentum=0.9)
    good = save_linear(model, A, tmp_path / "good.weights.h5")
    model.get_layer("bn").moving_variance.assign(-np.ones(3, "float32"))
    bad = save_linear(model, A, tmp_path / "bad.weights.h5")
    for score in (soups.evaluate_ingredients, soups.greedy, soups.pruned):
        with pytest.raises(UserError, match=r"bad\.weights\.h5 gives non-finite outputs \(NaN or inf\) for 6 of 6"):
            score([good, bad], model, data)


def test_soft_voting_is_the_mean_of_probabilities(case):
    model, paths, data = case
    _, outputs = soups.evaluate_ingredients(paths, model, data, return_logits=True)
    logits = [out[1].astype(np.float64) for out in outputs]
    vote = soups.soft_voting(logits)
    probabilities = [np.exp(z) / np.exp(z).sum(-1, keepdims=True) for z in logits]
    np.testing.assert_allclose(np.exp(vote), np.mean(probabilities, axis=0), rtol=1e-12)
    labels = outputs[0][0]
    expected_loss = -np.log(np.mean(probabilities, axis=0)[np.arange(6), labels]).mean()
    assert evaluate(labels, vote)["loss"] == pytest.approx(expected_loss)


def _resident_bytes(field: str) -> int:
    """A `kB` line of Linux's /proc/self/status (VmRSS: resident now, VmHWM: peak so far), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"/proc/self/status has no such line. Received: field={field!r}")


def test_learned_soup_fits_coefficients_and_reports_memory(tmp_path):
    linux = sys.platform.startswith("linux")
    resident_before = _resident_bytes("VmRSS") if linux else 0
    model = conv_model()
    paths = save_random(model, tmp_path, 3)
    rng = np.random.default_rng(0)
    data = soups.batched(rng.normal(size=(8, 8, 8, 3)).astype("float32"), rng.integers(0, 3, 8), 4)
    uniform_loss = soups.Evaluator(model, soups.read(paths[0]).layout).evaluate(soups.uniform(paths), data)["loss"]
    result = soups.learned(paths, model, data, epochs=4, learning_rate=0.1)
    coefficients = np.array(list(result.info["coefficients"].values()))  # (layers, N)
    assert coefficients.shape == (3, 3)  # conv, bn, dense (the counter has no float variable)
    np.testing.assert_allclose(coefficients.sum(axis=1), 1.0, rtol=1e-5)
    assert result.val["loss"] < uniform_loss  # it starts at the uniform soup and descends the same loss
    memory = result.info["memory"]
    assert memory["stacked_ingredients_bytes"] == 3 * 4 * result.weights.layout.size
    assert memory["one_checkpoint_bytes"] == result.weights.layout.nbytes
    if linux:
        # The process's peak, in bytes (getrusage gives KiB on Linux): at least what was resident before the call,
        # at most the kernel's peak after it. 10 % slack for the kernel's lazily summed per-thread counters.
        assert 0.9 * resident_before <= memory["peak_rss_bytes"] <= 1.1 * _resident_bytes("VmHWM")


def test_interpolation_runs_from_pretrained_to_soup(tmp_path):
    model = conv_model(num_classes=3)
    pretrained = save_random(conv_model(num_classes=5), tmp_path, 1, prefix="pretrained")[0]  # another head
    paths = save_random(model, tmp_path, 2)
    soup = soups.uniform(paths)
    rng = np.random.default_rng(1)
    data = soups.batched(rng.normal(size=(4, 8, 8, 3)).astype("float32"), np.array([0, 1, 2, 0]), 4)
    results = soups.interpolate(pretrained, soup, model, data, alphas=(0.0, 1.0))
    evaluator = soups.Evaluator(model, soup.layout)
    assert results[1]["metrics"]["loss"] == pytest.approx(evaluator.evaluate(soup, data)["loss"], rel=1e-6)
    assert results[0]["from_soup"] == ["layers/dense/vars/0", "layers/dense/vars/1"]
    assert results[0]["metrics"]["loss"] != pytest.approx(results[1]["metrics"]["loss"])


def test_interpolation_refuses_an_alpha_whose_outputs_are_not_finite(tmp_path):
    from ich_keras.errors import UserError

    # An alpha far out of [0, 1] (a BatchNorm variance below zero) gives NaN outputs; they were scored as a
    # 1/K accuracy (argmax of NaN is class 0) and a NaN loss in the soup's WiSE-FT table.
    model = conv_model(num_classes=3)
    paths = save_random(model, tmp_path, 2)
    data = soups.batched(np.random.default_rng(1).normal(size=(4, 8, 8, 3)).astype("float32"),
                         np.array([0, 1, 2, 0]), 4)
    with pytest.raises(UserError, match=r"WiSE-FT point alpha = nan of the greedy soup gives non-finite outputs"):
        soups.interpolate(paths[0], soups.uniform(paths), model, data, alphas=(0.0, float("nan")),
                          name="the greedy soup")


def test_an_ingredient_scored_alone_keeps_its_own_non_float_variables():
    # An integer variable that changes the outputs (x * (1 + k)): scored alone, each ingredient must be scored with
    # its own k, whatever the order; before, every one took the first-read ingredient's.
    import keras

    class Amplify(keras.layers.Layer):
        def build(self, input_shape):
            self.k = self.add_weight(shape=(), dtype="int32", initializer="zeros", trainable=False, name="k")

        def call(self, x):
            return x * (1 + keras.ops.cast(self.k, x.dtype))

    inputs = keras.Input((2,))
    model = keras.Model(inputs, Amplify()(keras.layers.Dense(2, kernel_initializer="identity")(inputs)))
    plain = soups.read(soups.as_source(model)).to_dict()
    key = next(k for k, v in plain.items() if v.dtype.kind == "i")
    amplified = {**plain, key: np.array(5, np.int32)}
    data = [(np.array([[0.0, 1.0], [1.0, 0.0]], np.float32), np.array([1, 0]))]
    expected = [evaluate(y, x @ np.eye(2) * scale)["loss"] for x, y in data for scale in (1, 6)]
    for order in ((plain, amplified), (amplified, plain)):
        losses = [r["loss"] for r in soups.evaluate_ingredients(list(order), model, data)]
        assert losses == pytest.approx(expected if order[0] is plain else expected[::-1], rel=1e-5)


def test_labels_as_a_column_are_class_indices_and_raw_pixels_are_refused(case):
    # (n, 1) labels (Keras' datasets, df[["label"]].values) were read as one-hot rows: every label became 0 and
    # greedy chose from those. Integer images are raw pixels, which the models never take.
    model, paths, data = case
    images = np.concatenate([x for x, _ in data])
    labels = np.concatenate([y for _, y in data])
    as_given = soups.evaluate_ingredients(paths, model, data)
    as_column = soups.evaluate_ingredients(paths, model, soups.batched(images, labels[:, None], 4))
    assert [r["accuracy"] for r in as_column] == [r["accuracy"] for r in as_given] == pytest.approx([0, 2 / 3, 1])
    with pytest.raises(ValueError, match=r"Expected normalised float images .* Received: images of dtype uint8"):
        soups.greedy(paths, model, soups.batched((images * 255).astype(np.uint8), labels, 4))


def test_soft_voting_takes_a_stacked_array_and_says_what_a_single_one_lacks(case):
    model, paths, data = case
    _, outputs = soups.evaluate_ingredients(paths, model, data, return_logits=True)
    logits = [out[1] for out in outputs]
    np.testing.assert_array_equal(soups.soft_voting(np.stack(logits)), soups.soft_voting(logits))
    with pytest.raises(ValueError, match=r"one model: \[logits\]\)\. Received: an array of shape \(6, 3\)"):
        soups.soft_voting(logits[0])
