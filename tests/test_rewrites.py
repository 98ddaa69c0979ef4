"""The CPU rewrites: ShiftedDepthwiseConv2D, PointwiseConv2D, PatchGradientConv2D and FusedBatchNormalization are
keras' DepthwiseConv2D, Conv2D and BatchNormalization computed another way; gradient_boundary is the identity with
another gradient, and contract_leading_axes a kernel gradient's contraction, whole or in two halves;
ICH_KERAS_CONV_IMPL chooses them (and the attention's kernels, tests/test_attention_kernels.py)."""

import keras
import numpy as np
import pytest

from ich_keras.models.layers import RelPosAttention
from ich_keras.models.rewrites import (
    FusedBatchNormalization,
    PatchGradientConv2D,
    PointwiseConv2D,
    ResidualAdd,
    ShiftedDepthwiseConv2D,
    contract_leading_axes,
    fused_batch_norm,
    gradient_boundary,
)


@pytest.mark.parametrize("kernel, stride, padding, bias", [
    (3, 1, "same", False), (3, 2, "valid", False), (3, 1, "valid", True),
    (2, 1, "same", False), ((3, 2), 1, "same", False),  # even kernels: Keras' own computation
])
def test_shifted_depthwise_equals_keras_depthwise(kernel, stride, padding, bias):
    x = np.random.default_rng(0).standard_normal((2, 10, 10, 6)).astype(np.float32)
    reference = keras.layers.DepthwiseConv2D(kernel, strides=stride, padding=padding, use_bias=bias,
                                             bias_initializer="random_normal")
    ours = ShiftedDepthwiseConv2D(kernel, strides=stride, padding=padding, use_bias=bias)
    expected = reference(x)
    ours.build(x.shape)
    ours.set_weights(reference.get_weights())
    np.testing.assert_allclose(ours(x), expected, atol=1e-5)

    np.testing.assert_allclose(input_gradient(ours, x), input_gradient(reference, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape, stride, padding", [((2, 40, 40, 600), 1, "same"), ((2, 41, 41, 600), 2, "valid")])
def test_shifted_depthwise_kernel_gradient_equals_keras(shape, stride, padding):
    # Large enough that the kernel gradient is summed over several blocks of rows (8 rows of 40, 10 of 20).
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    reference = keras.layers.DepthwiseConv2D(3, strides=stride, padding=padding, use_bias=False)
    ours = ShiftedDepthwiseConv2D(3, strides=stride, padding=padding, use_bias=False)
    reference.build(shape)
    ours.build(shape)
    ours.set_weights(reference.get_weights())
    np.testing.assert_allclose(kernel_gradient(ours, x), kernel_gradient(reference, x), rtol=1e-4, atol=1e-2)


@pytest.mark.parametrize("channels, filters", [(5, 12), (12, 5)])
def test_pointwise_kernel_gradient_equals_keras(channels, filters):
    # Both forms of the kernel gradient: the input transposed (widening) and the output gradient (narrowing).
    x = np.random.default_rng(2).standard_normal((3, 4, 6, channels)).astype(np.float32)
    reference = keras.layers.Conv2D(filters, 1, use_bias=False)
    ours = PointwiseConv2D(filters, 1, use_bias=False)
    reference.build(x.shape)
    ours.build(x.shape)
    ours.set_weights(reference.get_weights())
    np.testing.assert_allclose(kernel_gradient(ours, x), kernel_gradient(reference, x), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("shape, out, halves", [
    ((4, 8, 8, 3), 5, True), ((4, 8, 8, 5), 3, True),  # many rows, a small result: two halves
    ((1, 9, 9, 3), 5, False),                           # an odd row count
    ((2, 2, 2, 6), 5, False),                           # few rows for the result's size
])
def test_contract_leading_axes_is_the_kernel_gradient(shape, out, halves):
    import jax

    rng = np.random.default_rng(10)
    x = rng.standard_normal(shape).astype(np.float32)
    grad_out = rng.standard_normal((*shape[:-1], out)).astype(np.float32)
    expected = np.einsum("bhwi,bhwo->io", x, grad_out)
    np.testing.assert_allclose(contract_leading_axes(x, grad_out), expected, rtol=1e-5, atol=1e-5)
    assert ("reduce_sum" in str(jax.make_jaxpr(contract_leading_axes)(x, grad_out))) == halves


def test_contract_leading_axes_over_a_symbolic_batch_and_in_bfloat16():
    import jax
    import jax.numpy as jnp
    from jax import export

    rng = np.random.default_rng(11)
    x = rng.standard_normal((4, 8, 8, 6)).astype(np.float32)  # two halves with a static batch
    grad_out = rng.standard_normal((4, 8, 8, 2)).astype(np.float32)
    expected = np.einsum("bhwi,bhwo->io", x, grad_out)
    batch = export.symbolic_shape("b")
    symbolic = [jax.ShapeDtypeStruct((*batch, 8, 8, c), np.float32) for c in (6, 2)]
    exported = export.export(jax.jit(contract_leading_axes))(*symbolic)
    np.testing.assert_allclose(exported.call(x, grad_out), expected, rtol=1e-5, atol=1e-5)
    in_bfloat16 = contract_leading_axes(jnp.asarray(x, jnp.bfloat16), jnp.asarray(grad_out, jnp.bfloat16))
    np.testing.assert_allclose(np.asarray(in_bfloat16, np.float32), expected, rtol=3e-2, atol=0.2)


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


@pytest.mark.parametrize("kernel, stride, padding, bias", [(3, 1, "same", False), (3, 2, "valid", True),
                                                          (3, 2, "same", False), (2, 1, "same", True)])
def test_patch_gradient_conv_equals_keras_conv(kernel, stride, padding, bias):
    # "same" pads one side more than the other for the 2x2 kernel, and along the even width at stride 2.
    x = np.random.default_rng(8).standard_normal((3, 11, 10, 5)).astype(np.float32)
    reference = keras.layers.Conv2D(6, kernel, strides=stride, padding=padding, use_bias=bias,
                                    bias_initializer="random_normal", activation="relu")
    ours = PatchGradientConv2D(6, kernel, strides=stride, padding=padding, use_bias=bias, activation="relu")
    expected = reference(x)
    ours.build(x.shape)
    ours.set_weights(reference.get_weights())
    np.testing.assert_array_equal(ours(x), expected)
    np.testing.assert_allclose(input_gradient(ours, x), input_gradient(reference, x), rtol=1e-5, atol=1e-5)
    for got, want in zip(weight_gradients(ours, x), weight_gradients(reference, x)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("first", [1.5, -0.0, np.inf, np.nan])
def test_gradient_boundary_is_the_identity_both_ways(first):
    # Its runtime trip count and zero come from the first element: each kind of value must leave x and its
    # gradient exactly as they are (a NaN or infinite first element included).
    import jax
    import jax.numpy as jnp

    x = np.random.default_rng(3).standard_normal((2, 3, 4)).astype(np.float32)
    x[0, 0, 0] = first
    cotangent = np.random.default_rng(4).standard_normal(x.shape).astype(np.float32)
    cotangent[0, 0, 1] = -0.0
    out, pullback = jax.jit(lambda x: jax.vjp(gradient_boundary, x))(jnp.asarray(x))
    (grad,) = jax.jit(pullback)(jnp.asarray(cotangent))
    np.testing.assert_array_equal(out, x)
    np.testing.assert_array_equal(grad, cotangent)


def test_fused_batch_norm_trains_as_keras_batch_norm():
    import jax

    # Centred inputs: with a large mean, autodiff's gradient through x * inv - mean * inv cancels digits (1e-3
    # relative at mean 3, std 2) that the textbook formula keeps.
    x = np.random.default_rng(0).normal(0.0, 2.0, (4, 5, 5, 6)).astype(np.float32)
    # Seeded: unseeded initializers draw from Keras' global stream, which depends on the tests run before this one.
    layers = [cls(momentum=0.9, epsilon=1e-5, beta_initializer=keras.initializers.RandomNormal(seed=1),
                  gamma_initializer=keras.initializers.RandomNormal(seed=2))
              for cls in (keras.layers.BatchNormalization, FusedBatchNormalization)]
    for layer in layers:
        layer.build(x.shape)
    layers[1].set_weights(layers[0].get_weights())

    def training_step(layer):
        """The loss' gradients (inputs, gamma, beta), the outputs and the moving statistics after one step."""
        def loss(inputs, trainable):
            moving = [v.value for v in layer.non_trainable_variables]
            outputs, moving = layer.stateless_call(trainable, moving, inputs, training=True)
            return keras.ops.sum(keras.ops.sin(outputs)), (outputs, moving)

        trainable = [v.value for v in layer.trainable_variables]
        (grads, (outputs, moving)) = jax.grad(loss, argnums=(0, 1), has_aux=True)(x, trainable)
        return grads, outputs, moving

    (expected_grads, expected, expected_moving), (grads, outputs, moving) = map(training_step, layers)
    np.testing.assert_array_equal(outputs, expected)  # the same forward, term for term
    for ours, reference in zip(moving, expected_moving):
        np.testing.assert_allclose(ours, reference, rtol=1e-6)
    # gamma's and beta's gradients are sums over 100 positions of terms of order 1, which the two formulas add up in
    # different orders: float32 leaves about 1e-5 of that sum either way.
    for ours, reference in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
        np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=3e-5)
    np.testing.assert_array_equal(layers[1](x, training=False), layers[0](x, training=False))  # Keras' own path


def test_fused_batch_norm_differentiates_its_statistics_too():
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(1)
    x, gamma, beta = (rng.standard_normal(shape).astype(np.float32) for shape in ((3, 4, 4, 5), (5,), (5,)))

    def reference(x, gamma, beta):
        mean, variance = jnp.mean(x, (0, 1, 2)), jnp.var(x, axis=(0, 1, 2))
        outputs = (x - mean) * jax.lax.rsqrt(variance + 1e-3) * gamma + beta
        return outputs, mean, variance

    def loss(norm):  # reads all three outputs, so every cotangent is nonzero
        return lambda *args: sum(jnp.sum(jnp.cos(out) * (k + 1)) for k, out in enumerate(norm(*args)))

    ours = jax.grad(loss(lambda *args: fused_batch_norm(*args, 1e-3)), argnums=(0, 1, 2))(x, gamma, beta)
    expected = jax.grad(loss(reference), argnums=(0, 1, 2))(x, gamma, beta)
    for a, b in zip(ours, expected):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def input_gradient(layer, x):
    import jax

    return jax.grad(lambda inputs: keras.ops.sum(layer(inputs) ** 2))(x)


def kernel_gradient(layer, x):
    import jax

    def loss(kernel):
        return keras.ops.sum(layer.stateless_call([kernel], [], x)[0] ** 2)

    return jax.grad(loss)(layer.kernel.value)


def weight_gradients(layer, x):
    """Gradients of sum(layer(x) ** 2) for each of the layer's trainable weights (kernel and bias alike)."""
    import jax

    def loss(weights):
        return keras.ops.sum(layer.stateless_call(weights, [], x)[0] ** 2)

    return jax.grad(loss)([v.value for v in layer.trainable_variables])


def _coatnet_tiny(monkeypatch, impl):
    from ich_keras import models

    monkeypatch.setenv("ICH_KERAS_CONV_IMPL", impl)
    return models.build("coatnet_tiny", num_classes=5, image_size=32)


def test_conv_impl_changes_the_computation_not_layers_weights_files_or_outputs(monkeypatch, tmp_path):
    from ich_keras.init_weights import load_weights
    from ich_keras.weight_files import model_variables

    standard = _coatnet_tiny(monkeypatch, "standard")  # what "auto" builds on a GPU
    rewritten = _coatnet_tiny(monkeypatch, "rewritten")  # and on a CPU
    assert [w.path for w in standard.weights] == [w.path for w in rewritten.weights]
    assert [type(layer) for layer in standard.layers] == [type(layer) for layer in rewritten.layers]
    rewrites = (PointwiseConv2D, PatchGradientConv2D, ShiftedDepthwiseConv2D, FusedBatchNormalization, ResidualAdd)
    chosen = {impl: {layer.rewritten for layer in model.layers if isinstance(layer, rewrites)}
              for impl, model in (("standard", standard), ("rewritten", rewritten))}
    assert chosen == {"standard": {False}, "rewritten": {True}}
    attention = {impl: {(layer.bias_gradient_as_matmul, layer.normalise_after_values)
                        for layer in model.layers if isinstance(layer, RelPosAttention)}
                 for impl, model in (("standard", standard), ("rewritten", rewritten))}
    assert attention == {"standard": {(False, False)}, "rewritten": {(True, True)}}

    # Keras names a layer's group in .weights.h5 after its class: a checkpoint written by one loads into the other.
    assert [key for key, _ in model_variables(standard)] == [key for key, _ in model_variables(rewritten)]
    rewritten.save_weights(tmp_path / "cpu.weights.h5")
    load_weights(standard, tmp_path / "cpu.weights.h5", new_head=False, verbose=False)
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(rewritten.predict_on_batch(x), standard.predict_on_batch(x), rtol=1e-4, atol=1e-4)


def test_conv_impl_auto_rewrites_on_cpu_only(monkeypatch):
    import jax

    from ich_keras.models.rewrites import cpu_rewrites

    monkeypatch.setenv("ICH_KERAS_CONV_IMPL", "auto")
    assert cpu_rewrites() == (jax.default_backend() == "cpu")
    monkeypatch.delenv("ICH_KERAS_CONV_IMPL")
    assert cpu_rewrites() == (jax.default_backend() == "cpu")


def test_conv_impl_unknown_value_names_the_variable(monkeypatch):
    from ich_keras.errors import UserError

    with pytest.raises(UserError, match=r"ICH_KERAS_CONV_IMPL must be one of auto, standard, rewritten.*'cudnn'"):
        _coatnet_tiny(monkeypatch, "cudnn")
