"""Each private Keras / keras-hub API in `ich_keras._keras_compat`, against the installed versions: an upgrade that
moves or changes one fails here, by name. The package itself touches no other private API."""

import inspect
import re
import subprocess
import sys
from pathlib import Path

import h5py
import jax
import keras
import numpy as np

from ich_keras import _keras_compat

ROOT = Path(__file__).resolve().parents[1]


def _nested_model():
    inner = keras.Sequential([keras.layers.Dense(3, name="inner_dense"), keras.layers.BatchNormalization(name="bn")],
                             name="inner")
    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(inner(inputs)))


def test_keras_hub_converters_and_blocks_have_what_we_call():
    convert_resnet, convert_densenet = _keras_compat.keras_hub_timm_converters()
    for module in (convert_resnet, convert_densenet):
        assert callable(module.convert_weights) and callable(module.convert_backbone_config)
    assert convert_resnet.convert_backbone_config({"architecture": "resnet50"})["stackwise_num_blocks"] == [3, 4, 6, 3]
    assert callable(_keras_compat.keras_hub_vit_converter().convert_weights)
    blocks = _keras_compat.keras_hub_densenet_blocks()
    assert callable(blocks.apply_dense_block) and callable(blocks.apply_transition_block)
    assert 0 < blocks.BN_EPSILON < 1e-4


def test_nested_layers_reach_inside_sub_models():
    names = {layer.name for layer in _keras_compat.nested_layers(_nested_model())}
    assert {"inner", "inner_dense", "bn", "head"} <= names


def test_saved_variables_are_keyed_like_the_weights_file(tmp_path):
    model = _nested_model()
    path = tmp_path / "m.weights.h5"
    model.save_weights(path)
    written = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: written.update({name: item[()]}) if isinstance(item, h5py.Dataset) else None)
    walked = {}
    for inner_path, entries in _keras_compat.saved_variables(model).items():
        group = "" if inner_path == "__root__" else f"{inner_path}/"
        walked.update({f"{group}vars/{index}": np.asarray(v) for index, v in entries.items()})
    assert walked.keys() == written.keys()
    assert all(np.array_equal(walked[k], written[k]) for k in written)


def test_ema_variables_follow_the_trainable_variables():
    model = _nested_model()
    optimizer = keras.optimizers.AdamW(use_ema=True)
    optimizer.build(model.trainable_variables)
    averages = _keras_compat.ema_variables(optimizer)
    assert [tuple(a.shape) for a in averages] == [tuple(v.shape) for v in model.trainable_variables]


def test_the_optimizer_hooks_grouped_adamw_overrides_are_there():
    hooks = ("_clip_gradients", "_apply_weight_decay", "_backend_update_step", "_get_variable_index",
             "_use_weight_decay")
    parameters = {name: list(inspect.signature(getattr(keras.optimizers.Optimizer, name)).parameters) for name in hooks}
    assert parameters == {"_clip_gradients": ["self", "grads"], "_apply_weight_decay": ["self", "variables"],
                          "_backend_update_step": ["self", "grads", "trainable_variables", "learning_rate"],
                          "_get_variable_index": ["self", "variable"], "_use_weight_decay": ["self", "variable"]}
    # Keras' JAX optimizer calls the three overridden ones, in this order, on every update.
    source = inspect.getsource(keras.optimizers.Optimizer._backend_apply_gradients)
    calls = [source.index(f"self.{name}(") for name in ("_clip_gradients", "_apply_weight_decay",
                                                         "_backend_update_step")]
    assert calls == sorted(calls)


def test_deferred_initializers_run_only_for_what_was_not_assigned():
    keras.utils.set_random_seed(7)
    reference = _nested_model()
    keras.utils.set_random_seed(7)
    with _keras_compat.deferred_initializers() as created:
        model = _nested_model()
    assert len(created) == len(model.variables) and all(v._value is None for v in created)  # nothing drawn yet
    loaded = model.get_layer("head").kernel
    loaded.assign(np.full(loaded.shape, 0.5, np.float32))
    assert _keras_compat.finish_initialization(created) == [v for v in created if v is not loaded]
    np.testing.assert_array_equal(loaded.numpy(), 0.5)
    for variable, expected in zip(model.variables, reference.variables):
        if variable is not loaded:  # the same seeds as a plain build: the same draws, bit for bit
            np.testing.assert_array_equal(variable.numpy(), expected.numpy())
    # Keras' own list of pending variables is left as it was: a later stateless call initialises nothing twice.
    model.stateless_call(model.trainable_variables, model.non_trainable_variables, np.zeros((1, 4), np.float32))


def test_deferred_variables_take_the_distributions_layout():
    distribution = keras.distribution.DataParallel(devices=jax.devices()[:1])
    with distribution.scope():
        plain = _nested_model()
        with _keras_compat.deferred_initializers() as created:
            model = _nested_model()
        for variable in created:
            variable.assign(np.zeros(variable.shape, variable.dtype))
        _keras_compat.finish_initialization(created)
    # On one device every sharding looks alike; the layout each variable was given is what differs when missed.
    layouts = [(v._layout.axes, v.value.sharding) for v in model.variables]
    assert layouts == [(v._layout.axes, v.value.sharding) for v in plain.variables]


def test_no_other_module_touches_keras_or_keras_hub_internals():
    found = subprocess.run(["grep", "-rn", r"keras.src\|keras_hub.src", "ich_keras"], cwd=ROOT, capture_output=True,
                           text=True).stdout.splitlines()
    assert [line for line in found if not line.startswith("ich_keras/_keras_compat.py")] == []
    private = re.compile(
        r"\.(_flatten_layers|_model_variables_moving_average|_called|_save_state|_deferred_initialize|_initialize)\b")
    hooks = re.compile(r"\b(_clip_gradients|_apply_weight_decay|_backend_update_step|_get_variable_index|"
                       r"_use_weight_decay)\b")
    for path in (ROOT / "ich_keras").rglob("*.py"):
        if path.name != "_keras_compat.py":
            assert not private.search(path.read_text()), path
        if path.name not in ("_keras_compat.py", "optimizers.py"):  # the optimizer's hooks, in their one subclass
            assert not hooks.search(path.read_text()), path
    assert sys.modules["ich_keras._keras_compat"] is _keras_compat
