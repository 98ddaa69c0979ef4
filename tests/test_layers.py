"""ShiftedDepthwiseConv2D and PointwiseConv2D are keras' DepthwiseConv2D and Conv2D, computed another way."""

import keras
import numpy as np
import pytest

from ich_keras.models.layers import PointwiseConv2D, ShiftedDepthwiseConv2D


@pytest.mark.parametrize("stride, padding, bias", [(1, "same", False), (2, "valid", False), (1, "valid", True)])
def test_shifted_depthwise_equals_keras_depthwise(stride, padding, bias):
    x = np.random.default_rng(0).standard_normal((2, 10, 10, 6)).astype(np.float32)
    reference = keras.layers.DepthwiseConv2D(3, strides=stride, padding=padding, use_bias=bias,
                                             bias_initializer="random_normal")
    ours = ShiftedDepthwiseConv2D(3, strides=stride, padding=padding, use_bias=bias)
    expected = reference(x)
    ours.build(x.shape)
    ours.set_weights(reference.get_weights())
    np.testing.assert_allclose(ours(x), expected, atol=1e-5)

    np.testing.assert_allclose(input_gradient(ours, x), input_gradient(reference, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel, stride, bias", [(1, 1, True), (1, 1, False), (1, 2, True), (3, 1, True)])
def test_pointwise_equals_keras_conv(kernel, stride, bias):
    # Only 1x1 at stride 1 takes the matmul path; other shapes must fall back to Conv2D unchanged.
    x = np.random.default_rng(0).standard_normal((2, 6, 6, 5)).astype(np.float32)
    reference = keras.layers.Conv2D(7, kernel, strides=stride, use_bias=bias, bias_initializer="random_normal",
                                    activation="relu")
    ours = PointwiseConv2D(7, kernel, strides=stride, use_bias=bias, activation="relu")
    expected = reference(x)
    ours.build(x.shape)
    ours.set_weights(reference.get_weights())
    np.testing.assert_allclose(ours(x), expected, atol=1e-5)
    np.testing.assert_allclose(input_gradient(ours, x), input_gradient(reference, x), rtol=1e-4, atol=1e-4)


def input_gradient(layer, x):
    import jax

    return jax.grad(lambda inputs: keras.ops.sum(layer(inputs) ** 2))(x)


def _coatnet_tiny(monkeypatch, impl):
    from ich_keras import models

    monkeypatch.setenv("ICH_KERAS_CONV_IMPL", impl)
    return models.build("coatnet_tiny", num_classes=5, image_size=32)


def test_conv_impl_changes_layer_classes_not_names_weights_or_outputs(monkeypatch):
    standard = _coatnet_tiny(monkeypatch, "standard")
    rewritten = _coatnet_tiny(monkeypatch, "rewritten")
    assert [w.path for w in standard.weights] == [w.path for w in rewritten.weights]
    kinds = {impl: {type(layer) for layer in model.layers} for impl, model in (("standard", standard),
                                                                               ("rewritten", rewritten))}
    assert not kinds["standard"] & {PointwiseConv2D, ShiftedDepthwiseConv2D}
    assert {PointwiseConv2D, ShiftedDepthwiseConv2D} <= kinds["rewritten"]

    rewritten.set_weights(standard.get_weights())
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(rewritten.predict_on_batch(x), standard.predict_on_batch(x), rtol=1e-4, atol=1e-4)


def test_conv_impl_auto_rewrites_on_cpu_only(monkeypatch):
    import jax

    from ich_keras.models.layers import rewritten_convs

    monkeypatch.setenv("ICH_KERAS_CONV_IMPL", "auto")
    assert rewritten_convs() == (jax.default_backend() == "cpu")
    monkeypatch.delenv("ICH_KERAS_CONV_IMPL")
    assert rewritten_convs() == (jax.default_backend() == "cpu")


def test_conv_impl_unknown_value_names_the_variable(monkeypatch):
    from ich_keras.errors import UserError

    with pytest.raises(UserError, match=r"ICH_KERAS_CONV_IMPL must be one of auto, standard, rewritten.*'cudnn'"):
        _coatnet_tiny(monkeypatch, "cudnn")
