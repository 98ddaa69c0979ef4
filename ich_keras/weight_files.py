"""Weights read and written as the soups, fit's init and resume need them: variables keyed by their path in a
Keras 3 `.weights.h5` file.

Keras 3 writes `model.save_weights` as an HDF5 tree that mirrors the model's object tree: a functional model's layers
sit under `layers/<snake_case class name>[_<n>]`, nested layers under their parent, and each layer's own variables
are datasets `vars/0`, `vars/1`, ... (trainable first, then non-trainable, in creation order); the `vars` group
carries the layer's name as an attribute. A compiled model also writes its optimizer under `optimizer/`, which a soup
neither averages nor writes back. Two files of the same architecture therefore share every dataset path, so the
path ("layers/conv2d/vars/0") is the variable's identity here; the layer name is kept only for messages.

Every source of weights (a file, a live model, a dict) exposes the same `Layout` and can fill a flat float32 buffer:
all floating variables concatenated in layout order. The averaging kernels work on that one vector, so they compile
once whatever the architecture; non-float variables (counters, integer buffers) are carried beside it and copied.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np

from ich_keras.errors import UserError
from ich_keras.progress import short_name
from ich_keras.weight_layout import Layout, Variable, WeightSet, check_finite, empty_flat, whole

# Top-level groups of a `.weights.h5` that are not model state.
_SKIPPED_ROOTS = ("optimizer",)

# --- sources ---------------------------------------------------------------------------------------------------


class _Source:
    """What every source shares: a whole read through its `open` handle. `name` identifies it in errors (a file's
    path); `label` is what progress lines call it."""

    def read_into(self, layout: Layout, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Fills `flat` with this source's float variables in `layout` order; returns the non-float ones."""
        with self.open(layout) as handle:
            handle.fill(whole(layout.variables), flat, 0)
            return handle.others()


class H5Source(_Source):
    """Reads a Keras 3 `.weights.h5` file directly with h5py, one variable at a time; no model is built."""

    def __init__(self, path: str | os.PathLike, label: str | None = None):
        self.path = Path(path)
        self.name = str(self.path)
        self.label = label or short_name(self.path)  # "epoch_011"; soups across runs pass "run_a/epoch_011"
        if self.path.is_dir():
            raise UserError(f"The weights path is a folder; pass a .weights.h5 file. "
                            f"Received: path={str(self.path)!r}")
        if not self.path.is_file():
            raise UserError(f"Weights file not found. Received: path={str(self.path)!r}")
        self._layout = None
        self._checked: Layout | None = None  # the layout whose variable set this file was found to hold

    def layout(self) -> Layout:
        if self._layout is None:
            entries, labels = [], {}
            with _open(self.path) as f:
                for key in _dataset_keys(f):
                    dataset = h5py.h5d.open(f.id, key.encode())
                    group = key.rsplit("/", 1)[0] if "/" in key else "/"
                    if group not in labels:
                        label = f[group].attrs.get("name", "")
                        labels[group] = label.decode() if isinstance(label, bytes) else str(label)
                    entries.append((key, dataset.shape, dataset.dtype, f"{labels[group]} #{key.rsplit('/', 1)[-1]}"))
            if not entries:
                raise UserError(f"No model variables in weights file. Received: path={str(self.path)!r}")
            self._layout = Layout.from_entries(entries, name=self.name)
        return self._layout

    def check(self, layout: Layout) -> None:
        """Raises a UserError (a ValueError) naming a variable of `layout` this file lacks, or one it has in excess.

        Cheap (one walk over the file's names), so a run can check every ingredient before its first read; shapes
        and float-ness are checked as each variable is read.
        """
        if self._checked is layout:
            return
        with _open(self.path) as f:
            keys = set(_dataset_keys(f))
        if keys != layout.by_key.keys():
            layout.check_matches(self.layout(), layout.name or "the reference", self.name)
        self._checked = layout

    def open(self, layout: Layout) -> _H5Handle:
        """Opens the file for reading variables of `layout` (checked as by `check`)."""
        self.check(layout)
        return _H5Handle(self, layout)


class _H5Handle:
    """An open `.weights.h5` whose variables are read with h5py's low-level API.

    The high-level `Group.visititems` / `Dataset.read_direct` cost about twice the time of the reads themselves
    on a 105 MiB checkpoint (object creation and selection bookkeeping per call); names are walked with
    `h5o.visit` and each dataset is opened by its path once.
    """

    def __init__(self, source: H5Source, layout: Layout):
        self.source, self.layout = source, layout
        self.file = _open(source.path)
        self.datasets: dict[str, h5py.h5d.DatasetID] = {}

    def _dataset(self, v: Variable) -> h5py.h5d.DatasetID:
        dataset = self.datasets.get(v.key)
        if dataset is None:
            dataset = self.datasets[v.key] = h5py.h5d.open(self.file.id, v.key.encode())
            if dataset.shape != v.shape or np.issubdtype(dataset.dtype, np.floating) != v.is_float:
                self.layout.check_matches(self.source.layout(), self.layout.name or "the reference", self.source.name)
        return dataset

    def fill(self, pieces, out: np.ndarray, base: int) -> None:
        """Reads each `weight_layout.Piece` into its flat range of `out`, which starts at `base`."""
        for v, _, _, start, stop, shape, corner in pieces:
            target = out[start - base:stop - base].reshape(shape)
            dataset = self._dataset(v)
            # HDF5 converts float16/float64 on the fly into the float32 target, without a temporary.
            if corner is None:
                dataset.read(h5py.h5s.ALL, h5py.h5s.ALL, target)
            else:
                selection = dataset.get_space()
                selection.select_hyperslab(corner, shape)
                dataset.read(h5py.h5s.create_simple(shape), selection, target)

    def others(self) -> dict[str, np.ndarray]:
        return {v.key: h5py.Dataset(self._dataset(v))[()] for v in self.layout.variables if not v.is_float}

    def close(self):
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _dataset_keys(file: h5py.File) -> list[str]:
    """Paths of the file's model datasets (not its optimizer's), in HDF5's name order (as `visititems` gives)."""
    keys = []

    def visit(name: bytes, info) -> None:
        key = name.decode()
        if info.type == h5py.h5o.TYPE_DATASET and key.split("/", 1)[0] not in _SKIPPED_ROOTS:
            keys.append(key)

    h5py.h5o.visit(file.id, visit, info=True)
    return keys


class _MemoryHandle:
    def __init__(self, values: Mapping[str, np.ndarray], layout: Layout):
        self.values, self.layout = values, layout

    def fill(self, pieces, out: np.ndarray, base: int) -> None:
        for v, _, _, a, b, _, _ in pieces:
            out[a - base:b - base] = np.asarray(self.values[v.key], np.float32).reshape(-1)[a - v.offset:b - v.offset]

    def others(self) -> dict[str, np.ndarray]:
        return {v.key: np.asarray(self.values[v.key]) for v in self.layout.variables if not v.is_float}

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


class _MemorySource(_Source):
    """Shared by sources whose values are already in memory."""

    def layout(self) -> Layout:
        return self._layout

    def _values(self) -> Mapping[str, np.ndarray]:
        raise NotImplementedError

    def check(self, layout: Layout) -> None:
        layout.check_matches(self._layout, layout.name or "the reference", self.name)

    def open(self, layout: Layout) -> _MemoryHandle:
        self.check(layout)
        return _MemoryHandle(self._values(), layout)


class ModelSource(_MemorySource):
    """A live Keras model's current variables, keyed by the paths `model.save_weights` would write."""

    def __init__(self, model):
        self.model = model
        self.name = self.label = f"model {model.name!r}"
        self.pairs = model_variables(model)
        self._layout = Layout.from_entries(
            [(key, tuple(var.shape), np.dtype(var.dtype), var.path) for key, var in self.pairs], name=self.name
        )

    def _values(self):
        return {key: np.asarray(var.numpy()) for key, var in self.pairs}


class DictSource(_MemorySource):
    """An in-memory weight set {key: array} (e.g. a `WeightSet.to_dict()` or a MonoSoup result)."""

    def __init__(self, values: Mapping[str, np.ndarray], name: str = "weights dict"):
        self.values = {k: np.asarray(a) for k, a in values.items()}
        self.name = self.label = name
        self._layout = Layout.from_entries([(k, a.shape, a.dtype, "") for k, a in self.values.items()], name=name)

    def _values(self):
        return self.values


Source = H5Source | ModelSource | DictSource


def _is_model(item) -> bool:
    """Whether `item` is a Keras model (anything that saves weights and has variables)."""
    return hasattr(item, "save_weights") and hasattr(item, "variables")


def as_source(item) -> Source:
    """Wraps a `.weights.h5` path, a Keras model, a `WeightSet` or a {key: array} dict as a weight source."""
    if isinstance(item, _Source):
        return item
    if isinstance(item, (str, os.PathLike)):
        return H5Source(item)
    if isinstance(item, WeightSet):
        return DictSource(item.to_dict(), name="soup")
    if isinstance(item, Mapping):
        return DictSource(item)
    if _is_model(item):
        return ModelSource(item)
    raise ValueError(
        "An ingredient must be a .weights.h5 path, a Keras model, a WeightSet or a {key: array} dict. "
        f"Received: {type(item).__name__}"
    )


def as_sources(items) -> list[Source]:
    """`as_source` over a sequence; at least one ingredient is required."""
    if isinstance(items, (str, os.PathLike, WeightSet, dict)) or _is_model(items):
        raise ValueError(f"Expected a list of ingredients (paths, models, weight sets). Received: one "
                         f"{type(items).__name__} ({str(items)[:80]!r}); wrap it in a list")
    sources = [as_source(item) for item in items]
    if not sources:
        raise ValueError("At least one ingredient is required. Received: an empty list")
    return sources


def read(source, layout: Layout | None = None) -> WeightSet:
    """Reads a whole weight set (one checkpoint in memory) and checks it is finite."""
    source = as_source(source)
    layout = layout or source.layout()
    flat = empty_flat(layout.size)
    others = source.read_into(layout, flat)
    check_finite(layout, flat, source.name)
    return WeightSet(layout, flat, others)


def as_weight_set(weights) -> WeightSet:
    """`weights` itself if it is a `WeightSet`, else the ingredient it names read whole (`read`)."""
    return weights if isinstance(weights, WeightSet) else read(weights)


TIMM_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".tar")  # .tar: timm's training checkpoints, .pth.tar


def check_not_timm(path: str | Path, model_name: str = "MODEL") -> None:
    """Raises a UserError saying to convert a timm / torch checkpoint (by its suffix) given where Keras weights
    belong: the downloaded file named as model.init, --pretrained or --weights."""
    if Path(path).suffix in TIMM_SUFFIXES:
        raise UserError(f"The weights are a timm / torch checkpoint, not Keras weights: convert them first with "
                        f"`python -m ich_keras.convert --model {model_name} --checkpoint {path} --output "
                        f"FILE.weights.h5` (--image-size N for the model's image size) and name FILE.weights.h5. "
                        f"Received: path={str(path)!r}")


def _open(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as error:
        check_not_timm(path)
        raise UserError(f"Cannot read weights file as HDF5 ({error}). Received: path={str(path)!r}") from None


# --- models ----------------------------------------------------------------------------------------------------


def model_variables(model) -> list[tuple[str, object]]:
    """(key, variable) for every variable `model.save_weights` writes, keyed by its dataset path in the file.

    Keras has no public map from a variable to its place in `.weights.h5`, so this runs the saver's own walk
    (`_keras_compat.saved_variables`) into an in-memory store that records the variable objects instead of writing them.
    `tests/test_soups_weights.py` pins that the keys equal the paths a real `save_weights` writes.
    """
    from ich_keras import _keras_compat

    if not model.built:
        raise ValueError(f"The model must be built before its weights can be read. Received: model={model.name!r}")
    pairs = []
    for inner_path, entries in _keras_compat.saved_variables(model).items():
        group = "" if inner_path == "__root__" else inner_path
        if group.split("/", 1)[0] in _SKIPPED_ROOTS:
            continue
        for index, var in entries.items():
            if hasattr(var, "path"):  # a Keras variable, not state stored as a plain array
                pairs.append((f"{group}/vars/{index}" if group else f"vars/{index}", var))
    return pairs


# --- writing ---------------------------------------------------------------------------------------------------


def save(weights: WeightSet, path: str | os.PathLike, template=None) -> Path:
    """Writes `weights` as a `.weights.h5` that `model.load_weights` accepts, atomically.

    Args:
        weights: the weight set to write; each variable gets its layout dtype back.
        path: target path ending in `.weights.h5` (Keras refuses other names).
        template: optional `.weights.h5` of the same architecture whose group attributes (layer names) are copied,
            so the file reads like one Keras wrote.

    Returns:
        The path written.
    """
    from ich_keras.atomic import atomic_path

    path = Path(path)
    if not path.name.endswith(".weights.h5"):
        raise UserError(f"A Keras weights file must end in .weights.h5. Received: path={str(path)!r}")
    attrs = _group_attrs(template) if template is not None else {}
    # Built in memory, then written as one file: a disk that fills up is then the write's OSError. HDF5 writing to
    # the disk itself crashed the process (a segmentation fault closing a file whose flush had failed).
    built = io.BytesIO()
    with h5py.File(built, "w") as f:
        for v in weights.layout.variables:
            f.create_dataset(v.key, data=weights[v.key])
        for group, group_attrs in attrs.items():
            if group in f:
                f[group].attrs.update(group_attrs)
    with atomic_path(path, suffix=".weights.h5") as tmp:
        tmp.write_bytes(built.getbuffer())
    return path


def _group_attrs(template) -> dict[str, dict]:
    if isinstance(template, ModelSource) or _is_model(template):
        model = template.model if isinstance(template, ModelSource) else template
        return {key.rsplit("/", 1)[0]: {"name": var.path.rsplit("/", 1)[0]} for key, var in model_variables(model)}
    source = as_source(template)
    if not isinstance(source, H5Source):
        return {}
    attrs = {}
    with _open(source.path) as f:
        f.visititems(lambda key, obj: attrs.__setitem__(key, dict(obj.attrs))
                     if isinstance(obj, h5py.Group) and len(obj.attrs) else None)
    return attrs
