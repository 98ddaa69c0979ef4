"""The package used from Python (a notebook), not through the commands: the mistakes a notebook makes get a clear
error, and the numbers do not depend on the notebook's own settings."""

import subprocess
import sys

import keras
import numpy as np
import pytest
from predict_fixtures import SOUP
from soup_fixtures import linear_model, save_linear

import ich_keras
from ich_keras import soups


def test_the_packages_are_reached_from_import_ich_keras_alone():
    listing = subprocess.run([sys.executable, "-c", "import ich_keras; print(ich_keras.models.model_names()[0], "
                              "ich_keras.soups.uniform.__name__, ich_keras.analysis.mds_embedding.__name__)"],
                             capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr[-800:]
    assert listing.stdout.split()[1:] == ["uniform", "mds_embedding"]


def test_one_path_given_as_the_ingredients_is_named(tmp_path):
    path = tmp_path / "a.weights.h5"
    save_linear(linear_model(), np.ones((3, 3), np.float32), path)
    # It was read as a list of one-letter paths ("Weights file not found. Received: path='/'").
    with pytest.raises(ValueError, match=r"Expected a list of ingredients .* Received: one (Posix)?Path .*wrap it"):
        soups.uniform(path)
    with pytest.raises(ValueError, match=r"Received: one str .*wrap it in a list"):
        soups.uniform(str(path))
    assert soups.uniform([path]).layout is not None


def test_a_generator_of_batches_is_refused_not_used_up_by_the_first_ingredient(tmp_path):
    paths = [tmp_path / f"{i}.weights.h5" for i in range(2)]
    for i, path in enumerate(paths):
        save_linear(linear_model(), np.eye(3, dtype=np.float32) * (i + 1), path)
    batches = [(np.eye(3, dtype=np.float32), np.arange(3))]
    assert soups.greedy(paths, linear_model(), batches).chosen  # a list is read once per ingredient
    with pytest.raises(ValueError, match=r"Expected re-iterable evaluation data .* one-shot generator"):
        soups.greedy(paths, linear_model(), (batch for batch in batches))


def test_predictions_do_not_depend_on_the_notebooks_dtype_policy_nor_on_a_generator(trained_run):
    predictor = ich_keras.load(trained_run, weights=SOUP)
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    expected = predictor.predict(images).probabilities
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        in_bfloat16 = ich_keras.load(trained_run, weights=SOUP)
    finally:
        keras.config.set_dtype_policy(before)
    np.testing.assert_allclose(in_bfloat16.predict(images).probabilities, expected, atol=1e-6)
    assert keras.config.dtype_policy().name == before.name
    assert len(predictor.predict(image for image in images).probabilities) == 3  # was 0 rows, no error


def test_parity_after_tensorflow_is_an_import_error_not_a_crash():
    pytest.importorskip("triton")  # the crash is triton's, loaded after TensorFlow
    child = subprocess.run([sys.executable, "-c", "import tensorflow\nimport ich_keras.parity"],
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 1 and "restart the kernel and import ich_keras.parity" in child.stderr, \
        (child.returncode, child.stderr[-800:])
