"""GroupedAdamW against Keras' AdamW through Keras' own training step, and against AdamW's formula by hand."""

import numpy as np
import pytest

import keras

from ich_keras.optimizers import GroupedAdamW

# The small model's kernel (8x40 = 320 elements) and every bias and norm variable fall under this; the head's
# kernel (40x12 = 480) does not: both paths of the update run.
GROUP_BELOW = 400


def _model():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((8,))
    # No bias before the norm: its gradient is rounding noise, which Adam turns into full-size steps of either sign.
    x = keras.layers.Dense(40, use_bias=False, name="hidden")(inputs)
    x = keras.layers.BatchNormalization(name="norm")(x)
    return keras.Model(inputs, keras.layers.Dense(12, name="head")(keras.ops.relu(x)))


def _trained(optimizer, steps: int = 5) -> list[np.ndarray]:
    model = _model()
    model.compile(optimizer=optimizer, loss="mse")
    rng = np.random.default_rng(0)
    for _ in range(steps):
        # Targets far off, so the gradients' global norm is well above the clip norm and clipping acts.
        model.train_on_batch(rng.standard_normal((16, 8)).astype("float32"),
                             50 * rng.standard_normal((16, 12)).astype("float32"))
    weights = [np.asarray(v) for v in model.variables]
    if optimizer.use_ema:
        weights += [np.asarray(v) for v in optimizer._model_variables_moving_average]
    return weights


SETTINGS = {
    "global clipnorm and a schedule": dict(
        learning_rate=keras.optimizers.schedules.CosineDecay(0.05, 10), weight_decay=0.01, global_clipnorm=1.0),
    "no clipping": dict(learning_rate=0.01, weight_decay=0.05),
    "accumulation and EMA": dict(learning_rate=0.02, weight_decay=0.01, global_clipnorm=0.5,
                                 gradient_accumulation_steps=2, use_ema=True, ema_momentum=0.9),
    "per-variable clipnorm": dict(learning_rate=0.02, clipnorm=0.3),
}


@pytest.mark.parametrize("setting", SETTINGS)
def test_training_matches_keras_adamw(setting):
    reference = _trained(keras.optimizers.AdamW(**SETTINGS[setting]))
    grouped = _trained(GroupedAdamW(**SETTINGS[setting], group_below=GROUP_BELOW))
    ungrouped = _trained(GroupedAdamW(**SETTINGS[setting], group_below=0))
    assert all(np.array_equal(a, b) for a, b in zip(reference, ungrouped))  # nothing grouped: Keras' ops exactly
    for a, b in zip(reference, grouped):
        np.testing.assert_allclose(b, a, rtol=2e-5, atol=1e-6)
    assert any(not np.array_equal(a, b) for a, b in zip(reference, _trained(keras.optimizers.AdamW(0.011))))


def test_small_variables_share_one_pair_of_moments():
    model = _model()
    optimizer = GroupedAdamW(group_below=GROUP_BELOW)
    optimizer.build(model.trainable_variables)
    names = [v.name for v in optimizer.variables]
    assert "grouped_momentum_float32" in names and "grouped_velocity_float32" in names
    sizes = [int(np.prod(v.shape)) for v in model.trainable_variables]
    grouped = {v.name: v for v in optimizer.variables}["grouped_momentum_float32"]
    assert grouped.shape == (sum(s for s in sizes if s < GROUP_BELOW),)
    per_variable = [v for v in optimizer.variables if v.name.endswith(("_momentum", "_velocity"))]
    assert sorted(tuple(v.shape) for v in per_variable) == [(40, 12), (40, 12)]  # the head's kernel only


def test_one_step_follows_the_adamw_formula():
    """Two variables, one grouped and one not, a gradient of norm 13 clipped to 1: each element moves by
    lr * sign(g) after the decay (Adam's first step), up to epsilon."""
    small = keras.Variable(np.array([1.0, -2.0, 0.5], "float32"))
    large = keras.Variable(np.full((2, 2), 4.0, "float32"))
    lr, wd, eps = 0.1, 0.01, 1e-7
    optimizer = GroupedAdamW(lr, weight_decay=wd, global_clipnorm=1.0, epsilon=eps, group_below=4)
    grads = [np.array([3.0, -4.0, 0.0], "float32"), np.full((2, 2), 6.0, "float32")]
    optimizer.apply([keras.ops.convert_to_tensor(g) for g in grads], [small, large])

    def by_hand(w, g):
        g = g / 13.0  # global norm sqrt(9 + 16 + 4 * 36) = 13
        m, v = 0.1 * g, 0.001 * g**2
        alpha = lr * np.sqrt(1 - 0.999) / (1 - 0.9)
        return w * (1 - wd * lr) - m * alpha / (np.sqrt(v) + eps)

    np.testing.assert_allclose(np.asarray(small), by_hand(np.array([1.0, -2.0, 0.5]), grads[0]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(large), by_hand(np.full((2, 2), 4.0), grads[1]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(small), [0.999 - 0.1, -1.998 + 0.1, 0.4995], rtol=1e-5)


def test_a_variable_without_gradient_keeps_its_moments():
    first, second = keras.Variable(np.ones(3, "float32")), keras.Variable(np.ones(2, "float32"))
    optimizer = GroupedAdamW(0.1)
    reference = keras.optimizers.AdamW(0.1)
    twins = [keras.Variable(np.ones(3, "float32")), keras.Variable(np.ones(2, "float32"))]
    with pytest.warns(UserWarning, match="Gradients do not exist"):
        optimizer.apply([None, keras.ops.ones(2)], [first, second])
    with pytest.warns(UserWarning, match="Gradients do not exist"):
        reference.apply([None, keras.ops.ones(2)], twins)
    momentum = {v.name: np.asarray(v) for v in optimizer.variables}["grouped_momentum_float32"]
    np.testing.assert_array_equal(momentum[:3], 0.0)
    np.testing.assert_allclose(momentum[3:], 0.1)
    np.testing.assert_array_equal(np.asarray(first), 1.0)
    np.testing.assert_allclose(np.asarray(second), np.asarray(twins[1]), rtol=1e-6)


def test_config_round_trip_and_amsgrad_refused():
    optimizer = GroupedAdamW(0.003, weight_decay=0.02, global_clipnorm=2.0, group_below=128)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(restored, GroupedAdamW)
    assert (restored.group_below, restored.global_clipnorm, restored.weight_decay) == (128, 2.0, 0.02)
    with pytest.raises(ValueError, match="amsgrad"):
        GroupedAdamW(amsgrad=True)


def test_a_state_saved_with_keras_adamw_is_refused_by_name(tmp_path):
    from ich_keras import resume

    saved = _model()
    saved.compile(optimizer=keras.optimizers.AdamW(), loss="mse")
    saved.optimizer.build(saved.trainable_variables)
    resume.save_state(tmp_path, saved, epoch=1, record={})
    model = _model()
    model.compile(optimizer=GroupedAdamW(group_below=GROUP_BELOW), loss="mse")
    with pytest.raises(ValueError, match=r"optimizer variables but the rebuilt optimizer has .*ich_keras version"):
        resume.restore_state(model, resume.load_state(tmp_path))


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_matches_keras_adamw(policy):
    """float32 variables, half-precision compute; under mixed_float16 Keras wraps either optimizer in its
    LossScaleOptimizer."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        reference = _trained(keras.optimizers.AdamW(0.01, weight_decay=0.01, global_clipnorm=1.0))
        grouped = _trained(GroupedAdamW(0.01, weight_decay=0.01, global_clipnorm=1.0, group_below=GROUP_BELOW))
    finally:
        keras.config.set_dtype_policy(previous)
    for a, b in zip(reference, grouped):
        np.testing.assert_allclose(b, a, rtol=2e-5, atol=1e-6)


def test_the_end_of_fit_leaves_the_raw_weights_and_an_unbuilt_ema_alone():
    # Keras' fit ends with finalize_variable_values, which copied the EMA into the model, and raised a TypeError
    # (hiding the Ctrl-C that stopped fit) where the first step had not built the averages yet.
    variable = keras.Variable(np.ones(3, np.float32))
    optimizer = GroupedAdamW(1e-1, use_ema=True, ema_momentum=0.9)
    optimizer.finalize_variable_values([variable])  # never built
    optimizer.apply_gradients([(keras.ops.ones(3), variable)])
    trained = np.array(variable.numpy())
    optimizer.finalize_variable_values([variable])
    np.testing.assert_array_equal(variable.numpy(), trained)
