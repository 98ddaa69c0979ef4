"""Filling a Keras model whose layer names are timm module paths (CoAtNet) from a timm state dict.

Each Keras layer maps to `<layer name>.<torch parameter>`: the mapping is fixed by layer type, so nothing is
listed per model and a renamed layer is caught by the completeness check.
"""

from __future__ import annotations

import keras
import numpy as np

from ich_keras.convert.rel_pos import resize_rel_pos_table
from ich_keras.convert.tracking import TrackedStateDict, check_keys, conv_kernel, dense_kernel
from ich_keras.models.layers import LayerScale, RelPosAttention


def _depthwise_kernel(x: np.ndarray) -> np.ndarray:
    """torch depthwise weight (channels, 1, kh, kw) -> Keras DepthwiseConv2D kernel (kh, kw, channels, 1)."""
    return np.transpose(x, (2, 3, 0, 1))


# Keras variable attribute -> (torch parameter name, transform), per layer type; a subclass that only computes
# its layer another way (ShiftedDepthwiseConv2D, PointwiseConv2D) maps as its Keras base class.
_PARAMETERS = {
    keras.layers.Conv2D: {"kernel": ("weight", conv_kernel), "bias": ("bias", None)},
    keras.layers.DepthwiseConv2D: {"kernel": ("weight", _depthwise_kernel), "bias": ("bias", None)},
    keras.layers.Dense: {"kernel": ("weight", dense_kernel), "bias": ("bias", None)},
    keras.layers.BatchNormalization: {
        "gamma": ("weight", None),
        "beta": ("bias", None),
        "moving_mean": ("running_mean", None),
        "moving_variance": ("running_var", None),
    },
    keras.layers.LayerNormalization: {"gamma": ("weight", None), "beta": ("bias", None)},
    LayerScale: {"gamma": ("gamma", None)},
}


def _plan(model: keras.Model, skip_layers: tuple[str, ...]) -> list[tuple[object, str, object]]:
    """(variable, timm key, transform) for every weight of `model` outside `skip_layers`."""
    plan = []
    for layer in model.layers:
        if layer.name in skip_layers or not layer.weights:
            continue
        if isinstance(layer, RelPosAttention):
            resize = lambda table, size=layer.feature_size: resize_rel_pos_table(table, size)  # noqa: E731
            plan.append((layer.relative_position_bias_table, f"{layer.name}.relative_position_bias_table", resize))
            continue
        mapped = next((cls for cls in type(layer).__mro__ if cls in _PARAMETERS), None)
        if mapped is None:
            raise TypeError(f"No timm mapping for layer {layer.name!r} of type {type(layer).__name__}")
        for attribute, (parameter, transform) in _PARAMETERS[mapped].items():
            variable = getattr(layer, attribute, None)
            if variable is not None:
                plan.append((variable, f"{layer.name}.{parameter}", transform))
    return plan


def assign_by_name(model: keras.Model, state_dict: dict[str, np.ndarray], *, skip_layers: tuple[str, ...] = ()) -> None:
    """Sets every weight of `model` from the timm tensor named after its layer; all tensors must be used.

    Relative-position tables of another feature-map size are resized as timm resizes them.

    Args:
        model: a model whose layer names are timm module paths.
        state_dict: timm tensor name -> array (torch layout), without `num_batches_tracked`.
        skip_layers: layer names left at their fresh init (a new head); their tensors must not be in `state_dict`.

    Raises:
        ValueError: listing the tensors with no place in the model and the model weights with no tensor (a
            checkpoint of another architecture), or naming a weight whose shape differs from its tensor's.
    """
    plan = _plan(model, skip_layers)
    check_keys(state_dict, [key for _, key, _ in plan], model.name)
    tracked = TrackedStateDict(state_dict)
    for variable, key, transform in plan:
        tracked.assign(variable, key, transform)
    skipped = {id(w) for name in skip_layers for w in model.get_layer(name).weights}
    tracked.check_complete([w for w in model.weights if id(w) not in skipped])
