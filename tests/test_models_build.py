"""`models.build` whatever the notebook's Keras settings, and its arguments as a notebook computes them."""

import numpy as np
import pytest

import ich_keras  # noqa: F401  (sets the JAX backend: must come before keras)
import keras  # noqa: E402
from ich_keras import models  # noqa: E402
from ich_keras.errors import UserError  # noqa: E402


@pytest.fixture
def channels_first_float16():
    """The settings a ~/.keras/keras.json may hold, restored after the test."""
    data_format, floatx = keras.config.image_data_format(), keras.config.floatx()
    keras.config.set_image_data_format("channels_first")
    keras.config.set_floatx("float16")
    yield
    keras.config.set_image_data_format(data_format)
    keras.config.set_floatx(floatx)


@pytest.mark.parametrize("name", ["resnet50", "test_coatnet"])
def test_a_channels_first_float16_notebook_builds_the_same_nhwc_float32_model(name, channels_first_float16):
    # Under channels_first the ResNet-50 read the image width as its channel count (a (7, 7, 32, 64) stem kernel)
    # and computed nonsense without an error; CoAtNet failed inside Keras.
    model = models.build(name, np.int64(3), 32)  # a class count as numpy gives it: labels.max() + 1
    assert (keras.config.image_data_format(), keras.config.floatx()) == ("channels_first", "float16")  # restored
    keras.config.set_image_data_format("channels_last")
    keras.config.set_floatx("float32")
    reference = models.build(name, 3, 32)
    reference.set_weights(model.get_weights())  # same shapes, so the same layout
    images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    assert model.inputs[0].dtype == "float32"
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(images)),
                                  keras.ops.convert_to_numpy(reference(images)))


@pytest.mark.parametrize(("num_classes", "image_size", "named"), [("3", 32, "num_classes='3'"),
                                                                   (3.5, 32, "num_classes=3.5"),
                                                                   (3, "32", "image_size='32'")])
def test_a_class_count_or_size_that_is_not_a_whole_number_is_named(num_classes, image_size, named):
    with pytest.raises(UserError, match=f"must be a whole number. Received: {named}"):
        models.build("test_coatnet", num_classes, image_size)


@pytest.mark.parametrize("stored", [None, "float16", "mixed_bfloat16"])
def test_float32_variables_whatever_policy_and_the_policy_as_it_was_after(stored):
    # Keras caches a policy made from floatx at its first read: a build that read it under its own float32 left the
    # notebook's float16 floatx without effect for good, and a float16 policy cached before gave float16 weights.
    from keras.src.backend.common import global_state

    saved, floatx = global_state.get_global_attribute("dtype_policy", None), keras.config.floatx()
    try:
        keras.config.set_floatx("float16")
        global_state.set_global_attribute("dtype_policy", None if stored is None else keras.DTypePolicy(stored))
        model = models.build("test_coatnet", 3, 32)
        assert {v.dtype for v in model.weights} == {"float32"}  # mixed_bfloat16 keeps float32 variables too
        after = global_state.get_global_attribute("dtype_policy", None)
        assert (after if after is None else after.name) == stored
        assert keras.config.floatx() == "float16"
    finally:
        global_state.set_global_attribute("dtype_policy", saved)
        keras.config.set_floatx(floatx)
