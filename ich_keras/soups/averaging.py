"""Streaming weight averaging: one jitted update over the flat float32 vector, compiled once per architecture.

A running mean over N ingredients never holds more than the accumulator and one ingredient's read buffer:

    mean_n = mean_{n-1} + (x_n - mean_{n-1}) / n

The same update with weight -1/(n-1) removes an ingredient from a mean of n (pruned soups), and with weight alpha
it interpolates W0 + alpha (W1 - W0) (WiSE-FT). The weight is a traced scalar, so none of these recompile.
"""

from __future__ import annotations

import concurrent.futures

import jax
import jax.numpy as jnp
import numpy as np

from ich_keras.progress import Phase
from ich_keras.weight_layout import (
    Layout,
    WeightSet,
    check_finite,
    check_finite_values,
    empty_flat,
    piece,
    rows,
    whole,
)
from ich_keras.weight_files import as_sources


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
        # Every ingredient's names and shapes (its file's metadata only) before any is read or scored: a mismatched
        # one found after minutes of scoring the others wasted them.
        for source in self.sources[1:]:
            self.layout.check_matches(source.layout(), self.sources[0].name, source.name)
        self.buffer = empty_flat(self.layout.size)
        self.others: dict[str, np.ndarray] | None = None  # non-float variables, copied from the first ingredient
        self.last_others: dict[str, np.ndarray] = {}  # those of the ingredient read last

    def __len__(self) -> int:
        return len(self.sources)

    def read(self, index: int) -> np.ndarray:
        """Fills and returns the buffer with ingredient `index` (valid until the next read)."""
        others = self.sources[index].read_into(self.layout, self.buffer)
        if self.others is None:
            self.others = others
        self.last_others = others or {}
        return self.buffer

    def name(self, index: int) -> str:
        return self.sources[index].name

    def label(self, index: int) -> str:
        return self.sources[index].label

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

    def alone(self, index: int) -> WeightSet:
        """Ingredient `index` as a WeightSet (its floats checked for NaN and inf), its non-float variables its own:
        the weight sets of soups take the first-read ingredient's."""
        flat = self.mix(None, index, 1.0)
        return WeightSet(self.layout, flat, self.last_others)


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
    # x[0] is a token: it is ready when this update is, so waiting on it says that x's buffer may be refilled
    # (the accumulator itself is donated to the next update and cannot be waited on).
    return jax.lax.dynamic_update_slice(acc, mixed, (start,)), x[0]


# Compiled once per (model size, window): start, length and weight are traced, so every window of every
# ingredient reuses it; the accumulator is donated, so XLA updates it in place. It does not test x for NaN / inf:
# that would cost a third of the update, and a NaN or inf in any ingredient stays in the mean, so one test of the
# finished mean finds it (see `_name_non_finite`).
mix_window = jax.jit(_mix_window, donate_argnums=(0,))


def plan_windows(layout: Layout, window: int = WINDOW) -> tuple[int, list[tuple[int, int, list]]]:
    """Packs the float variables, split by rows where needed, into consecutive windows of the flat vector.

    Returns:
        (the window size used: at least the largest row, [(start, stop, pieces), ...]) with the `Piece`s of
        each window in flat order, so each window is the flat range [start, stop).
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
            pieces.append(piece(v, first, first + take))
            used += take * row
            first += take
    close()
    return window, plans


def running_mean(ingredients, weights=None, progress: bool = False, window: int = WINDOW) -> WeightSet:
    """The (weighted) mean of the ingredients' float variables, streaming one window of one ingredient at a time.

    Two window-sized read buffers alternate, so reading the next window from disk overlaps the jitted update of
    the previous one; peak memory is the float32 accumulator plus three windows, whatever the number of
    ingredients. (Taking every ingredient's window in turn, so the accumulator's window stays in the CPU cache,
    was measured no faster and costs HDF5 about 6 MiB per open file.)

    Args:
        ingredients: `.weights.h5` paths, Keras models, `WeightSet`s or {key: array} dicts of one architecture.
        weights: optional non-negative weight per ingredient (need not sum to 1); default uniform.
        progress: one `[average] reading NAME (i/n)` line per ingredient on stderr.
        window: floats per update (raised to the longest row: a variable is split between windows by rows only).

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
    # Ingredient i moves the mean by weight_i / (weight_1 + ... + weight_i) towards itself; the first with weight
    # replaces the zeros outright (fraction 1).
    totals = np.cumsum(weights)
    fractions = [np.float32(w / t if t > 0 else 0.0) for w, t in zip(weights, totals)]
    size, plans = plan_windows(layout, window)
    # Allocating the accumulator and compiling the update take XLA ~0.1 s, mostly without the GIL: do it on a
    # second thread while this one checks that every ingredient holds the same variables (a bad 20th file then
    # fails before any averaging).
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        ready = pool.submit(_empty_accumulator, layout.size + size, size)
        for source in sources:
            source.check(layout)
        acc = ready.result()
    buffers = [empty_flat(size), empty_flat(size)]
    pending = [None, None]  # per buffer: a token of the update reading it
    others, turn = None, 0
    phase = Phase("average", len(sources), progress)

    def wait(slot):
        # Blocks until the update that reads buffers[slot] is done.
        if pending[slot] is not None:
            pending[slot].block_until_ready()
            pending[slot] = None

    for source, weight, fraction in zip(sources, weights, fractions):
        phase.step(f"reading {source.label}")
        with source.open(layout) as handle:
            if others is None:
                others = handle.others()
            for start, stop, pieces in plans:
                wait(turn)  # the update two windows ago read this buffer
                handle.fill(pieces, buffers[turn], start)
                if weight > 0:  # a weight-0 ingredient is still read, so a broken file is still reported
                    acc, pending[turn] = mix_window(acc, buffers[turn], np.int32(start), np.int32(stop - start),
                                                    fraction)
                turn = 1 - turn
    wait(0)
    wait(1)
    flat = np.asarray(acc)[:layout.size]  # a view: no copy of the soup
    if not np.isfinite(flat).all():
        _name_non_finite(layout, flat, [s for s, w in zip(sources, weights) if w > 0])
    return WeightSet(layout, flat, others or {})


def _empty_accumulator(size: int, window: int):
    """Zeros of `size`, after a no-op update that compiles `mix_window` for them."""
    acc, done = mix_window(jnp.zeros(size, jnp.float32), empty_flat(window), np.int32(0), np.int32(0), np.float32(0))
    done.block_until_ready()
    return acc


def _name_non_finite(layout: Layout, mean: np.ndarray, sources) -> None:
    """Raises a ValueError naming the ingredient and variable behind a NaN or inf in `mean`."""
    bad = next(v for v in layout.variables if v.is_float and not np.isfinite(mean[v.offset:v.offset + v.size]).all())
    buffer = empty_flat(bad.size)
    for source in sources:
        with source.open(layout) as handle:
            handle.fill(whole([bad]), buffer, bad.offset)
        check_finite_values(whole([bad]), buffer, bad.offset, source.name)
    raise ValueError(
        f"The mean of variable {bad.describe()} overflows float32, although every ingredient is finite. "
        f"Received: {len(sources)} ingredients"
    )
