"""Every use of a private Keras or keras-hub API, in one place; `tests/test_keras_compat.py` pins each against the
installed versions, so an upgrade that moves one fails there, naming it, instead of deep inside a command.

Why each is needed (none has a public equivalent in Keras 3.15 / keras-hub 0.32):
- keras-hub's timm and Hugging Face converters and DenseNet blocks (`keras_hub.src.utils...`,
  `keras_hub.src.models.densenet`): the baselines are built and filled exactly as keras-hub does it.
- `Layer._flatten_layers`: every nested layer of a model (`model.layers` lists the top level only).
- `keras.src.saving.saving_lib._save_state`: the walk `save_weights` makes, so soups read a model's variables under
  the keys its `.weights.h5` file uses.
- `optimizer._model_variables_moving_average`: the EMA weights (keras' own SwapEMAWeights reads the same list).
- The optimizer's hooks that `ich_keras.optimizers.GroupedAdamW` overrides, `_clip_gradients(grads)`,
  `_apply_weight_decay(variables)` and `_backend_update_step(grads, trainable_variables, learning_rate)`, and the two
  it calls, `_get_variable_index(variable)` and `_use_weight_decay(variable)`: Keras' own extension points for an
  update over all variables at once (its torch backend overrides `_backend_update_step` the same way).
- The global dtype policy as stored (`global_state`'s "dtype_policy", None until first read): `keras.config
  .dtype_policy()` caches one made from `floatx` when it is unset, so only the stored value can be given back as it
  was (`float32_variables`).
- Keras' list of variables created uninitialised in a `StatelessScope`, and `Variable._deferred_initialize`: a
  model whose weights are about to be loaded is built without running its initializers (`deferred_initializers`);
  `Variable._initializer`, the initializer such a variable holds until then, run reseeded for a new head.
"""

from __future__ import annotations

import contextlib


def keras_hub_timm_converters():
    """keras-hub's timm converters: (convert_resnet, convert_densenet) modules, each with `convert_weights` and
    `convert_backbone_config`."""
    from keras_hub.src.utils.timm import convert_densenet, convert_resnet

    return convert_resnet, convert_densenet


def keras_hub_vit_converter():
    """keras-hub's Hugging Face ViT converter module (`convert_weights`; keras-hub has no timm ViT converter)."""
    from keras_hub.src.utils.transformers import convert_vit

    return convert_vit


def keras_hub_densenet_blocks():
    """keras-hub's DenseNet backbone module: `apply_dense_block`, `apply_transition_block`, `BN_EPSILON`."""
    from keras_hub.src.models.densenet import densenet_backbone

    return densenet_backbone


def nested_layers(model) -> list:
    """Every layer inside `model`, nested ones included, `model` itself excluded."""
    return list(model._flatten_layers(include_self=False))


def saved_variables(model) -> dict:
    """{inner path: {index: variable or array}}: what `model.save_weights` would write, before it is written.

    The inner path is the HDF5 group of the `.weights.h5` file ("__root__" for the model's own variables).
    """
    from keras.src.saving import saving_lib

    store = saving_lib.NpzIOStore(None, mode="w")
    saving_lib._save_state(model, weights_store=store, assets_store=None, inner_path="", visited_saveables=set())
    return store.contents


def ema_variables(optimizer) -> list:
    """The optimizer's exponential moving averages of the trainable variables (use_ema=True), in their order."""
    return optimizer._model_variables_moving_average


@contextlib.contextmanager
def float32_variables():
    """Layers built in the block hold float32 variables and take float32 inputs, whatever `floatx` or plain dtype
    policy (float16, bfloat16) a notebook or ~/.keras/keras.json set; a mixed policy (training's mixed_bfloat16:
    float32 variables already) is kept. The caller's settings come back after, an unset policy unset."""
    import keras
    from keras.src.backend.common import global_state

    stored, floatx = global_state.get_global_attribute("dtype_policy", None), keras.config.floatx()
    keras.config.set_floatx("float32")
    if stored is None or stored.variable_dtype != "float32":
        keras.config.set_dtype_policy("float32")
    try:
        yield
    finally:
        global_state.set_global_attribute("dtype_policy", stored)
        keras.config.set_floatx(floatx)


@contextlib.contextmanager
def deferred_initializers():
    """Variables created inside are left uninitialised: no initializer runs (nor compiles) until
    `finish_initialization` gets the yielded list, which holds them in creation order once the block exits. Assign
    them in between; nothing else may read them."""
    import keras
    from keras.src.backend.common import global_state

    key = "uninitialized_variables"  # where a StatelessScope leaves the variables it created
    outer = global_state.get_global_attribute(key)
    global_state.set_global_attribute(key, [])
    created = []
    try:
        with keras.StatelessScope(initialize_variables=False):
            yield created
    finally:
        created += global_state.get_global_attribute(key) or []
        global_state.set_global_attribute(key, outer)


def _reseeded(initializer, seed: int):
    """A copy of a Keras initializer drawing from `seed`; one that draws nothing (zeros, ones) as it is."""
    config = initializer.get_config()
    return type(initializer).from_config({**config, "seed": seed}) if "seed" in config else initializer


def finish_initialization(variables, seed: int | None = None) -> list:
    """Initialises what `deferred_initializers` left: an assigned variable takes the value it was given (laid out as
    the current distribution wants, as at creation), any other runs its initializer. Returns the latter.

    With `seed`, the n-th of those runs its initializer seeded with `seed + n` instead of the seed the layer drew when
    it was made (from the global seed): the same values whatever `keras.utils.set_random_seed` was given.
    """
    unassigned = []
    for variable in variables:
        if variable._value is None:
            if seed is not None:
                variable._initializer = _reseeded(variable._initializer, seed + len(unassigned))
            variable._deferred_initialize()
            unassigned.append(variable)
        else:
            variable._initialize(variable._value)
            variable._initializer = None
    return unassigned
