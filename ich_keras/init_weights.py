"""The one loader of `.weights.h5` files into a model, and the one writer of a model's weights.

`load_weights(model, path)` takes every file the project or the converter writes: a converted timm checkpoint, a fit
checkpoint, a soup, with the model's class count or another one. When only the classification head differs (its
arrays exist in both, in the last layer, and differ in their last, class axis), every other weight is loaded and the
head keeps its fresh initialisation, and the loader says so. Anything else that differs is an error naming the
arrays. Files that Keras' `save_weights` wrote from a compiled model also carry `optimizer/` state; it is ignored (the
soups' reader skips it too).

`build_with_weights(build, path)` is `build()` followed by `load_weights`, without running the initializers of
what the file then replaces.

`save_model_weights(model, path)` writes the model's variables only: on a compiled model Keras' `save_weights` also
writes the optimizer's moments, three times the bytes of the weights for AdamW. Resume keeps the optimizer state,
once, in `state/`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

from ich_keras import _keras_compat
from ich_keras.errors import UserError
from ich_keras.soups.layout import head_keys
from ich_keras.soups.weights import H5Source, ModelSource, read, save

# What `python -m ich_keras.convert` reads; never a Keras weights file.
TIMM_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def load_weights(model, path: str | Path, new_head: bool = True, verbose: bool = True) -> list[str]:
    """Loads a `.weights.h5` file into a built model, re-initialising a head of another class count.

    Args:
        model: a built Keras model (freshly built when `new_head`: the head keeps the values it has).
        path: the weights file.
        new_head: allow a head of another class count; False makes any difference an error (a checkpoint of the
            run itself, a soup to predict with).
        verbose: print a line when the head is re-initialised.

    Returns:
        The keys left at their current values (the head's), [] when every array was loaded.

    Raises:
        UserError naming the file and the arrays that do not fit or hold NaN/inf (a diverged run's weights).
    """
    if Path(path).suffix in TIMM_SUFFIXES:  # the downloaded file named where its conversion belongs
        raise UserError(f"The weights are a timm / torch checkpoint, not Keras weights: convert them first with "
                        f"`python -m ich_keras.convert --model {model.name} --checkpoint {path} --output "
                        f"FILE.weights.h5` (--image-size N for the model's image size) and name FILE.weights.h5. "
                        f"Received: path={str(path)!r}")
    source = H5Source(path)
    target = ModelSource(model)
    head = head_keys(source.layout(), target.layout())
    if head and not new_head:
        raise UserError(f"The weights have another class count than the model ({head[0]}: "
                        f"{source.layout().by_key[head[0]].shape} in the file, "
                        f"{target.layout().by_key[head[0]].shape} in the model). Received: {path}")
    skipped = set(head)
    with h5py.File(source.path, "r") as f:
        for key, variable in target.pairs:
            if key not in skipped:
                value = np.asarray(f[key])
                if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
                    raise UserError(f"The weights hold non-finite values (NaN or inf) in {key}: the run that wrote "
                                    f"them diverged. Use a checkpoint from before. Received: {path}")
                variable.assign(value)
    if head and verbose:
        classes = target.layout().by_key[head[0]].shape[-1]
        print(f"Loaded {path}; its head ({source.layout().by_key[head[0]].shape[-1]} classes) was re-initialised "
              f"for {classes} classes", flush=True)
    return head


def build_with_weights(build: Callable, path: str | Path, new_head: bool = True, verbose: bool = True):
    """`build()`'s model with the weights of `path` loaded (`load_weights`' arguments and errors).

    Only what the file does not hold (a head of another class count) is initialised. Building a model otherwise runs
    each initializer as an XLA program of its own, compiled per weight shape: CoAtNet-0 at 224 px, 15 s on a cold
    compilation cache, for values the file then replaces. The result is the same, bit for bit, as `build()`
    followed by `load_weights` (the head's initializers draw from seeds fixed when the layers were made).
    """
    with _keras_compat.deferred_initializers() as created:
        model = build()
    load_weights(model, path, new_head, verbose)
    _keras_compat.finish_initialization(created)
    return model


def save_model_weights(model, path: str | Path) -> Path:
    """Writes the model's variables, not its optimizer's, as a `.weights.h5` Keras loads; atomically.

    The file is written the way soups are, so a checkpoint and a soup of one model have the same size.

    Raises:
        ValueError naming the first non-finite variable (a diverged model is never kept).
    """
    source = ModelSource(model)
    return save(read(source), path, template=source)
