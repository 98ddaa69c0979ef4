"""Filling a Keras model whose layer names are timm module paths (CoAtNet) from a timm state dict.

Each Keras layer maps to `<layer name>.<torch parameter>`: the mapping is fixed by layer type, so nothing is
listed per model and a renamed layer is caught by the completeness check.
"""

from __future__ import annotations

import keras
import numpy as np

from ich_keras.convert.rel_pos import resize_rel_pos_table
from ich_keras.convert.tracking import TrackedStateDict, conv_kernel, dense_kernel
from ich_keras.models.layers import LayerScale, RelPosAttention


def _depthwise_kernel(x: np.ndarray) -> np.ndarray:
    """torch depthwise weight (channels, 1, kh, kw) -> Keras DepthwiseConv2D kernel (kh, kw, channels, 1)."""
    return np.transpose(x, (2, 3, 0, 1))


# Keras variable attribute -> (torch parameter name, transform), per layer type.
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


def _variables(layer) -> dict[str, object]:
    """Attribute name -> variable for the weights of `layer` this module knows how to fill."""
    return {name: getattr(layer, name, None) for name in _PARAMETERS[type(layer)]}


def assign_by_name(model: keras.Model, state_dict: dict[str, np.ndarray], *, skip_layers: tuple[str, ...] = ()) -> None:
    """Sets every weight of `model` from the timm tensor named after its layer; all tensors must be used.

    Relative-position tables of another feature-map size are resized as timm resizes them.

    Args:
        model: a model whose layer names are timm module paths.
        state_dict: timm tensor name -> array (torch layout), without `num_batches_tracked`.
        skip_layers: layer names left at their fresh init (a new head); their tensors must not be in `state_dict`.

    Raises:
        ValueError: listing every tensor with no place in the model and every model weight with no tensor.
    """
    tracked = TrackedStateDict(state_dict)
    for layer in model.layers:
        if layer.name in skip_layers or not layer.weights:
            continue
        if isinstance(layer, RelPosAttention):
            key = f"{layer.name}.relative_position_bias_table"
            if key in state_dict:
                tracked.assign(
                    layer.relative_position_bias_table, key,
                    lambda table, size=layer.feature_size: resize_rel_pos_table(table, size),
                )
            continue
        if type(layer) not in _PARAMETERS:
            raise TypeError(f"No timm mapping for layer {layer.name!r} of type {type(layer).__name__}")
        for attribute, variable in _variables(layer).items():
            parameter, transform = _PARAMETERS[type(layer)][attribute]
            key = f"{layer.name}.{parameter}"
            if variable is not None and key in state_dict:
                tracked.assign(variable, key, transform)
    skipped = {id(w) for name in skip_layers for w in model.get_layer(name).weights}
    tracked.check_complete([w for w in model.weights if id(w) not in skipped])
