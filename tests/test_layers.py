"""ShiftedDepthwiseConv2D is keras' DepthwiseConv2D, computed another way."""

import keras
import numpy as np
import pytest

from ich_keras.models.layers import ShiftedDepthwiseConv2D


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

    def input_gradient(layer):
        import jax

        return jax.grad(lambda inputs: keras.ops.sum(layer(inputs) ** 2))(x)

    np.testing.assert_allclose(input_gradient(ours), input_gradient(reference), rtol=1e-4, atol=1e-4)
