"""The CoAtNet attention's CPU kernels: add_attention_bias is an addition with another gradient, and
softmax_weighted_values is softmax(logits) @ values with the sums divided out last."""

import numpy as np
import pytest

from ich_keras.models.attention_kernels import add_attention_bias, softmax_weighted_values


@pytest.mark.parametrize("batch", [1, 5])
def test_attention_bias_gradient_is_autodiffs_sum_over_the_batch(batch):
    import jax

    rng = np.random.default_rng(5)
    logits = rng.standard_normal((batch, 3, 6, 6)).astype(np.float32)
    bias = rng.standard_normal((3, 6, 6)).astype(np.float32)
    probe = rng.standard_normal(logits.shape).astype(np.float32)  # so that every element's gradient differs

    def loss(add):
        return jax.jit(jax.grad(lambda logits, bias: (jax.nn.softmax(add(logits, bias)) * probe).sum(), (0, 1)))

    expected = loss(lambda logits, bias: logits + bias[None])(logits, bias)
    got = loss(add_attention_bias)(logits, bias)
    np.testing.assert_array_equal(add_attention_bias(logits, bias), logits + bias[None])
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-5, atol=1e-6)


def test_attention_bias_gradient_over_a_symbolic_batch():
    # The exporter traces gradients with the batch left symbolic: the vector of ones takes that length.
    import jax
    from jax import export

    bias = np.random.default_rng(6).standard_normal((2, 4, 4)).astype(np.float32)
    logits = np.random.default_rng(7).standard_normal((3, 2, 4, 4)).astype(np.float32)

    def bias_gradient(logits):
        return jax.grad(lambda bias: (add_attention_bias(logits, bias) ** 2).sum())(bias)

    symbolic = jax.ShapeDtypeStruct((*export.symbolic_shape("b"), 2, 4, 4), np.float32)
    exported = export.export(jax.jit(bias_gradient))(symbolic)
    np.testing.assert_allclose(exported.call(logits), (2 * (logits + bias[None])).sum(0), rtol=1e-5)


@pytest.mark.parametrize("tokens, scale", [(1, 1.0), (7, 1.0), (7, 1000.0)])
def test_softmax_weighted_values_is_softmax_then_matmul(tokens, scale):
    # A 1x1 map has one key; logits in the thousands would overflow exp without the row maximum taken out.
    import jax

    rng = np.random.default_rng(8)
    logits = (scale * rng.standard_normal((2, 3, tokens, tokens))).astype(np.float32)
    values = rng.standard_normal((2, 3, tokens, 4)).astype(np.float32)
    probe = rng.standard_normal((2, 3, tokens, 4)).astype(np.float32)

    def plain(logits, values):
        return jax.nn.softmax(logits, axis=-1) @ values

    def gradients(attend):
        return jax.jit(jax.grad(lambda logits, values: (attend(logits, values) * probe).sum(), (0, 1)))(logits, values)

    got = np.asarray(softmax_weighted_values(logits, values))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, plain(logits, values), rtol=1e-5, atol=1e-6)
    for got_grad, expected_grad in zip(gradients(softmax_weighted_values), gradients(plain)):
        np.testing.assert_allclose(got_grad, expected_grad, rtol=1e-4, atol=1e-5)


def test_softmax_weighted_values_in_mixed_precision():
    # Under mixed precision the logits are float32 and the values bfloat16: the output is bfloat16, and within
    # bfloat16's rounding of the float32 result.
    import jax.numpy as jnp

    rng = np.random.default_rng(9)
    logits = rng.standard_normal((1, 2, 50, 50)).astype(np.float32)
    values = rng.standard_normal((1, 2, 50, 8)).astype(np.float32)
    got = softmax_weighted_values(jnp.asarray(logits), jnp.asarray(values, jnp.bfloat16))
    assert got.dtype == jnp.bfloat16
    expected = softmax_weighted_values(logits, values)
    np.testing.assert_allclose(np.asarray(got, np.float32), expected, rtol=2e-2, atol=2e-2)
