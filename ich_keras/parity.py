"""The timm model an ich_keras model must equal, and the logit comparison that proves it (needs torch + timm).

Import torch before TensorFlow in a process that uses both (importing it after TensorFlow crashes on some builds):
importing this module first does that.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings

# torch's triton (CUDA builds) loaded after TensorFlow kills the process with a segmentation fault: a notebook that
# predicted (which imports TensorFlow) and then checks a conversion gets this message instead.
if "tensorflow" in sys.modules and "triton" not in sys.modules and importlib.util.find_spec("triton") is not None:
    raise ImportError("TensorFlow is already imported (by a prediction or the data pipeline), and torch's triton "
                      "imported after it crashes the process: restart the kernel and import ich_keras.parity (or "
                      "torch) before anything else")

import torch  # noqa: E402, I001  (before keras / keras-hub, which import TensorFlow)
import timm
from timm.models.maxxvit import MaxxVit, MaxxVitCfg, _rw_coat_cfg, checkpoint_filter_fn
from timm.models.vision_transformer import checkpoint_filter_fn as vit_checkpoint_filter_fn

import keras
import numpy as np

from ich_keras.errors import UserError
from ich_keras.models import coatnet

VIT = "vit_base_patch16_224"  # the one baseline with a size-dependent weight, its position embedding
TESTED_TIMM = "1.0.31"  # the first timm with `test_coatnet`; the convert extra asks for it
# max |Δ| over max |reference| that still counts as equal: float32 ports agree to ~1e-6 (the README's parity table),
# a misplaced tensor is off by more than 1e-3. The parity tests and the GPU check assert it too.
TOLERANCE = 1e-4


def _timm_cfg_coatnet_tiny() -> MaxxVitCfg:
    variant = coatnet.VARIANTS["coatnet_tiny"]
    return MaxxVitCfg(
        embed_dim=variant.embed_dims,
        depths=variant.depths,
        stem_width=variant.stem_widths,
        **_rw_coat_cfg(conv_attn_early=True, transformer_shortcut_bias=False),
    )


def timm_model(
    model_name: str, num_classes: int, image_size: int, state_dict: dict[str, np.ndarray] | None = None
) -> torch.nn.Module:
    """Builds timm's counterpart of `model_name` in eval mode, optionally loading a (224 px) state dict.

    Args:
        model_name: an ich_keras model name; `coatnet_tiny` becomes a `MaxxVit` with the same configuration.
        num_classes: head width.
        image_size: input side; for CoAtNet and ViT a checkpoint of another size goes through timm's
            `checkpoint_filter_fn`, which resizes the relative-position tables or the position embedding.
        state_dict: tensor name -> numpy array; None keeps timm's random init.
    """
    variant = coatnet.VARIANTS.get(model_name)
    timm_name = model_name if variant is None else variant.timm_name
    if timm_name is not None and not timm.is_model(timm_name):
        raise UserError(f"timm {timm.__version__} has no model {timm_name!r} (ich_keras is tested with timm "
                        f">= {TESTED_TIMM}): pip install -U 'timm>={TESTED_TIMM}'")
    if model_name == VIT:
        model = timm.create_model(model_name, pretrained=False, num_classes=num_classes, img_size=image_size)
    elif variant is None:  # ResNet and DenseNet: convolutions and a global pool take any size as they are
        model = timm.create_model(model_name, pretrained=False, num_classes=num_classes)
    elif variant.timm_name is None:
        model = MaxxVit(_timm_cfg_coatnet_tiny(), img_size=image_size, num_classes=num_classes)
    else:
        model = timm.create_model(variant.timm_name, pretrained=False, num_classes=num_classes, img_size=image_size)
    if state_dict is not None:
        tensors = {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in state_dict.items()}
        if variant is not None:
            with warnings.catch_warnings():
                # Two notes of torch's on timm's own table resize (a non-contiguous bucketize, an indexing style
                # torch 2.9 will change): nothing the user can act on.
                warnings.filterwarnings("ignore", category=UserWarning, module=r"timm\.layers\.interpolate")
                tensors = checkpoint_filter_fn(tensors, model)
        elif model_name == VIT:
            tensors = vit_checkpoint_filter_fn(tensors, model)
        model.load_state_dict(tensors, strict=False)  # num_batches_tracked is not in our state dicts
    return model.eval()


def random_state_dict(model: torch.nn.Module, seed: int = 0) -> dict[str, np.ndarray]:
    """timm's state dict as numpy with every tensor made non-trivial: BatchNorm statistics, LayerScale, position
    biases, and every tensor timm initialises to a constant (norm weights 1, biases 0).

    A freshly initialised timm model has running mean 0 / var 1, layer scales of 1e-6, position-bias tables of
    std 0.02 and all its norms at 1 / 0; with those, a converter that dropped, swapped or misplaced them could
    still pass a parity test.
    """
    generator = np.random.default_rng(seed)
    out = {}
    for name, tensor in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue
        value = tensor.detach().cpu().numpy().copy()
        if name.endswith("running_mean"):
            value = generator.normal(0.0, 0.1, value.shape)
        elif name.endswith("running_var") or name.endswith("gamma"):
            value = generator.uniform(0.5, 1.5, value.shape)
        elif name.endswith("relative_position_bias_table"):
            value = generator.normal(0.0, 1.0, value.shape)
        elif value.size > 1 and value.std() == 0:  # norm weights (1 +) and biases (0 +) of their own
            value = value + generator.normal(0.0, 0.1, value.shape)
        out[name] = value.astype(np.float32)
    return out


def compare(
    keras_model: keras.Model, torch_model: torch.nn.Module, image_size: int, batch: int = 2, seed: int = 0,
    keras_output: str | None = None,
) -> dict[str, float]:
    """Runs both models on the same random normalised images and measures how far their outputs are apart.

    Args:
        keras_model, torch_model: the two models (torch in eval mode).
        image_size: input side.
        batch: number of images.
        seed: seed of the images.
        keras_output: compare the input of this Keras layer (e.g. the head, after a new head was fitted)
            against timm's pre-logits features instead of the logits.

    Returns:
        `max_abs_diff`, `max_abs_reference`, `relative_error` (max |diff| / max |reference|) and, for logits,
        `top1_agreement` (an argmax of features names no class).
    """
    images = np.random.default_rng(seed).standard_normal((batch, image_size, image_size, 3)).astype(np.float32)
    with torch.no_grad():
        torch_images = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
        if keras_output is None:
            reference = torch_model(torch_images).numpy()
        else:
            features = torch_model.forward_features(torch_images)
            reference = torch_model.forward_head(features, pre_logits=True).numpy()
    if keras_output is not None:
        keras_model = keras.Model(keras_model.input, keras_model.get_layer(keras_output).input)
    ours = np.asarray(keras_model.predict(images, batch_size=batch, verbose=0))
    difference = np.abs(ours - reference).max()
    scale = np.abs(reference).max()
    # Two outputs of zeros are equal (0 / 0 would be NaN, a disagreement): 0, and any difference from zeros infinite.
    relative = difference / scale if scale else (0.0 if difference == 0 else float("inf"))
    result = {"max_abs_diff": float(difference), "max_abs_reference": float(scale),
              "relative_error": float(relative)}
    if keras_output is None:
        result["top1_agreement"] = float((ours.argmax(-1) == reference.argmax(-1)).mean())
    return result


def disagreement(result: dict[str, float], tolerance: float = TOLERANCE) -> str | None:
    """What in `compare`'s result falls short of equality, naming the numbers; None when it passes.

    Args:
        result: `compare`'s dict; without `top1_agreement` (features) only the relative error counts.
        tolerance: the largest relative error that passes.
    """
    failures = []
    if not result["relative_error"] <= tolerance:  # written so that NaN fails too
        failures.append(f"relative error {result['relative_error']:.2e} > tolerance {tolerance:g}")
    if result.get("top1_agreement", 1.0) < 1.0:
        failures.append(f"top-1 agreement {result['top1_agreement']:.0%} < 100%")
    return "; ".join(failures) or None
