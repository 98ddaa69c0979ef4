"""The compatibility check: val loss and accuracy along the line between two weight sets, on a case by hand.

A two-unit ReLU network on x = e0, e1 (labels 0, 1): A passes x through (W1 = W2 = I); B is A with its hidden units
swapped (W1 = W2 = the swap), the same function. Both ends are right on every input; the midpoint (all weights 1/2)
gives equal logits, so it predicts class 0 everywhere (accuracy 1/2) with loss ln 2, against log(1 + 1/e) at
the ends: a loss barrier of ln 2 - log(1 + 1/e).
"""

import math

import numpy as np
import pytest
from soup_fixtures import keras

from ich_keras import soups
from ich_keras.soups.check import line_scan, markdown, verdict

SWAP = np.array([[0.0, 1.0], [1.0, 0.0]], "float32")


def mlp():
    inputs = keras.Input((2,))
    hidden = keras.layers.Dense(2, activation="relu", use_bias=False, name="hidden")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2, use_bias=False, name="out")(hidden), name="mlp")


def save(model, first, second, path):
    model.get_layer("hidden").set_weights([first])
    model.get_layer("out").set_weights([second])
    model.save_weights(path)
    return path


def swapped_pair(tmp_path):
    """The module docstring's case: (model, A's file, B's file, the two inputs)."""
    model = mlp()
    a = save(model, np.eye(2, dtype="float32"), np.eye(2, dtype="float32"), tmp_path / "a.weights.h5")
    b = save(model, SWAP, SWAP, tmp_path / "b.weights.h5")
    return model, a, b, soups.batched(np.eye(2, dtype="float32"), np.array([0, 1]), 2)


def test_line_scan_flags_weights_that_do_not_share_a_basin(tmp_path):
    model, a, b, data = swapped_pair(tmp_path)
    scan = line_scan(a, b, model, data, points=(0.0, 0.5, 1.0))
    assert [p["val"]["accuracy"] for p in scan] == [1.0, 0.5, 1.0]
    end_loss = math.log(1 + math.exp(-1))
    assert scan[1]["val"]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    result = verdict(scan)
    assert result["loss_barrier"] == pytest.approx(math.log(2) - end_loss, abs=1e-6)
    assert "do not share a basin" in result["warning"]
    assert "WARNING" in markdown(scan, result, ("a", "b"))


def test_line_scan_passes_weights_on_one_line(tmp_path):
    model = mlp()
    a = save(model, np.eye(2, dtype="float32"), np.eye(2, dtype="float32"), tmp_path / "a.weights.h5")
    b = save(model, np.eye(2, dtype="float32"), 3 * np.eye(2, dtype="float32"), tmp_path / "b.weights.h5")
    data = soups.batched(np.eye(2, dtype="float32"), np.array([0, 1]), 2)
    scan = line_scan(a, b, model, data)
    assert [p["alpha"] for p in scan] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert all(p["val"]["accuracy"] == 1.0 for p in scan)
    result = verdict(scan)
    assert result["warning"] is None and result["midpoint"] == 0.5
    assert result["loss_barrier"] < 0  # the loss falls faster than linearly as the logits grow
    with pytest.raises(ValueError, match="an interior point"):
        verdict(scan[:1] + scan[-1:])


def test_line_scan_reads_points_given_in_any_order(tmp_path):
    # --points 0 1 0.5 took a = 1 for an interior point and a = 0.5 for an end: the barrier and the warning were
    # read off the wrong segment.
    model, a, b, data = swapped_pair(tmp_path)
    scan = line_scan(a, b, model, data, points=(0.0, 1.0, 0.5))
    assert [p["alpha"] for p in scan] == [0.0, 0.5, 1.0]
    result = verdict(scan)
    assert result["loss_barrier"] == pytest.approx(math.log(2) - math.log(1 + math.exp(-1)), abs=1e-6)
    assert result["midpoint"] == 0.5 and "do not share a basin" in result["warning"]


def test_line_scan_refuses_a_point_whose_outputs_are_not_finite(tmp_path):
    from ich_keras.errors import UserError

    model, a, b, data = swapped_pair(tmp_path)
    with pytest.raises(UserError, match=r"point a = inf of the line gives non-finite outputs"):
        line_scan(a, b, model, data, points=(0.0, 0.5, 1.0, float("inf")))
