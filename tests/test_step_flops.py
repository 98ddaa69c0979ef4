"""benchmarks/step_flops.py, the FLOP count behind the GPU check's MFU: XLA's count of a lowered training step
against a count by hand, and the same count from a process of its own (as the GPU check runs it)."""

import importlib
from pathlib import Path

import keras
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def step_flops(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module("step_flops")


def test_a_two_layer_network_counts_what_a_hand_count_gives(step_flops):
    batch, inputs, hidden, classes = 8, 256, 128, 64
    model = keras.Sequential([keras.Input((inputs,)), keras.layers.Dense(hidden), keras.layers.Dense(classes)])
    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch, inputs)).astype(np.float32)
    labels = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, batch)]
    # Forward: 2 multiply-adds per weight and example in each layer. Backward: the second layer's kernel gradient
    # and its input gradient, the first layer's kernel gradient (no gradient flows into the images).
    by_hand = 2 * batch * (inputs * hidden + hidden * classes) + 2 * batch * (2 * hidden * classes + inputs * hidden)
    counted = step_flops.step_flops(model, images, labels)
    # The rest (biases, softmax, the mean) is a few thousand FLOPs against 1.44 million.
    assert by_hand <= counted <= 1.02 * by_hand


@pytest.mark.slow  # 8 s: a fresh process compiling a train step
def test_a_process_of_its_own_counts_what_this_one_does(step_flops):
    here = step_flops.model_step_flops("coatnet_tiny", 32, 2, "float32")
    assert step_flops.result(step_flops.start("coatnet_tiny", 32, 2, "float32")) == round(here) > 1e6  # printed whole


def test_a_failed_count_says_why(step_flops):
    with pytest.raises(RuntimeError, match=r"step_flops.py exited with status 1: .*coatnet_huge"):
        step_flops.result(step_flops.start("coatnet_huge", 32, 2, "float32"))
