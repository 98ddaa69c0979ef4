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

from ich_keras.soups.weights import Layout, WeightSet, as_sources, check_finite, empty_flat


def _mix(acc, x, weight):
    # (P,) float32 each; also says whether x is finite, so a NaN is caught without a second pass over memory.
    return acc + weight * (x - acc), jnp.all(jnp.isfinite(x))


# The accumulator is donated: XLA writes the new mean into the old one's buffer, so a running mean costs one copy.
mix_inplace = jax.jit(_mix, donate_argnums=(0,))
# Greedy and pruned soups keep the current soup while they try a candidate, so that variant must not donate.
mix = jax.jit(_mix)


def compilations() -> int:
    """How many times the averaging kernels have been compiled in this process (for tests)."""
    return mix_inplace._cache_size() + mix._cache_size()


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


def running_mean(ingredients, weights=None, progress: bool = False) -> WeightSet:
    """The (weighted) mean of the ingredients' float variables, streaming one ingredient at a time.

    Args:
        ingredients: `.weights.h5` paths, Keras models, `WeightSet`s or {key: array} dicts of one architecture.
        weights: optional non-negative weight per ingredient (need not sum to 1); default uniform.
        progress: show a progress bar over ingredients.

    Returns:
        A `WeightSet` whose float variables are the mean (accumulated in float32) and whose non-float variables
        are copied from the first ingredient.
    """
    reader = Reader(ingredients)
    if weights is None:
        weights = [1.0] * len(reader)
    weights = [float(w) for w in weights]
    if len(weights) != len(reader) or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(
            f"Expected {len(reader)} non-negative weights with a positive sum, one per ingredient. "
            f"Received: weights={weights}"
        )
    bar = _progress(len(reader), "ingredients") if progress else None
    acc, total = None, 0.0
    for index, weight in enumerate(weights):
        total += weight
        if weight > 0:
            acc = reader.mix(acc, index, weight / total, inplace=True)
        else:  # still read it, so a broken or mismatched file is reported even with weight 0
            reader.read(index)
        if bar:
            bar.update(index + 1)
    return reader.weight_set(acc)


def _progress(total: int, unit: str):
    import keras

    return keras.utils.Progbar(total, unit_name=unit)
