"""Streaming weight averaging: one jitted update over the flat float32 vector, compiled once per architecture.

A running mean over N ingredients never holds more than the accumulator and one ingredient's read buffer:

    mean_n = mean_{n-1} + (x_n - mean_{n-1}) / n

The same update with weight -1/(n-1) removes an ingredient from a mean of n (pruned soups), and with weight alpha
it interpolates W0 + alpha (W1 - W0) (WiSE-FT). The weight is a traced scalar, so none of these recompile.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ich_keras.soups.weights import (
    Layout,
    WeightSet,
    as_sources,
    check_finite,
    check_finite_values,
    empty_flat,
    rows,
)


def _mix(acc, x, weight):
    # (P,) float32 each; also says whether x is finite, so a NaN is caught without a second pass over memory.
    return acc + weight * (x - acc), jnp.all(jnp.isfinite(x))


# The accumulator is donated: XLA writes the new mean into the old one's buffer, so a running mean costs one copy.
mix_inplace = jax.jit(_mix, donate_argnums=(0,))
# Greedy and pruned soups keep the current soup while they try a candidate, so that variant must not donate.
mix = jax.jit(_mix)


def compilations() -> int:
    """How many times the averaging kernels have been compiled in this process (for tests)."""
    return mix_inplace._cache_size() + mix._cache_size() + mix_window._cache_size()


class Reader:
    """Reads ingredients one at a time into a single reused, aligned buffer, checking layout and finiteness.

    Args:
        sources: weight sources (see `weights.as_sources`); the first fixes the layout.
    """

    def __init__(self, sources):
        self.sources = as_sources(sources)
        self.layout: Layout = self.sources[0].layout()
        self.buffer = empty_flat(self.layout.size)
        self.others: dict[str, np.ndarray] | None = None  # non-float variables, copied from the first ingredient

    def __len__(self) -> int:
        return len(self.sources)

    def read(self, index: int) -> np.ndarray:
        """Fills and returns the buffer with ingredient `index` (valid until the next read)."""
        others = self.sources[index].read_into(self.layout, self.buffer)
        if self.others is None:
            self.others = others
        return self.buffer

    def name(self, index: int) -> str:
        return self.sources[index].name

    def mix(self, acc, index: int, weight: float, inplace: bool = False):
        """acc + weight * (ingredient[index] - acc), in float32; raises if the ingredient holds NaN or inf.

        `acc` may be None, meaning "no soup yet": the result is then the ingredient itself.
        """
        x = self.read(index)
        if acc is None:
            acc, weight = jnp.zeros(self.layout.size, jnp.float32), 1.0
            inplace = True
        out, finite = (mix_inplace if inplace else mix)(acc, x, np.float32(weight))
        # bool() waits for the kernel: XLA reads the numpy buffer in place, so it must finish before the next read.
        if not bool(finite):
            check_finite(self.layout, x, self.name(index))
        return out

    def weight_set(self, flat) -> WeightSet:
        return WeightSet(self.layout, flat, self.others or {})


# The streaming mean works through the flat vector in windows of this many floats (4 MiB of float32), packed full
# by splitting variables along an axis: two read buffers cost little next to the accumulator (CoAtNet-0: 105 MiB,
# 27 windows, 97 % full), and the dispatches per ingredient cost nothing measurable. Measured on CoAtNet-0, 8
# ingredients: 8 MiB windows of whole variables (68 % full) took 30 % longer and 30 MiB more memory.
WINDOW = 1 << 20


def _mix_window(acc, x, start, length, weight):
    # acc (P + window,) float32, padded so that no window runs past its end; x (window,), of which the first
    # `length` values are this window's variables. Outside them the accumulator is left as it was.
    window = jax.lax.dynamic_slice(acc, (start,), x.shape)
    valid = jnp.arange(x.shape[0]) < length
    mixed = jnp.where(valid, window + weight * (x - window), window)
    # NaN or inf anywhere in x makes the sum non-finite; a (rare) false alarm from overflow only costs a scan.
    finite = jnp.isfinite(jnp.sum(jnp.where(valid, x, 0.0)))
    return jax.lax.dynamic_update_slice(acc, mixed, (start,)), finite


# Compiled once per (model size, window): start, length and weight are traced, so every window of every
# ingredient reuses it; the accumulator is donated, so XLA updates it in place.
mix_window = jax.jit(_mix_window, donate_argnums=(0,))


def plan_windows(layout: Layout, window: int = WINDOW) -> tuple[int, list[tuple[int, int, list]]]:
    """Packs the float variables, split by rows where needed, into consecutive windows of the flat vector.

    Returns:
        (the window size used: at least the largest row, [(start, stop, pieces), ...]) with pieces
        (variable, first row, end row) in flat order, so each window is the flat range [start, stop).
    """
    floats = [v for v in layout.variables if v.is_float and v.size]
    window = max([window] + [v.size // rows(v) for v in floats])
    window = min(window, max(layout.size, 1))
    plans, pieces, start, used = [], [], 0, 0

    def close():
        nonlocal pieces, used
        if pieces:
            plans.append((start, start + used, pieces))
        pieces, used = [], 0

    for v in floats:
        row, n, first = v.size // rows(v), rows(v), 0
        while first < n:
            if not pieces:
                start = v.offset + first * row
            take = min((window - used) // row, n - first)
            if take == 0:
                close()
                continue
            pieces.append((v, first, first + take))
            used += take * row
            first += take
    close()
    return window, plans


def running_mean(ingredients, weights=None, progress: bool = False, window: int = WINDOW) -> WeightSet:
    """The (weighted) mean of the ingredients' float variables, streaming one window of one ingredient at a time.

    Two window-sized read buffers alternate, so reading the next window from disk overlaps the jitted update of
    the previous one; peak memory is the float32 accumulator plus three windows, whatever the number of
    ingredients.

    Args:
        ingredients: `.weights.h5` paths, Keras models, `WeightSet`s or {key: array} dicts of one architecture.
        weights: optional non-negative weight per ingredient (need not sum to 1); default uniform.
        progress: show a progress bar over ingredients.
        window: floats per update (raised to the largest variable's size).

    Returns:
        A `WeightSet` whose float variables are the mean (accumulated in float32) and whose non-float variables
        are copied from the first ingredient.
    """
    sources = as_sources(ingredients)
    layout = sources[0].layout()
    if weights is None:
        weights = [1.0] * len(sources)
    weights = [float(w) for w in weights]
    if len(weights) != len(sources) or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(
            f"Expected {len(sources)} non-negative weights with a positive sum, one per ingredient. "
            f"Received: weights={weights}"
        )
    size, plans = plan_windows(layout, window)
    acc = jnp.zeros(layout.size + size, jnp.float32)
    buffers = [empty_flat(size), empty_flat(size)]
    pending = [None, None]  # per buffer: (finite flag, source name, pieces, start) of the update reading it
    others, total, turn = None, 0.0, 0
    bar = _progress(len(sources), "ingredients") if progress else None

    def wait(slot):
        # Blocks until the update that reads buffers[slot] is done, and names any NaN / inf it saw.
        if pending[slot] is not None:
            finite, name, pieces, start = pending[slot]
            pending[slot] = None
            if not bool(finite):
                check_finite_values(pieces, buffers[slot], start, name)

    for index, (source, weight) in enumerate(zip(sources, weights)):
        total += weight
        # The first ingredient with weight replaces the zeros outright (weight / total = 1).
        fraction = np.float32(weight / total if total > 0 else 0.0)
        with source.open(layout) as handle:
            if others is None:
                others = handle.others()
            for start, stop, pieces in plans:
                wait(turn)  # the update two windows ago read this buffer
                handle.fill(pieces, buffers[turn], start)
                if weight > 0:  # a weight-0 ingredient is still read, so a broken file is still reported
                    acc, finite = mix_window(acc, buffers[turn], np.int32(start), np.int32(stop - start), fraction)
                    pending[turn] = (finite, source.name, pieces, start)
                turn = 1 - turn
        if bar:
            bar.update(index + 1)
    wait(0)
    wait(1)
    flat = np.asarray(acc)[:layout.size]  # a view: no copy of the soup
    return WeightSet(layout, flat, others or {})


def _progress(total: int, unit: str):
    import keras

    return keras.utils.Progbar(total, unit_name=unit)
