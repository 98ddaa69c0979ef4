"""Merging one weight tensor at a time: the streaming driver behind Model Stock, TIES, DARE and SLERP.

These methods need every ingredient's copy of a tensor at once (cosines between offsets, a sign vote, a per-tensor
top-k), so they cannot use the one-ingredient-at-a-time running mean. The driver keeps all N files open and, for
each float variable in layout order, reads its N copies into one reused (N, size) float32 buffer and W0's copy
beside it, calls the method's pure function, and writes the result into the soup's flat vector. Peak memory is
the soup plus N copies of the largest tensor and the method's temporaries over them (a few more such copies, e.g.
Model Stock's float64 offsets): CoAtNet-0's soup is 105 MiB and its largest tensor 9 MiB; never N models.

W0 is read by key from its own file: a head of another class count (the init loader's rule, `layout.head_keys`) has
no task vector and is averaged uniformly instead; any other difference from the ingredients raises. BatchNorm's
moving means and variances are averaged uniformly too (`pretrained_counterparts`); a merge without W0 (SLERP) takes
their weighted sum (`statistics_weights`): moments of the data, not directions in weight space.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np

from ich_keras.errors import UserError
from ich_keras.weight_layout import (Variable, WeightSet, check_finite_values, empty_flat, head_keys,
                                    running_statistics, whole)
from ich_keras.weight_files import as_source, as_sources

# merge(variable, w0 (size,) float32 or None when merging without W0, stack (N, size) float32)
#     -> (merged (size,), JSON-ready stats or None)
TensorMerge = Callable[[Variable, "np.ndarray | None", np.ndarray], "tuple[np.ndarray, dict | None]"]


def merge_per_tensor(ingredients, merge: TensorMerge, pretrained=None, *, min_ingredients: int = 1,
                     exactly: int | None = None, statistics_weights=None) -> tuple[WeightSet, dict]:
    """Merges the ingredients tensor by tensor with `merge`, streaming one tensor's N copies at a time.

    Args:
        ingredients: `.weights.h5` paths, Keras models, `WeightSet`s or {key: array} dicts of one architecture.
        merge: the per-tensor method (see `TensorMerge`); it never sees a variable W0 has no counterpart for.
        pretrained: W0 (same kinds), or None for a method that needs none (SLERP).
        min_ingredients: the fewest ingredients the method accepts.
        exactly: the only number of ingredients the method accepts, if any.
        statistics_weights: without W0, one weight per ingredient for BatchNorm's running statistics, which are
            then their weighted sum rather than `merge`'s (SLERP's 1 - t, t); None merges them like the rest.

    Returns:
        (the merged `WeightSet` in the ingredients' layout, non-float variables copied from the first ingredient;
        {"layers": {key: stats}, "new_head": [keys averaged uniformly for want of a W0 counterpart],
        "running_statistics": how many BatchNorm statistics were averaged uniformly}).
    """
    sources = as_sources(ingredients)
    n = len(sources)
    if n < min_ingredients or (exactly is not None and n != exactly):
        wanted = f"exactly {exactly}" if exactly is not None else f"at least {min_ingredients}"
        raise UserError(f"This merge needs {wanted} ingredients. Received: {n} ingredients")
    layout = sources[0].layout()
    for source in sources:
        source.check(layout)
    base = as_source(pretrained) if pretrained is not None else None
    matched = pretrained_counterparts(layout, base) if base is not None else {}
    floats = [v for v in layout.variables if v.is_float and v.size]
    largest = max((v.size for v in floats), default=0)
    stack_buffer, w0_buffer = empty_flat(n * largest), empty_flat(largest)
    flat = empty_flat(layout.size)
    layers, uniform = {}, []
    linear = running_statistics(layout) if statistics_weights is not None else set()
    with contextlib.ExitStack() as files:
        handles = [files.enter_context(s.open(layout)) for s in sources]
        w0_handle = files.enter_context(base.open(base.layout())) if base is not None else None
        for v in floats:
            stack = stack_buffer[:n * v.size].reshape(n, v.size)  # (N, size), each row contiguous
            for row, handle, source in zip(stack, handles, sources):
                read_variable(handle, v, row, source.name)
            if base is not None and v.key not in matched:
                flat[v.offset:v.offset + v.size] = stack.mean(axis=0)
                uniform.append(v.key)
                continue
            if v.key in linear:
                flat[v.offset:v.offset + v.size] = np.asarray(statistics_weights, np.float32) @ stack
                continue
            w0 = None
            if base is not None:
                w0_var = matched[v.key]
                w0 = read_variable(w0_handle, w0_var, w0_buffer, base.name)
            merged, stats = merge(v, w0, stack)
            flat[v.offset:v.offset + v.size] = merged
            if stats is not None:
                layers[v.key] = {"label": v.label, **stats}
        others = handles[0].others()
    report = {"layers": layers, **averaged_uniformly(layout, uniform)}
    if linear:
        report["running_statistics"] = len(linear)
    return WeightSet(layout, flat, others), report


def pretrained_counterparts(layout, base) -> dict[str, Variable]:
    """{key: W0's variable} for every float variable of `layout` that has a task vector: all but a new head and
    BatchNorm's running statistics, which the merges average uniformly instead.

    The head is found by the init loader's rule (`layout.head_keys`): its arrays may differ in their class axis;
    any other difference between W0 and the ingredients raises, naming the arrays. The statistics are estimates of
    the data's moments, not weights the fine-tunes learned: moved along task vectors with a scale above 1/N
    (task arithmetic's lambda 0.5 over 4 fine-tunes extrapolates to 2 mean - W0) a variance turns negative and
    the model's outputs NaN. Their uniform mean is what the uniform soup holds; `--recalibrate-bn` re-estimates it.

    Args:
        layout: the ingredients' layout.
        base: W0's weight source.
    """
    base_layout = base.layout()
    skipped = set(head_keys(base_layout, layout)) | running_statistics(layout)
    return {v.key: base_layout.by_key[v.key] for v in layout.variables if v.is_float and v.key not in skipped}


def averaged_uniformly(layout, keys) -> dict:
    """The report of the variables a merge from W0 averaged uniformly: {"new_head": [keys], "running_statistics":
    how many BatchNorm statistics}."""
    statistics = running_statistics(layout)
    return {"new_head": [k for k in keys if k not in statistics],
            "running_statistics": sum(k in statistics for k in keys)}


def read_variable(handle, v: Variable, buffer: np.ndarray, name: str) -> np.ndarray:
    """Variable `v` read through an open `handle` into the front of `buffer`, checked finite; returns that view."""
    values = buffer[:v.size]
    handle.fill(whole([v]), values, v.offset)
    check_finite_values(whole([v]), values, v.offset, name)
    return values
