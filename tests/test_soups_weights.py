"""Weight files, the streaming uniform mean, writing soups back, and every bad input named in the error."""

import h5py
import numpy as np
import pytest
from soup_fixtures import conv_model, randomize, save_random, trained_conv_model

from ich_keras import soups
from ich_keras.soups import averaging
from ich_keras.weight_files import H5Source, model_variables


@pytest.fixture(scope="module")
def model():
    return conv_model()


@pytest.fixture(scope="module")
def paths(model, tmp_path_factory):
    return save_random(model, tmp_path_factory.mktemp("ingredients"), 4)


def _datasets(path):
    with h5py.File(path, "r") as f:
        out = {}
        f.visititems(lambda k, o: out.__setitem__(k, o[()]) if isinstance(o, h5py.Dataset) else None)
    return out


def test_keys_are_the_paths_keras_writes(model, paths):
    # The model -> file map comes from Keras' own saver walk; pin it against a real save_weights file.
    keys = [key for key, _ in model_variables(model)]
    assert sorted(keys) == sorted(_datasets(paths[0]))
    layout = H5Source(paths[0]).layout()
    assert layout.by_key["layers/conv2d/vars/0"].label == "stem_conv #0"
    assert not layout.by_key["layers/counter/vars/0"].is_float
    assert layout.size == sum(int(np.prod(v.shape)) for v in model.weights if "int" not in str(v.dtype))


@pytest.mark.parametrize("window", [None, 7])  # 7 floats: variables split by rows across windows
def test_uniform_equals_numpy_mean_of_the_files(paths, window):
    soup = soups.uniform(paths) if window is None else soups.running_mean(paths, window=window)
    files = [_datasets(p) for p in paths]
    for key, value in soup.to_dict().items():
        if key == "layers/counter/vars/0":
            # non-float variables are copied from the first ingredient, never averaged
            assert value == files[0][key] == 1 and value.dtype == np.int32
            continue
        expected = np.mean([f[key].astype(np.float64) for f in files], axis=0)
        np.testing.assert_allclose(value, expected, rtol=0, atol=1e-6)
        assert value.dtype == files[0][key].dtype


def test_windows_split_variables_along_their_first_long_axis():
    rng = np.random.default_rng(0)
    sets = [{"a/vars/0": rng.normal(size=(1, 1, 4, 6)).astype("float32"), "b/vars/0": rng.normal(size=5)}
            for _ in range(3)]
    size, plans = averaging.plan_windows(soups.read(sets[0]).layout, window=12)
    # a 1x1 kernel (1, 1, 4, 6) splits along its third axis into rows of 6: two full windows, then the rest
    assert size == 12 and [(a, b) for a, b, _ in plans] == [(0, 12), (12, 24), (24, 29)]
    assert [(p.variable.key, p.first, p.end) for p in plans[1][2]] == [("a/vars/0", 2, 4)]
    soup = soups.running_mean(sets, window=12)
    for key in sets[0]:
        np.testing.assert_allclose(soup[key], np.mean([s[key] for s in sets], axis=0), atol=1e-6)


def test_uniform_compiles_the_update_once(paths):
    soups.uniform(paths[:2])
    before = averaging.compilations()
    soups.uniform(paths)
    soups.uniform(paths[1:3])
    assert averaging.compilations() == before


def test_weighted_mean_and_models_as_ingredients(model, paths):
    a, b = randomize(conv_model(), 11), randomize(conv_model(), 12)
    soup = soups.running_mean([a, b], weights=[3, 1])
    expected = 0.75 * a.get_layer("head").kernel.numpy() + 0.25 * b.get_layer("head").kernel.numpy()
    np.testing.assert_allclose(soup["layers/dense/vars/0"], expected, atol=1e-6)


def test_saved_soup_loads_into_a_model(model, paths, tmp_path):
    soup = soups.uniform(paths)
    path = soups.save(soup, tmp_path / "soup.weights.h5", template=paths[0])
    fresh = conv_model()
    fresh.load_weights(path)
    for key, variable in model_variables(fresh):
        np.testing.assert_array_equal(variable.numpy(), soup[key])
    with h5py.File(path) as f:
        assert f["layers/conv2d/vars"].attrs["name"] == "stem_conv"
    for weights in (soup, path):  # the soup in memory, or its file
        other = conv_model()
        soups.load_into(other, weights)
        np.testing.assert_array_equal(other.get_layer("head").kernel.numpy(), soup["layers/dense/vars/0"])


def test_optimizer_state_is_neither_averaged_nor_written(tmp_path):
    model = trained_conv_model()
    model.save_weights(tmp_path / "a.weights.h5")
    with h5py.File(tmp_path / "a.weights.h5") as f:
        assert "optimizer" in f
    soup = soups.uniform([tmp_path / "a.weights.h5", model])
    assert not any(k.startswith("optimizer") for k in soup.layout.by_key)
    soups.save(soup, tmp_path / "soup.weights.h5")
    conv_model().load_weights(tmp_path / "soup.weights.h5")


def test_missing_variable_names_file_and_variable(paths, tmp_path):
    conv_model(batchnorm=False).save_weights(tmp_path / "no_bn.weights.h5")
    with pytest.raises(ValueError, match=r"missing from .*no_bn\.weights\.h5.*layers/batch_normalization/vars/0 "
                                         r"\(stem_bn #0\) with shape \(4,\)"):
        soups.uniform([paths[0], tmp_path / "no_bn.weights.h5"])


def test_shape_difference_names_both_shapes(paths, tmp_path):
    wide = save_random(conv_model(num_classes=5), tmp_path, 1, prefix="wide")[0]
    with pytest.raises(ValueError, match=r"layers/dense/vars/0 \(head #0\) has shape \(4, 3\) in .*epoch_000"
                                         r".* but \(4, 5\) in .*wide_000\.weights\.h5"):
        soups.uniform([paths[0], wide])


def test_a_mismatched_ingredient_is_named_before_any_is_read(paths, tmp_path):
    # `soup cook --checkpoints` scored every earlier ingredient (minutes with large checkpoints) before this error.
    from ich_keras.soups.averaging import Reader

    wide = save_random(conv_model(num_classes=5), tmp_path, 1, prefix="wide")[0]
    with pytest.raises(ValueError, match=r"has shape \(4, 3\) in .*epoch_000.* but \(4, 5\) in .*wide_000"):
        Reader([*paths, wide])  # the constructor: nothing read yet


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_ingredient_names_file_variable_and_value(paths, tmp_path, bad):
    broken = tmp_path / "broken.weights.h5"
    broken.write_bytes(paths[1].read_bytes())
    with h5py.File(broken, "a") as f:
        f["layers/conv2d/vars/0"][1, 2, 0, 3] = bad
    message = rf"layers/conv2d/vars/0 \(stem_conv #0\) in .*broken\.weights\.h5 is not finite: 1 of (108|36) values " \
              rf".* first {bad} at index \(1, 2, 0, 3\)"
    with pytest.raises(ValueError, match=message):
        soups.uniform([paths[0], broken])
    with pytest.raises(ValueError, match=message):  # in a later window of the stream
        soups.running_mean([paths[0], broken, paths[2]], window=5)
    with pytest.raises(ValueError, match=message):  # the greedy / evaluation path reads whole sets
        soups.read(broken)


def test_a_mean_that_overflows_float32_names_the_variable():
    # Every ingredient is finite, but their difference is not: the final NaN / inf test must not blame a file.
    high = {"dense/vars/0": np.full((2, 2), 3e38, np.float32)}
    low = {"dense/vars/0": np.full((2, 2), -3e38, np.float32)}
    with pytest.raises(ValueError, match=r"mean of variable dense/vars/0 overflows float32.*2 ingredients"):
        soups.uniform([high, low])


def test_unreadable_or_missing_files_are_named(paths, tmp_path):
    with pytest.raises(ValueError, match=r"not found. Received: .*nowhere\.weights\.h5"):
        soups.uniform([paths[0], tmp_path / "nowhere.weights.h5"])
    junk = tmp_path / "junk.weights.h5"
    junk.write_text("not hdf5")
    with pytest.raises(ValueError, match=r"Cannot read weights file as HDF5.*junk\.weights\.h5"):
        soups.uniform([junk])
    # A downloaded timm file given as an ingredient or W0 (`soup --pretrained model.safetensors`): say to convert it.
    timm_file = tmp_path / "model.safetensors"
    timm_file.write_bytes(b"{}")
    with pytest.raises(ValueError, match=r"timm / torch checkpoint.*python -m ich_keras.convert --model MODEL "
                                         r"--checkpoint .*model\.safetensors"):
        soups.uniform([paths[0], timm_file])
    with pytest.raises(ValueError, match="At least one ingredient"):
        soups.uniform([])
    with pytest.raises(ValueError, match="must end in .weights.h5"):
        soups.save(soups.uniform(paths[:1]), tmp_path / "soup.h5")
    with pytest.raises(ValueError, match=r"non-negative weights.*Received: weights=\[1.0\]"):
        soups.running_mean(paths[:2], weights=[1])


def test_model_that_does_not_match_the_ingredients_is_named(paths):
    with pytest.raises(ValueError, match=r"shape \(4, 3\) in .*epoch_000.* but \(4, 7\) in model"):
        soups.Evaluator(conv_model(num_classes=7), soups.read(paths[0]).layout)
