"""BatchNorm recalibration: recompute a soup's moving statistics on training data.

Averaging weights averages each BatchNorm's moving mean and variance too, but the soup's activations are not the
average of the ingredients' activations, so its statistics can be off. As `torch.optim.swa_utils.update_bn` does, we
run the soup in training mode over training batches and replace each moving mean / variance with the plain average
of the per-batch statistics (not an exponential one), layer by layer in one forward pass per batch.

Keras updates `moving = momentum * moving + (1 - momentum) * batch_stat` in training mode; feeding zeros as the old
moving values (training mode normalises with the batch statistics, so they do not change the activations) gives
`batch_stat = new / (1 - momentum)` without touching the layer.
"""

from __future__ import annotations

import jax
import keras
import numpy as np

from ich_keras import _keras_compat
from ich_keras.errors import UserError
from ich_keras.progress import Phase
from ich_keras.soups.forward import Evaluator
from ich_keras.weight_files import WeightSet, as_weight_set, empty_flat, model_variables


def batchnorm_layers(model) -> list:
    """Every BatchNormalization layer of `model` (nested ones included) that updates its statistics."""
    layers = [layer for layer in _keras_compat.nested_layers(model)
              if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in layers:
        if layer.renorm or not 0.0 <= layer.momentum < 1.0:
            raise UserError(
                f"Cannot recalibrate BatchNormalization {layer.name!r} (renorm={layer.renorm}). "
                f"Received: momentum={layer.momentum}"
            )
    return [layer for layer in layers if layer.trainable]


def recalibrate_bn(weights, model, batches, num_batches: int | None = None,
                   progress: bool = False) -> tuple[WeightSet, dict]:
    """A copy of `weights` with every BatchNorm's moving mean and variance recomputed on `batches`.

    Args:
        weights: the soup, in the layout of `model`'s `.weights.h5`: a `WeightSet` or its `.weights.h5` path.
        model: a built Keras model of that architecture.
        batches: re-iterable of (images, labels) training batches, without augmentation mixing.
        num_batches: use only the first `num_batches` batches (default all).
        progress: `[recalibrate-bn] training batches (i/n)` lines on stderr, at most one every 10 s.

    Returns:
        (the recalibrated `WeightSet`, {"layers": number of BatchNorm layers, "batches": batches used}).
    """
    weights = as_weight_set(weights)
    layers = batchnorm_layers(model)
    if not layers:
        raise UserError(
            f"The model has no trainable BatchNormalization layer to recalibrate. Received: {model.name!r}"
        )
    evaluator = Evaluator(model, weights.layout)
    key_of = {id(var): key for key, var in model_variables(model)}
    position = {id(var): i for i, var in enumerate(model.non_trainable_variables)}
    # (moving_mean key, moving_variance key, their positions among the non-trainable variables, momentum)
    stats = [(key_of[id(bn.moving_mean)], key_of[id(bn.moving_variance)],
              position[id(bn.moving_mean)], position[id(bn.moving_variance)], bn.momentum) for bn in layers]

    def batch_statistics(flat, others, constants, images):
        trainable, non_trainable = evaluator.variables(flat, others, constants)
        for _, _, mean_at, var_at, _ in stats:
            non_trainable[mean_at] = non_trainable[mean_at] * 0
            non_trainable[var_at] = non_trainable[var_at] * 0
        _, updated = model.stateless_call(trainable, non_trainable, images, training=True)
        return [(updated[m] / (1 - mom), updated[v] / (1 - mom)) for _, _, m, v, mom in stats]

    compute = jax.jit(batch_statistics)
    constants = evaluator.constants()
    others = {k: np.asarray(a) for k, a in weights.others.items()}
    sums, count, batch_size = None, 0, None
    # Batches are many and short: a line every 10 s at most.
    phase = Phase("recalibrate-bn", num_batches, progress, min_interval_s=10.0)
    for step, (images, _) in enumerate(batches):
        if num_batches is not None and step >= num_batches:
            break
        batch_size = batch_size or len(images)
        if len(images) < batch_size:
            continue  # a short last batch would compile the function again for a few examples
        batch = [(np.asarray(m, np.float64), np.asarray(v, np.float64))
                 for m, v in compute(weights.flat, others, constants, np.asarray(images))]
        sums = batch if sums is None else [(a + m, b + v) for (a, b), (m, v) in zip(sums, batch)]
        count += 1
        phase.step("training batches")
    if count == 0:
        raise UserError("BatchNorm recalibration needs at least one training batch. Received: an empty dataset")
    flat = empty_flat(weights.layout.size)
    flat[:] = np.asarray(weights.flat)
    for (mean_key, var_key, *_), (mean_sum, var_sum) in zip(stats, sums):
        for key, total in ((mean_key, mean_sum), (var_key, var_sum)):
            v = weights.layout.by_key[key]
            flat[v.offset:v.offset + v.size] = (total / count).reshape(-1)
    return WeightSet(weights.layout, flat, weights.others), {"layers": len(stats), "batches": count}
