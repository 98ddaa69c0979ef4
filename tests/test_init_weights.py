"""The one loader (`ich_keras.init_weights`): every file the project writes, with the same or another class count."""

import h5py
import numpy as np
import pytest

from ich_keras import models
from ich_keras.init_weights import build_with_weights, load_weights, save_model_weights
from ich_keras.weight_files import ModelSource, read, save
from soup_fixtures import conv_model, randomize, trained_conv_model


def _assert_equal_but_head(model, source, head="head"):
    for layer in model.layers:
        if layer.weights and layer.name != head:
            for a, b in zip(layer.get_weights(), source.get_layer(layer.name).get_weights()):
                np.testing.assert_array_equal(a, b)


def test_a_compiled_models_file_of_another_class_count_loads_with_a_fresh_head(tmp_path, capsys):
    # A file a compiled model wrote with Keras' save_weights holds optimizer/ too: what fit checkpoints held before.
    source = randomize(trained_conv_model(), seed=3)
    path = tmp_path / "epoch_008.weights.h5"
    source.save_weights(path)
    with h5py.File(path) as f:
        assert "optimizer" in f
    model = conv_model(num_classes=5)
    fresh_head = model.get_layer("head").get_weights()
    assert load_weights(model, path) == ["layers/dense/vars/0", "layers/dense/vars/1"]
    _assert_equal_but_head(model, source)
    for a, b in zip(model.get_layer("head").get_weights(), fresh_head):
        np.testing.assert_array_equal(a, b)
    assert "head (3 classes) was re-initialised for 5 classes" in capsys.readouterr().out


def test_a_soup_file_loads_exactly_and_a_head_of_another_count_can_be_refused(tmp_path):
    source = randomize(conv_model(), seed=1)
    path = save(read(ModelSource(source)), tmp_path / "soup.weights.h5")
    model = conv_model()
    assert load_weights(model, path, new_head=False) == []
    _assert_equal_but_head(model, source, head=None)
    with pytest.raises(ValueError, match=r"another class count.*\(4, 3\) in the file, \(4, 7\) in the model"):
        load_weights(conv_model(num_classes=7), path, new_head=False)


def test_anything_beyond_the_head_is_an_error_naming_the_arrays(tmp_path):
    path = tmp_path / "wide.weights.h5"
    conv_model(width=6).save_weights(path)
    with pytest.raises(ValueError, match=r"beyond its head.*stem_conv/kernel is \(3, 3, 3, 6\) in the file, "
                                         r"\(3, 3, 3, 4\) in the model"):
        load_weights(conv_model(), path)
    no_bn = tmp_path / "no_bn.weights.h5"
    conv_model(batchnorm=False).save_weights(no_bn)
    with pytest.raises(ValueError, match=r"another architecture.*missing from the file \(4\): \['stem_bn/gamma'"):
        load_weights(conv_model(), no_bn)
    with pytest.raises(ValueError, match=r"not found.*missing\.weights\.h5"):
        load_weights(conv_model(), tmp_path / "missing.weights.h5")


def test_coatnet_1000_class_file_into_another_class_count_loads_and_used_as_itself_at_another_size_is_refused(
        tmp_path):
    path = tmp_path / "imagenet.weights.h5"
    models.build("coatnet_tiny", 1000, 64).save_weights(path)
    model = models.build("coatnet_tiny", 4, 64)
    assert load_weights(model, path, verbose=False) == ["layers/dense/vars/0", "layers/dense/vars/1"]
    # Another image size: an init's relative-position tables are resized (tests/test_init_resize.py); weights used
    # as themselves must fit as they are, which no head swap explains.
    with pytest.raises(ValueError, match=r"beyond its head.*relative_position_bias_table"):
        load_weights(models.build("coatnet_tiny", 1000, 96), path, new_head=False)


@pytest.mark.parametrize("size", [32, 64])  # 64: the init's relative-position tables resized too
def test_building_with_weights_equals_building_then_loading(tmp_path, size):
    import keras

    path = tmp_path / "imagenet.weights.h5"
    save_model_weights(randomize(models.build("coatnet_tiny", 1000, 32), seed=4), path)
    built = {}
    for way in ("deferred", "plain"):
        keras.utils.set_random_seed(5)  # the new head's draws, alike in both
        if way == "deferred":
            built[way] = build_with_weights(lambda: models.build("coatnet_tiny", 3, size), path, verbose=False)
        else:
            built[way] = models.build("coatnet_tiny", 3, size)
            load_weights(built[way], path, verbose=False)
    for a, b in zip(built["deferred"].variables, built["plain"].variables):
        assert a.path == b.path
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    images = np.random.default_rng(0).standard_normal((2, size, size, 3)).astype("float32")
    deferred, plain = (built[way].predict(images, verbose=0) for way in ("deferred", "plain"))
    np.testing.assert_array_equal(deferred, plain)
    # load_weights' errors, unchanged: weights used as themselves must fit as they are
    with pytest.raises(ValueError, match="another class count" if size == 32 else "another image size"):
        build_with_weights(lambda: models.build("coatnet_tiny", 3, size), path, new_head=False)


def _stored_bytes(path) -> int:
    sizes = []
    with h5py.File(path) as f:
        f.visititems(lambda _, item: sizes.append(item.nbytes) if isinstance(item, h5py.Dataset) else None)
    return sum(sizes)


def test_checkpoints_hold_model_weights_only(tmp_path):
    model = trained_conv_model()
    ours = save_model_weights(model, tmp_path / "ours.weights.h5")
    with h5py.File(ours) as f:
        assert "optimizer" not in f and "layers" in f
    assert _stored_bytes(ours) == sum(v.numpy().nbytes for v in model.variables)
    fresh = conv_model()
    fresh.load_weights(ours)  # Keras reads it as its own
    _assert_equal_but_head(fresh, model, head=None)
    assert load_weights(conv_model(), ours, new_head=False) == []


def test_a_coatnet_checkpoint_is_the_size_of_its_soup_file(tmp_path):
    import keras

    model = models.build("coatnet_tiny", 10, 64)
    model.compile(keras.optimizers.AdamW(), "mse")
    model.optimizer.build(model.trainable_variables)  # what a compiled, training model has
    keras_file = tmp_path / "keras.weights.h5"
    model.save_weights(keras_file)
    ours = save_model_weights(model, tmp_path / "epoch_001.weights.h5")
    soup_file = save(read(ModelSource(model)), tmp_path / "soup.weights.h5")
    assert keras_file.stat().st_size > 2.5 * ours.stat().st_size  # Keras' file also holds AdamW's two moments
    assert abs(ours.stat().st_size / soup_file.stat().st_size - 1) < 0.02


def test_non_finite_weights_are_refused_naming_the_array(tmp_path):
    model = randomize(conv_model(), seed=2)
    model.get_layer("stem_conv").kernel.assign(np.full((3, 3, 3, 4), np.nan, "float32"))
    path = tmp_path / "diverged.weights.h5"
    model.save_weights(path)
    with pytest.raises(ValueError, match=r"non-finite values \(NaN or inf\) in layers/conv2d/vars/0.*diverged"):
        load_weights(conv_model(), path)


def test_a_new_head_drawn_from_its_own_seed_is_the_same_whatever_the_global_seed(tmp_path):
    """fit draws a new head from model.head_seed: fine-tunes of one W0 with other train.seed values start from one
    head, which model soups and the merges from W0 average; the global seed still draws the rest as before."""
    import keras

    path = tmp_path / "imagenet.weights.h5"
    save_model_weights(randomize(models.build("coatnet_tiny", 1000, 32), seed=4), path)
    heads = {}
    for global_seed, head_seed in ((0, 7), (1, 7), (1, 8), (0, None), (1, None)):
        keras.utils.set_random_seed(global_seed)
        model = build_with_weights(lambda: models.build("coatnet_tiny", 3, 32), path, verbose=False,
                                   head_seed=head_seed)
        heads[global_seed, head_seed] = [w.numpy() for w in model.get_layer("head.fc").weights]
    kernel = {key: weights[0] for key, weights in heads.items()}
    np.testing.assert_array_equal(kernel[0, 7], kernel[1, 7])
    assert not np.allclose(kernel[1, 7], kernel[1, 8])
    assert not np.allclose(kernel[0, None], kernel[1, None])  # without a head seed: the global seed's draws
    assert kernel[0, 7].std() > 0 and not np.array_equal(kernel[0, 7], kernel[0, None])
    np.testing.assert_array_equal(heads[0, 7][1], 0.0)  # the bias draws nothing: zeros, seeded or not
