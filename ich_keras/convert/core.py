"""timm checkpoint -> ich_keras model: `convert(name, state_dict, num_classes, image_size)`.

CoAtNet layers are named after timm module paths and map by name; the keras-hub baselines go through keras-hub's
own timm converters. Either way every tensor must find a place and every weight a tensor, or the conversion fails
naming what is left over.
"""

from __future__ import annotations

import keras
import numpy as np

from ich_keras import _keras_compat, models
from ich_keras.convert import baselines as baseline_converter
from ich_keras.convert.by_name import assign_by_name
from ich_keras.convert.checkpoint import load_state_dict, without_step_counters
from ich_keras.models import coatnet
from ich_keras.errors import UserError

__all__ = ["convert", "checkpoint_num_classes", "head_layer_name", "load_state_dict"]


def _head_prefix(model_name: str) -> str:
    return models.entry(model_name).timm_head


def head_layer_name(model_name: str) -> str:
    """The name of the Keras layer that maps pooled features to logits."""
    return models.entry(model_name).head_layer


def checkpoint_num_classes(model_name: str, state_dict: dict[str, np.ndarray]) -> int | None:
    """The class count of the checkpoint's head (rows of its weight matrix); None for a checkpoint without one
    (timm's `reset_classifier(0)`, a self-supervised backbone)."""
    key = f"{_head_prefix(model_name)}weight"
    return int(state_dict[key].shape[0]) if key in state_dict else None


def convert(
    model_name: str,
    state_dict: dict[str, np.ndarray],
    num_classes: int | None = None,
    image_size: int = 224,
) -> tuple[keras.Model, bool]:
    """Builds `model_name` and fills it from a timm state dict.

    Args:
        model_name: one of `ich_keras.models.model_names()`.
        state_dict: timm tensor name -> array (torch layout), as `load_state_dict` returns it, or a timm model's
            `state_dict()` itself.
        num_classes: head width; None keeps the checkpoint's. Another count drops the checkpoint's head and
            leaves the new one at its fresh initialisation, as for a checkpoint without a head (then required).
        image_size: input side; relative-position tables are resized to it as timm does.

    Returns:
        (model, head_loaded): the filled model, and whether its head came from the checkpoint.
    """
    models.check(model_name, image_size)  # an unknown name (listing the known ones) or a size it cannot take
    state_dict = without_step_counters(state_dict)
    source_classes = checkpoint_num_classes(model_name, state_dict)
    if source_classes is None and num_classes is None:
        raise UserError(
            f"The checkpoint has no {_head_prefix(model_name) + 'weight'!r}, the head of {model_name}: give "
            f"--num-classes N for a new head (or is it a checkpoint of another architecture?). Received: first "
            f"tensors {list(state_dict)[:5]}"
        )
    num_classes = source_classes if num_classes is None else num_classes
    load_head = num_classes == source_classes
    if not load_head:
        prefix = _head_prefix(model_name)
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(prefix)}
    with _keras_compat.deferred_initializers() as created:  # the checkpoint replaces all but a new head
        model = models.build(model_name, num_classes, image_size)
    if model_name in coatnet.VARIANTS:
        assign_by_name(model, state_dict, skip_layers=() if load_head else (coatnet.HEAD_NAME,))
    else:
        baseline_converter.assign(model, state_dict, model_name, load_head=load_head)
    _keras_compat.finish_initialization(created)
    return model, load_head
