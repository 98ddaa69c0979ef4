"""One architecture's weights as the soups, the converter's checks, fit's init and resume see them: the variables'
`Layout` and a `WeightSet` in it.

A weight set keeps every floating variable in one flat float32 vector (in layout order) and the non-float variables
beside it; the averaging kernels work on that vector, so they compile once whatever the architecture.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple

import numpy as np

from ich_keras.errors import UserError

# XLA on CPU reads a numpy argument in place (no copy) only when its data is 64-byte aligned.
_ALIGNMENT = 64
_SHOWN = 4  # arrays named in an error message
# In a dataset path, the arrays an image size alone changes: CoAtNet's relative-position tables (layer class
# RelPosAttention) and ViT's position embedding (keras-hub's Embedding layer `position_embedding`).
_IMAGE_SIZE_ARRAYS = ("rel_pos_attention", "position_embedding")
_IMAGE_SIZE_ADVICE = ("The weights are of another image size (CoAtNet's relative-position tables and ViT's position "
                      "embedding follow it): fit resizes its model.init to data.image_size, and the soups their W0 "
                      "given the run (monosoup --no-eval too, given RUN_DIR), but weights used as they are (a "
                      "checkpoint or soup to predict with, a soup's ingredients) must be of the model's image size")


@dataclass(frozen=True)
class Variable:
    """One variable of a weight set.

    `key` is its dataset path in `.weights.h5`, `label` a readable name ("stem_conv #0"), `offset` its start in the
    flat float32 vector (-1 for non-float variables, which are never averaged).
    """

    key: str
    shape: tuple[int, ...]
    dtype: np.dtype
    label: str
    offset: int = -1

    @cached_property  # read for every piece of every ingredient
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def is_float(self) -> bool:
        return self.offset >= 0

    @property
    def group(self) -> str:
        """The layer this variable belongs to (its `vars` group); learned soups mix per group."""
        return self.key.rsplit("/vars/", 1)[0] if "/vars/" in self.key else ""

    def describe(self) -> str:
        return f"{self.key} ({self.label})" if self.label else self.key

    @property
    def name(self) -> str:
        """The layer and variable as a user knows them ("stem.conv1/kernel"), else the dataset path."""
        return self.label or self.key


# What an opaque type of each size in a Keras file most likely is.
_OPAQUE_FLOATS = {1: "float8", 2: "bfloat16"}


def _unsupported_dtype_message(key: str, label: str, dtype: np.dtype, where: str) -> str:
    """The message for a variable of a float type the soups and inits do not read (bfloat16, float8)."""
    shown = str(dtype)
    if shown.startswith("|V"):  # as a Keras file stores them
        shown = f"opaque {dtype.itemsize}-byte ({_OPAQUE_FLOATS.get(dtype.itemsize, 'unknown')}?)"
    return (f"Variable {key} ({label or 'no name'}) is {shown} in {where or 'the weights'}: ich_keras averages and "
            f"resizes float16, float32 and float64 variables only; keep a model's variables in float32 (Keras' "
            f"mixed_bfloat16 policy computes in bfloat16 and keeps its variables in float32). Received: "
            f"dtype={str(dtype)!r}")


@dataclass(frozen=True)
class Layout:
    """The ordered variables of one architecture and the size of their flat float32 vector."""

    variables: tuple[Variable, ...]
    size: int
    by_key: dict[str, Variable] = field(repr=False, compare=False, hash=False)
    name: str = ""  # where the layout was read from, for messages

    @classmethod
    def from_entries(cls, entries: list[tuple[str, tuple[int, ...], np.dtype, str]], name: str = "") -> Layout:
        """Builds a layout from (key, shape, dtype, label) in order, assigning flat offsets to float variables."""
        variables, offset = [], 0
        for key, shape, dtype, label in entries:
            dtype = np.dtype(dtype)
            if dtype.kind == "V":  # bfloat16 and float8 (ml_dtypes; a Keras file stores them as opaque bytes)
                raise UserError(_unsupported_dtype_message(key, label, dtype, name))
            is_float = np.issubdtype(dtype, np.floating)
            variables.append(Variable(key, tuple(int(d) for d in shape), dtype, label, offset if is_float else -1))
            if is_float:
                offset += variables[-1].size
        return cls(tuple(variables), offset, {v.key: v for v in variables}, name)

    @property
    def nbytes(self) -> int:
        """Bytes of one weight set in its stored dtypes (what one checkpoint holds)."""
        return int(sum(v.size * v.dtype.itemsize for v in self.variables))

    def check_matches(self, other: Layout, name: str, other_name: str) -> None:
        """Raises a ValueError naming the first variable missing from, or shaped differently in, `other`."""
        missing = [k for k in self.by_key if k not in other.by_key]
        extra = [k for k in other.by_key if k not in self.by_key]
        if missing or extra:
            parts = []
            if missing:
                v = self.by_key[missing[0]]
                parts.append(f"{len(missing)} variable(s) of {name} are missing from {other_name}, first "
                             f"{v.describe()} with shape {v.shape}")
            if extra:
                v = other.by_key[extra[0]]
                parts.append(f"{len(extra)} variable(s) of {other_name} are not in {name}, first "
                             f"{v.describe()} with shape {v.shape}")
            raise UserError(f"Mismatched architectures: {'; '.join(parts)}. Received: {other_name}")
        for v in self.variables:
            o = other.by_key[v.key]
            if o.shape != v.shape:
                raise UserError(
                    f"Variable {v.describe()} has shape {v.shape} in {name} but {o.shape} in {other_name}. "
                    f"Received: {other_name}"
                )
            if o.is_float != v.is_float:
                raise UserError(
                    f"Variable {v.describe()} has dtype {v.dtype} in {name} but {o.dtype} in {other_name}. "
                    f"Received: {other_name}"
                )


# A BatchNormalization layer in `.weights.h5`: a model's layer is stored under its class's name (batch_normalization_3,
# fused_batch_normalization for CoAtNet's `FusedBatchNormalization`); one a custom layer holds in an attribute
# (`self.norm`) under the attribute's name, with the layer's own name, its class's by default, in the `vars` group's
# "name" attribute (`H5Source` labels its variables "batch_normalization #3").
_BATCH_NORM_NAME = r"(fused_)?batch_normalization(_\d+)?"
_BATCH_NORM_GROUP = re.compile(rf"(^|/){_BATCH_NORM_NAME}$")
_BATCH_NORM_LABEL = re.compile(rf"{_BATCH_NORM_NAME} #\d+")
# A live model's variables are labelled by their paths (`ModelSource`), which name the statistics themselves.
_STATISTICS_PATHS = ("/moving_mean", "/moving_variance")


def _is_batch_norm_variable(v: Variable) -> bool:
    """Whether `v` belongs to a BatchNormalization layer, by its group, its group's layer name or its path."""
    return bool(_BATCH_NORM_GROUP.search(v.group) or _BATCH_NORM_LABEL.fullmatch(v.label)
                or v.label.endswith(_STATISTICS_PATHS))


def running_statistics(layout: Layout) -> set[str]:
    """The keys of every BatchNorm layer's moving mean and moving variance.

    A file names its variables by index only; a BatchNormalization layer creates gamma and beta (when it has
    them), then the two statistics, so they are the last two of its group. `tests/test_soups_merge_methods.py`
    pins this against the variables' names in every model of the registry. A BatchNorm layer given a name of
    its own inside a custom layer is not recognised in a file (nothing there says what it is).
    """
    groups = defaultdict(list)
    for v in layout.variables:
        if _is_batch_norm_variable(v):
            groups[v.group].append(v)
    return {v.key for members in groups.values()
            for v in sorted(members, key=lambda v: int(v.key.rsplit("/", 1)[-1]))[-2:]}


def head_keys(source: Layout, target: Layout) -> list[str]:
    """The keys of `target`'s classification head that `source` holds for another class count.

    Args:
        source: the layout of the file to load.
        target: the layout of the model to load it into.

    Returns:
        [] when the layouts match; otherwise the head's keys (all in `target`'s last layer, or in one layer of a
        file's layout, present in both with the same shape but for the last axis).

    Raises:
        UserError (a ValueError) naming the arrays by layer when anything beyond the head differs.
    """
    missing = [k for k in target.by_key if k not in source.by_key]
    extra = [k for k in source.by_key if k not in target.by_key]
    if missing or extra:
        parts = [f"{what} ({len(names)}): {names[:_SHOWN]}" for what, names in
                 (("missing from the file", [target.by_key[k].name for k in missing]),
                  ("in the file but not in the model", [source.by_key[k].name for k in extra])) if names]
        raise UserError(f"The weights do not fit the model (another architecture?): arrays {'; arrays '.join(parts)}. "
                        f"Convert or train them for this model. Received: {source.name}")
    differing = reshaped_keys(source, target)
    if not differing:
        return []
    outside = beyond_head(source, target, differing)
    if outside:
        shapes = "; ".join(f"{target.by_key[k].name} is {source.by_key[k].shape} in the file, "
                           f"{target.by_key[k].shape} in the model" for k in outside[:_SHOWN])
        advice = _IMAGE_SIZE_ADVICE if _of_image_size(outside) else "Convert them for this model and image size"
        raise UserError(f"The weights do not fit the model beyond its head: {len(outside)} arrays differ in shape: "
                        f"{shapes}. {advice}. Received: {source.name}")
    return differing


def reshaped_keys(source: Layout, target: Layout) -> list[str]:
    """The keys of `target` that `source` holds with another shape, in `target`'s order."""
    return [k for k, v in target.by_key.items() if k in source.by_key and source.by_key[k].shape != v.shape]


def beyond_head(source: Layout, target: Layout, differing: list[str]) -> list[str]:
    """Those of the `differing` keys that are not the head's class axis: every array outside the head's layer, and
    any of the head's that differs in more than its last axis.

    The head is the model's last layer; but a `.weights.h5` layout lists variables in HDF5 name order, where the
    head need not come last: then the one layer whose arrays differ in their last axis alone (a body layer cannot
    change its output width alone: the next layer's input axis would differ too), else the layer of the last
    differing array.
    """
    def last_axis_only(k: str) -> bool:
        return source.by_key[k].shape[:-1] == target.by_key[k].shape[:-1]

    head = target.variables[-1].group
    if differing and not any(target.by_key[k].group == head for k in differing):
        other_axes = {target.by_key[k].group for k in differing if not last_axis_only(k)}
        candidates = {target.by_key[k].group for k in differing if last_axis_only(k)} - other_axes
        head = candidates.pop() if len(candidates) == 1 else target.by_key[differing[-1]].group
    return [k for k in differing if target.by_key[k].group != head or not last_axis_only(k)]


def _of_image_size(keys) -> bool:
    """Whether the variable `keys` that differ are all arrays an image size alone changes (`_IMAGE_SIZE_ARRAYS`):
    another architecture changes others too, and may change these as well."""
    return bool(keys) and all(any(part in k for part in _IMAGE_SIZE_ARRAYS) for k in keys)


def check_pretrained_fits(pretrained: Layout, target: Layout, target_name: str) -> None:
    """Raises a UserError naming W0 (`pretrained.name`) and its first array that differs from `target` beyond a head
    of another class count (`head_keys`' rule, which every method from W0 follows).

    The soups call it before any ingredient is scored: the merge itself would find the difference only after that.

    Args:
        pretrained: W0's layout (resized to the ingredients' image size where it was).
        target: the ingredients' layout (or W1's, for MonoSoup).
        target_name: what the message calls `target` ("the ingredients' model 'coatnet_tiny'").
    """
    try:
        head_keys(pretrained, target)
    except UserError:
        same_arrays = pretrained.by_key.keys() == target.by_key.keys()
        beyond = beyond_head(pretrained, target, reshaped_keys(pretrained, target)) if same_arrays else []
        advice = (_IMAGE_SIZE_ADVICE if _of_image_size(beyond) else "Another architecture? Pass the W0 these "
                  "weights were fine-tuned from (--pretrained, or the config's model.init)")
        raise UserError(f"W0 does not fit {target_name} beyond its head: first differing layer "
                        f"{_first_difference(pretrained, target)}. {advice}. Received: pretrained={pretrained.name!r}"
                        ) from None


def _first_difference(pretrained: Layout, target: Layout) -> str:
    """The first array, in `target`'s order, that W0 lacks or holds with another shape beyond a head of another
    class count (`beyond_head`); else W0's first array `target` lacks (there is one: `head_keys` failed)."""
    beyond = set(beyond_head(pretrained, target, reshaped_keys(pretrained, target)))
    for v in target.variables:
        if v.key not in pretrained.by_key:
            return f"{v.name} {v.shape}, which W0 lacks"
        if v.key in beyond:
            return f"{v.name}, {pretrained.by_key[v.key].shape} in W0 but {v.shape} in {target.name or 'the model'}"
    extra = next(v for v in pretrained.variables if v.key not in target.by_key)
    return f"{extra.name} {extra.shape} of W0, which {target.name or 'the model'} lacks"


def empty_flat(size: int) -> np.ndarray:
    """A 64-byte aligned float32 vector, so jitted functions read it without a copy."""
    raw = np.empty(size + _ALIGNMENT // 4, dtype=np.float32)
    start = (-raw.ctypes.data % _ALIGNMENT) // 4
    return raw[start:start + size]


class WeightSet:
    """One set of weights in a `Layout`: the flat float32 vector of float variables plus the non-float ones.

    Args:
        layout: the variables' layout.
        flat: (layout.size,) float32 vector of the float variables in layout order (numpy or jax array).
        others: {key: array} for the non-float variables.
    """

    def __init__(self, layout: Layout, flat, others: Mapping[str, np.ndarray]):
        if tuple(np.shape(flat)) != (layout.size,):
            raise ValueError(f"Expected a flat vector of shape ({layout.size},). Received: shape={np.shape(flat)}")
        self.layout = layout
        self.flat = flat
        self.others = dict(others)

    def __getitem__(self, key: str) -> np.ndarray:
        """The variable `key` in its stored shape and dtype."""
        v = self.layout.by_key[key]
        if not v.is_float:
            return np.asarray(self.others[key])
        return np.asarray(self.flat[v.offset:v.offset + v.size]).reshape(v.shape).astype(v.dtype, copy=False)

    def to_dict(self) -> dict[str, np.ndarray]:
        """{key: array} in layout order."""
        return {v.key: self[v.key] for v in self.layout.variables}


def check_finite(layout: Layout, flat: np.ndarray, name: str) -> None:
    """Raises a ValueError naming the first variable of `flat` holding NaN or inf, with the offending values."""
    check_finite_values(whole(layout.variables), flat, 0, name)


def split_axis(v: Variable) -> int:
    """The axis a variable is split along: its first of size > 1, so a slice of it is contiguous in memory
    (a 1x1 convolution kernel (1, 1, in, out) splits along `in`)."""
    return next((axis for axis, n in enumerate(v.shape) if n > 1), 0)


def rows(v: Variable) -> int:
    """Rows along `split_axis` (a scalar is one row); a window may hold a variable's rows in parts."""
    return v.shape[split_axis(v)] if v.shape else 1


class Piece(NamedTuple):
    """Rows first..end-1 of a float variable: the unit the streaming mean reads, with everything a read needs
    worked out once (the fill loops run it for every window of every ingredient)."""

    variable: Variable
    first: int
    end: int
    start: int  # its flat range [start, stop)
    stop: int
    shape: tuple[int, ...]  # the rows' shape
    corner: tuple[int, ...] | None  # where the rows begin in the variable; None when the piece is all of it


def piece(v: Variable, first: int, end: int) -> Piece:
    """The `Piece` of rows first..end-1 of `v`."""
    if not v.shape:
        return Piece(v, 0, 1, v.offset, v.offset + 1, (), None)
    axis, row = split_axis(v), v.size // rows(v)
    shape = v.shape[:axis] + (end - first,) + v.shape[axis + 1:]
    corner = None if (first, end) == (0, rows(v)) else (0,) * axis + (first,) + (0,) * (len(v.shape) - axis - 1)
    return Piece(v, first, end, v.offset + first * row, v.offset + end * row, shape, corner)


def whole(variables) -> list[Piece]:
    """Pieces covering the float `variables` entirely."""
    return [piece(v, 0, rows(v)) for v in variables if v.is_float and v.size]


def check_finite_values(pieces, buffer: np.ndarray, start: int, name: str) -> None:
    """`check_finite` for the `pieces` (see `whole`) held in `buffer`, which begins at flat offset `start`."""
    for v, _, _, a, b, _, _ in pieces:
        values = np.asarray(buffer[a - start:b - start])
        bad = ~np.isfinite(values)
        if bad.any():
            at = int(np.argmax(bad))
            index = np.unravel_index(a - v.offset + at, v.shape) if v.shape else ()
            raise UserError(
                f"Variable {v.describe()} in {name} is not finite: {int(bad.sum())} of {b - a} values read are "
                f"NaN or inf, first {values[at]} at index {tuple(int(i) for i in index)}. Received: {name}"
            )
