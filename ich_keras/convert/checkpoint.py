"""Reading timm checkpoints into {name: numpy array} without timm, and without unpickling arbitrary objects."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ich_keras.errors import UserError

# Wrappers training scripts put around the state dict: the model's weights, then their EMA copy (timm's train.py
# saves both, with its optimizer and arguments, in `*.pth.tar`).
_MODEL_KEYS = ("state_dict", "model")
EMA_KEYS = ("state_dict_ema", "model_ema")
_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".pth.tar")
# Prefixes a wrapper adds to every tensor name: DataParallel / DDP's `module.`, torch.compile's `_orig_mod.` (either
# around the other), in the order timm's own loader (`clean_state_dict`) strips them.
_WRAPPER_PREFIXES = ("_orig_mod.", "module.", "_orig_mod.")


def load_state_dict(path: str | Path, ema: bool = False) -> dict[str, np.ndarray]:
    """`read_checkpoint`'s state dict alone."""
    return read_checkpoint(path, ema)[0]


def read_checkpoint(path: str | Path, ema: bool = False) -> tuple[dict[str, np.ndarray], str | None]:
    """Reads a timm checkpoint as numpy arrays in torch layout (bfloat16 widened to float32, other dtypes as stored),
    minus `num_batches_tracked` and the name prefixes of DataParallel / DDP (`module.`) and torch.compile
    (`_orig_mod.`).

    Args:
        path: a `.safetensors` file (read with numpy, no torch needed) or a `.pth` / `.pt` / `.bin` / `.pth.tar`
            file (read with `torch.load(weights_only=True)`, so only tensors, plain containers and the
            `argparse.Namespace` of timm's training arguments are accepted).
        ema: read a training checkpoint's EMA weights (`state_dict_ema`) instead of its model's (`state_dict`).

    Returns:
        (tensor name -> array in the file's order, the training checkpoint's key that held them, e.g.
        "state_dict_ema", or None for a file that is the state dict itself).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint file at {path}")
    key = None
    if path.suffix == ".safetensors" and not ema:
        tensors = _read_safetensors(path)
    elif path.name.endswith(_TORCH_SUFFIXES):
        tensors, key = _read_torch(path, ema)
    elif path.suffix == ".safetensors":
        raise UserError(f"A .safetensors file holds one set of weights, no EMA copy: convert it without --ema. "
                        f"Received: checkpoint={str(path)!r}")
    else:
        raise UserError(f"Unknown checkpoint format {path.suffix!r} for {path}: expected .safetensors, .pth, .pt, "
                        f".bin or .pth.tar")
    if not tensors:
        raise UserError(f"{path} holds no tensors")
    return without_step_counters(_unwrapped(tensors, path)), key


def without_step_counters(state_dict: dict) -> dict:
    """`state_dict` minus BatchNorm's `num_batches_tracked`, which no Keras variable holds (a timm model's own
    `state_dict()` has one per BatchNorm layer)."""
    return {name: value for name, value in state_dict.items() if not name.endswith("num_batches_tracked")}


def _unwrapped(tensors: dict, path: Path) -> dict:
    """`tensors` under the names of the bare model: a model saved from inside DataParallel / DDP or torch.compile
    names every tensor `module.<name>` or `_orig_mod.<name>`, whatever the file format."""
    out = {}
    for name, value in tensors.items():
        bare = name
        for prefix in _WRAPPER_PREFIXES:
            bare = bare.removeprefix(prefix)
        if bare in out:
            raise UserError(f"{path} holds two tensors named {bare!r} once wrapper prefixes (module., _orig_mod.) "
                            f"are dropped: the state dicts of two models in one. Received: {name!r}")
        out[bare] = value
    return out


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    try:
        from safetensors.numpy import load_file
    except ImportError as error:
        raise UserError(
            f"Reading .safetensors needs the `safetensors` package ({error}): pip install -e '.[convert]'"
        ) from None
    try:
        tensors = load_file(str(path))
    except Exception as error:  # safetensors raises its own error type for truncated or foreign files
        if "BF16" not in str(error):
            raise UserError(f"{path} is not a readable safetensors checkpoint: {error}") from error
    else:
        # With ml_dtypes loaded (JAX loads it) numpy reads bfloat16 as its own dtype, which torch and the
        # converter's arithmetic do not take: widened to float32 (exactly), as for .pth files.
        return {name: value.astype(np.float32) if value.dtype.name == "bfloat16" else value
                for name, value in tensors.items()}
    # Without ml_dtypes numpy has no bfloat16: read through torch, which widens it as for .pth files.
    torch = _import_torch("Reading bfloat16 .safetensors")
    from safetensors.torch import load_file as load_torch

    return _widened(load_torch(str(path)), torch)


def _import_torch(purpose: str):
    try:
        import torch
    except ImportError as error:
        raise UserError(f"{purpose} needs torch ({error}): pip install -e '.[convert]'") from None
    return torch


def _widened(tensors: dict, torch) -> dict[str, np.ndarray]:
    """Torch tensors as numpy arrays; bfloat16, which numpy lacks, widened to float32 (exactly)."""
    return {name: (t.float() if t.dtype == torch.bfloat16 else t).detach().cpu().numpy() for name, t in tensors.items()}


def _refusal_reason(error: Exception) -> str:
    """The line of torch's refusal that says what the file holds ("Trying to load unsupported GLOBAL posix.system
    ..."), without its advice to load the file with weights_only=False (which runs whatever code it holds)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reasons = [line for line in lines if "GLOBAL" in line or "Unsupported" in line or "unpickler" in line.lower()]
    return f"{type(error).__name__}: {(reasons or lines or [''])[0].rstrip('.')}"


def _read_torch(path: Path, ema: bool) -> tuple[dict[str, np.ndarray], str | None]:
    import argparse

    torch = _import_torch(f"Reading {path.name}")
    try:
        # A Namespace is attributes and nothing else: timm itself allows it when it reads its checkpoints.
        with torch.serialization.safe_globals([argparse.Namespace]):
            content = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and torch errors all mean the same thing to the user
        raise UserError(f"{path} is not a readable torch checkpoint of weights only ({_refusal_reason(error)}): it "
                        f"holds code or types that a weights file does not, or it is damaged; nothing in it was "
                        f"run") from error
    nested = [key for key in (EMA_KEYS if ema else _MODEL_KEYS + EMA_KEYS)
              if isinstance(content, dict) and isinstance(content.get(key), dict)]
    if ema and not nested:
        keys = sorted(map(str, content)) if isinstance(content, dict) else []
        raise UserError(f"{path} holds no EMA weights ({' or '.join(EMA_KEYS)}): convert it without --ema. Its "
                        f"top-level keys: {keys[:8]}")
    key = nested[0] if nested else None
    if key is not None:
        content = content[key]
    if not isinstance(content, dict) or not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise UserError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return _widened(content, torch), key
