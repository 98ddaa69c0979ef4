"""timm state dict -> the keras-hub baselines of `ich_keras.models.baselines`.

The backbone mapping is keras-hub's own: its timm converters (`convert_resnet`, `convert_densenet`, reached through
`ich_keras._keras_compat` where they are used, since keras-hub imports TensorFlow) read through a loader with
`port_weight`, which `TrackedStateDict` provides. keras-hub has no timm ViT converter, only a Hugging Face one
(`convert_vit`); timm ViT keys are renamed to Hugging Face keys (splitting the fused qkv) and that one is reused; ViT's
position embedding is first resampled to the model's patch grid as timm does (`ich_keras.convert.pos_embed`). The
heads are mapped here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from types import SimpleNamespace

import keras
import numpy as np

from ich_keras import _keras_compat
from ich_keras.convert.pos_embed import resample_abs_pos_embed
from ich_keras.convert.tracking import TrackedStateDict, check_keys, dense_kernel
from ich_keras.errors import UserError
from ich_keras.models.baselines import BACKBONE_NAME, BASELINES, HEAD_NAME, VIT_B16



def _port_resnet(backbone: keras.Model, sd: TrackedStateDict) -> None:
    convert_resnet, _ = _keras_compat.keras_hub_timm_converters()
    convert_resnet.convert_weights(backbone, sd, {"architecture": "resnet50"})


def _port_densenet(backbone: keras.Model, sd: TrackedStateDict) -> None:
    # Our DenseNet is a plain functional model with keras-hub's layer names; the converter also reads the depth.
    _, convert_densenet = _keras_compat.keras_hub_timm_converters()
    config = convert_densenet.convert_backbone_config({"architecture": "densenet121"})
    view = SimpleNamespace(
        get_layer=backbone.get_layer, stackwise_num_repeats=config["stackwise_num_repeats"]
    )
    convert_densenet.convert_weights(view, sd, {"architecture": "densenet121"})


# timm ViT key -> Hugging Face ViT key, as `convert_vit.convert_weights` reads it. `{i}` is the block index.
_VIT_RENAMES = {
    r"cls_token": "vit.embeddings.cls_token",
    r"pos_embed": "vit.embeddings.position_embeddings",
    r"patch_embed\.proj\.(weight|bias)": r"vit.embeddings.patch_embeddings.projection.\1",
    r"blocks\.(\d+)\.norm1\.(weight|bias)": r"vit.encoder.layer.\1.layernorm_before.\2",
    r"blocks\.(\d+)\.attn\.proj\.(weight|bias)": r"vit.encoder.layer.\1.attention.output.dense.\2",
    r"blocks\.(\d+)\.norm2\.(weight|bias)": r"vit.encoder.layer.\1.layernorm_after.\2",
    r"blocks\.(\d+)\.mlp\.fc1\.(weight|bias)": r"vit.encoder.layer.\1.intermediate.dense.\2",
    r"blocks\.(\d+)\.mlp\.fc2\.(weight|bias)": r"vit.encoder.layer.\1.output.dense.\2",
    r"norm\.(weight|bias)": r"vit.layernorm.\1",
}
_VIT_QKV = re.compile(r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)")


def timm_vit_to_hf(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Renames a timm ViT state dict to Hugging Face `ViTModel` names; keys it does not know keep their name.

    Args:
        state_dict: timm ViT tensors, torch layout.

    Returns:
        A new dict; `blocks.{i}.attn.qkv.*` (rows q | k | v) becomes three `...attention.attention.{query,key,value}.*`
        tensors, so an unknown or forgotten key still shows up under its timm name.
    """
    out = {}
    for key, value in state_dict.items():
        qkv = _VIT_QKV.fullmatch(key)
        if qkv:
            block, kind = qkv.groups()
            for name, part in zip(("query", "key", "value"), np.split(np.asarray(value), 3, axis=0)):
                out[f"vit.encoder.layer.{block}.attention.attention.{name}.{kind}"] = part
            continue
        renamed = next(
            (
                re.sub(pattern, repl, key)
                for pattern, repl in _VIT_RENAMES.items()
                if re.fullmatch(pattern, key)
            ),
            key,
        )
        out[renamed] = value
    return out


def _vit_timm_keys() -> list[str]:
    """The tensor names of timm's `vit_base_patch16_224` without its head, in timm's order."""
    block = [f"{module}.{p}" for module in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
             for p in ("weight", "bias")]
    return ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
            *(f"blocks.{i}.{key}" for i in range(VIT_B16["num_layers"]) for key in block), "norm.weight", "norm.bias"]


def _vit_rewrite(state_dict: Mapping[str, np.ndarray], model: keras.Model) -> dict[str, np.ndarray]:
    """`timm_vit_to_hf` of the state dict, its position embedding resampled to `model`'s patch grid first."""
    # Checked by timm name before anything is renamed or resampled: another ViT variant's position embedding (a
    # distillation or register token more) has no square grid to resample.
    head = BASELINES["vit_base_patch16_224"].timm_head
    check_keys([k for k in state_dict if not k.startswith(head)], _vit_timm_keys(), "vit_base_patch16_224")
    grid = model.input_shape[1] // VIT_B16["patch_size"]
    tensors = dict(state_dict)
    if "pos_embed" in tensors:
        tensors["pos_embed"] = resample_abs_pos_embed(np.asarray(tensors["pos_embed"]), grid)
    return timm_vit_to_hf(tensors)


def _port_vit(backbone: keras.Model, sd: TrackedStateDict) -> None:
    _keras_compat.keras_hub_vit_converter().convert_weights(backbone, sd, {})


# model name -> (state-dict rewrite for the built model, before tracking; backbone mapping).
_CONVERTERS: dict[str, tuple[Callable | None, Callable[[keras.Model, TrackedStateDict], None]]] = {
    "resnet50": (None, _port_resnet),
    "densenet121": (None, _port_densenet),
    "vit_base_patch16_224": (_vit_rewrite, _port_vit),
}


def _port_head(head: keras.layers.Dense, sd: TrackedStateDict, prefix: str) -> None:
    sd.assign(head.kernel, f"{prefix}weight", dense_kernel)
    sd.assign(head.bias, f"{prefix}bias")


def assign(
    model: keras.Model,
    state_dict: Mapping[str, np.ndarray],
    model_name: str,
    *,
    load_head: bool = True,
) -> None:
    """Sets every weight of a baseline from a timm state dict, in place.

    Args:
        model: built by `ich_keras.models.build(model_name, ...)`.
        state_dict: timm's `state_dict()` as numpy arrays in torch layout, `num_batches_tracked` removed.
        model_name: one of `BASELINES` ("resnet50", "densenet121", "vit_base_patch16_224").
        load_head: False drops timm's classifier keys (`Baseline.timm_head`) and leaves the head at its fresh init,
            e.g. for another number of classes.

    Raises:
        ValueError: unknown `model_name`, a shape mismatch, or a state-dict key left unused / a model weight
            left unset (all named).
    """
    if model_name not in _CONVERTERS:
        raise UserError(
            f"No timm converter for this model; known: {sorted(_CONVERTERS)}. Received: model_name={model_name!r}"
        )
    rewrite, port_backbone = _CONVERTERS[model_name]
    prefix = BASELINES[model_name].timm_head
    tensors = {k: v for k, v in state_dict.items() if load_head or not k.startswith(prefix)}
    sd = TrackedStateDict(rewrite(tensors, model) if rewrite else tensors)
    head = model.get_layer(HEAD_NAME)
    fresh = {id(v) for v in head.weights} if not load_head else set()
    try:
        port_backbone(model.get_layer(BACKBONE_NAME), sd)
        if load_head:
            _port_head(head, sd, prefix)
        sd.check_complete([v for v in model.weights if id(v) not in fresh])
    except UserError as error:  # a missing tensor or a shape alone does not say why
        raise UserError(f"The checkpoint does not fit {model_name}: is it of another architecture? {error}") from None
