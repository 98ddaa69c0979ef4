"""The one loader of `.weights.h5` files into a model, and the one writer of a model's weights.

`load_weights(model, path)` takes every file the project or the converter writes: a converted timm checkpoint, a fit
checkpoint, a soup, with the model's class count or another one, made at the model's image size or another one.
When only the classification head differs (its arrays exist in both, in the last layer, and differ in their last,
class axis), every other weight is loaded and the head keeps its fresh initialisation, and the loader says so. The
arrays whose shape follows from the image size (CoAtNet's relative-position tables, ViT's position embedding) are
resized to the model's as the converter resizes them (as timm does), and the loader says so too. Anything else that
differs is an error naming the arrays. Files that Keras' `save_weights` wrote from a compiled model also carry
`optimizer/` state; it is ignored (the soups' reader skips it too).

`build_with_weights(build, path)` is `build()` followed by `load_weights`, without running the initializers of
what the file then replaces; fit draws a new head from `model.head_seed`, not from `train.seed`.

`resized_to(model, path)` is the file as `load_weights` hands it to the model, in memory, head as in the file: the
soups' W0 when the run's `model.init` was of another image size.

`save_model_weights(model, path)` writes the model's variables only: on a compiled model Keras' `save_weights` also
writes the optimizer's moments, three times the bytes of the weights for AdamW. Resume keeps the optimizer state,
once, in `state/`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np

from ich_keras import _keras_compat
from ich_keras.convert.pos_embed import PREFIX_TOKENS, resample_abs_pos_embed
from ich_keras.convert.rel_pos import resize_rel_pos_table
from ich_keras.errors import UserError
from ich_keras.weight_layout import Layout, head_keys
from ich_keras.weight_files import DictSource, H5Source, ModelSource, check_not_timm, read, save


class _ImageSizeArray(NamedTuple):
    """A kind of array whose shape follows from the image size, and how the converter resizes it."""

    noun: str  # "relative-position table", for messages
    grid: str  # what its side counts: "feature map"
    side: Callable[[tuple[int, ...]], int | None]  # the side of the square map an array of this shape is for
    resize: Callable[[np.ndarray, int], np.ndarray]  # (array, the model's side) -> the model's array


def _rel_pos_side(shape: tuple[int, ...]) -> int | None:
    """s for a ((2s-1)^2, heads) table; None for any other shape."""
    if len(shape) != 2:
        return None
    root = math.isqrt(shape[0])
    return (root + 1) // 2 if root * root == shape[0] and root % 2 else None


def _pos_embed_side(shape: tuple[int, ...]) -> int | None:
    """g for a (1 + g*g, dim) embedding (the class token's row first); None for any other shape."""
    if len(shape) != 2 or shape[0] <= PREFIX_TOKENS:
        return None
    root = math.isqrt(shape[0] - PREFIX_TOKENS)
    return root if root * root == shape[0] - PREFIX_TOKENS else None


REL_POS_TABLE = _ImageSizeArray("relative-position table", "feature map", _rel_pos_side, resize_rel_pos_table)
# keras-hub's Embedding holds timm's (1, 1 + g*g, dim) pos_embed without its batch axis.
POS_EMBED = _ImageSizeArray("position embedding", "patch grid", _pos_embed_side,
                            lambda table, grid: resample_abs_pos_embed(table[None], grid)[0])


def _image_size_arrays(target: ModelSource) -> dict[str, _ImageSizeArray]:
    """{key: kind} for the variables of `target`'s model whose shape follows from its image size."""
    from ich_keras.models.baselines import is_vit_backbone
    from ich_keras.models.layers import RelPosAttention

    kinds = {}
    for layer in _keras_compat.nested_layers(target.model):
        if isinstance(layer, RelPosAttention):
            kinds[id(layer.relative_position_bias_table)] = REL_POS_TABLE
        elif is_vit_backbone(layer) and layer.use_class_token:
            # The layer keras-hub's own ViT converter writes pos_embed to.
            embedding = layer.get_layer("vit_patching_and_embedding").position_embedding
            kinds[id(embedding.embeddings)] = POS_EMBED
    return {key: kinds[id(variable)] for key, variable in target.pairs if id(variable) in kinds}


class Resize(NamedTuple):
    """One array of a file to resize to the model's image size: from a `before` x `before` map to `after` x `after`."""

    kind: _ImageSizeArray
    before: int
    after: int


def _image_size_resizes(source: Layout, target: ModelSource) -> dict[str, Resize]:
    """{key: `Resize`} for the arrays of `source` that differ from `target`'s only because the image size differs:
    arrays of an `_image_size_arrays` kind, both shapes that of a square map, alike but for the map's axis."""
    resizes = {}
    for key, kind in _image_size_arrays(target).items():
        if key in source.by_key:
            before, after = source.by_key[key].shape, target.layout().by_key[key].shape
            if before != after and before[1:] == after[1:] and kind.side(before) and kind.side(after):
                resizes[key] = Resize(kind, kind.side(before), kind.side(after))
    return resizes


def _resized_layout(source: Layout, target: Layout, resizes: dict[str, Resize]) -> Layout:
    """`source` with the arrays of `resizes` in the shapes they get: what the model receives."""
    entries = [(v.key, target.by_key[v.key].shape if v.key in resizes else v.shape, v.dtype, v.label)
               for v in source.variables]
    return Layout.from_entries(entries, name=source.name)


def resize_notes(resizes: Iterable[Resize]) -> list[str]:
    """"2 relative-position tables resized from a 2x2 to a 4x4 feature map", one per kind and pair of sizes."""
    counts = Counter(resizes)
    return [f"{n} {kind.noun}{'s' if n > 1 else ''} resized from a {before}x{before} to a {after}x{after} {kind.grid}"
            for (kind, before, after), n in counts.items()]


def check_init_file(path: str | Path, model_name: str) -> None:
    """Raises the UserError `load_weights` would for a file that is no Keras weights at all (timm's, not HDF5, no
    variables), reading only its names: a run checks its init before it writes anything, and with several processes
    before they build the model together."""
    check_not_timm(path, model_name)
    H5Source(path).layout()


def load_weights(model, path: str | Path, new_head: bool = True, verbose: bool = True) -> list[str]:
    """Loads a `.weights.h5` file into a built model; as an init, of another class count or image size too.

    Args:
        model: a built Keras model (freshly built when `new_head`: the head keeps the values it has).
        path: the weights file.
        new_head: the file is the model's init (`model.init`): a head of another class count is re-initialised and
            arrays of another image size are resized. False makes any difference an error: a checkpoint of the run
            itself or a soup to predict with is used at the class count and image size it was trained at.
        verbose: print a line when the head is re-initialised or arrays are resized.

    Returns:
        The keys left at their current values (the head's), [] when every array was loaded.

    Raises:
        UserError naming the file and the arrays that do not fit or hold NaN/inf (a diverged run's weights).
    """
    check_not_timm(path, model.name)
    source = H5Source(path)
    target = ModelSource(model)
    resizes = _image_size_resizes(source.layout(), target) if new_head else {}
    # Every other difference is the head's or an error, as without resizing.
    head = head_keys(_resized_layout(source.layout(), target.layout(), resizes), target.layout())
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
                if key in resizes:
                    value = resizes[key].kind.resize(value, resizes[key].after)
                variable.assign(value)
    notes = resize_notes(resizes.values())
    if head:
        classes = target.layout().by_key[head[0]].shape[-1]
        notes.insert(0, f"its head ({source.layout().by_key[head[0]].shape[-1]} classes) was re-initialised for "
                        f"{classes} classes")
    if notes and verbose:
        print(f"Loaded {path}; {'; '.join(notes)}", flush=True)
    return head


def resized_to(model, path: str | Path) -> tuple[H5Source | DictSource, list[str]]:
    """The weights of `path` with the arrays of another image size resized to `model`'s, as `load_weights` resizes
    them; everything else as in the file (a head of another class count too).

    What a run fine-tuned from `model.init` really started from, so the soups take it as their W0.

    Args:
        model: a built Keras model of the target architecture and image size (the ingredients').
        path: the weights file.

    Returns:
        (the file itself when nothing differs in image size, else its weights in memory, named by the path;
        `load_weights`' notes on what was resized, [] when nothing was).
    """
    source = H5Source(path)
    resizes = _image_size_resizes(source.layout(), ModelSource(model))
    if not resizes:
        return source, []
    values = read(source).to_dict()  # checked finite
    for key, resize in resizes.items():
        values[key] = resize.kind.resize(values[key], resize.after)
    return DictSource(values, name=source.name), resize_notes(resizes.values())


def build_with_weights(build: Callable, path: str | Path, new_head: bool = True, verbose: bool = True,
                       head_seed: int | None = None):
    """`build()`'s model with the weights of `path` loaded (`load_weights`' arguments and errors).

    Only what the file does not hold (a head of another class count) is initialised. Building a model otherwise runs
    each initializer as an XLA program of its own, compiled per weight shape: CoAtNet-0 at 224 px, 15 s on a cold
    compilation cache, for values the file then replaces. Without `head_seed` the result is the same, bit for bit,
    as `build()` followed by `load_weights` (the head's initializers draw from seeds fixed, from the global seed,
    when the layers were made); with it, a new head draws from `head_seed` alone (`model.head_seed`).
    """
    with _keras_compat.deferred_initializers() as created:
        model = build()
    load_weights(model, path, new_head, verbose)
    _keras_compat.finish_initialization(created, seed=head_seed)
    return model


def save_model_weights(model, path: str | Path) -> Path:
    """Writes the model's variables, not its optimizer's, as a `.weights.h5` Keras loads; atomically.

    The file is written the way soups are, so a checkpoint and a soup of one model have the same size.

    Raises:
        ValueError naming the first non-finite variable (a diverged model is never kept).
    """
    source = ModelSource(model)
    return save(read(source), path, template=source)
