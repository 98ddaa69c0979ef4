"""AdamW that updates a model's many small variables as one flat group: Keras' update, compiled into fewer kernels."""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

GROUP_BELOW = 1 << 16  # elements: biases, norms' scales and offsets, small tables; not the conv or dense kernels


def _host_zeros(shape, dtype=None):
    # Made by numpy and copied over: Keras' "zeros" runs a small XLA compilation for every new shape.
    return np.zeros(shape, keras.backend.standardize_dtype(dtype))


@keras.saving.register_keras_serializable(package="ich_keras")
class GroupedAdamW(keras.optimizers.AdamW):
    """`keras.optimizers.AdamW` whose variables under `group_below` elements share one flat pair of moments
    (per dtype) and are updated, and clipped, as one vector.

    The same update as Keras' AdamW, equal up to rounding (tests/test_optimizers.py); weight decay, clipping modes,
    gradient accumulation, EMA and schedules are Keras' own code. Keras updates every variable on its own, and XLA
    compiles ~6 kernels per variable for it with the global norm. Grouping coatnet_0's 147 variables under 64 k
    elements (of 194) took its training step's optimizer build, lowering and compilation at 224 px from ~21 s to
    ~16 s (`benchmarks/optimizer_update.py`, benchmarks/README.md). The large variables keep the per-variable
    update: concatenating them would copy every weight and gradient at each step.

    Args:
        group_below: variables with fewer elements than this are grouped; 0 groups none (Keras' AdamW).
        *args, **kwargs: as `keras.optimizers.AdamW` (`amsgrad` is not supported).
    """

    def __init__(self, *args, group_below: int = GROUP_BELOW, **kwargs):
        super().__init__(*args, **kwargs)
        if self.amsgrad:
            raise ValueError("GroupedAdamW does not support amsgrad; use keras.optimizers.AdamW. "
                             f"Received: amsgrad={self.amsgrad}")
        self.group_below = group_below

    def build(self, var_list):
        if self.built:
            return
        super(keras.optimizers.Adam, self).build(var_list)  # the base optimizer's: iterations, EMA, accumulators
        self._momentums, self._velocities = [], []
        self._slots = {}  # variable index -> (dtype, offset, size) in its group's flat moments
        group_sizes = {}
        for index, variable in enumerate(var_list):
            size = math.prod(variable.shape)
            if variable.overwrite_with_gradient or size < self.group_below:
                moments = (None, None)  # the group's, or none at all (Keras keeps none for these either)
                if not variable.overwrite_with_gradient:
                    offset = group_sizes.get(variable.dtype, 0)
                    self._slots[index] = (variable.dtype, offset, size)
                    group_sizes[variable.dtype] = offset + size
            else:
                moments = tuple(self.add_variable_from_reference(variable, name, initializer=_host_zeros)
                                for name in ("momentum", "velocity"))
            self._momentums.append(moments[0])
            self._velocities.append(moments[1])
        self._groups = {
            dtype: tuple(self.add_variable((size,), _host_zeros, dtype=dtype, name=f"grouped_{name}_{dtype}")
                         for name in ("momentum", "velocity"))
            for dtype, size in group_sizes.items()
        }

    def _clip_gradients(self, grads):
        if not (self.global_clipnorm and self.global_clipnorm > 0):
            return super()._clip_gradients(grads)
        # Keras' clip_by_global_norm, with the small gradients as one flat vector: one sum of squares, one scaling,
        # and slices that the group's update concatenates again (XLA folds that back into the vector).
        small = [i for i, g in enumerate(grads) if g is not None and math.prod(g.shape) < self.group_below]
        large = [i for i, g in enumerate(grads) if g is not None and math.prod(g.shape) >= self.group_below]
        squares = [ops.sum(ops.square(grads[i])) for i in large]
        if small:
            flat = ops.concatenate([ops.reshape(grads[i], (-1,)) for i in small])
            squares.append(ops.sum(ops.square(flat)))
        norm = ops.sqrt(ops.sum(ops.stack(squares)))
        scale = self.global_clipnorm * ops.minimum(1.0 / norm, 1.0 / self.global_clipnorm)
        scale = scale + (norm - norm)  # NaN for an infinite or NaN norm, as Keras does
        clipped = list(grads)
        for i in large:
            clipped[i] = grads[i] * scale
        if small:
            flat, offset = flat * scale, 0
            for i in small:
                size = math.prod(grads[i].shape)
                clipped[i] = ops.reshape(flat[offset:offset + size], grads[i].shape)
                offset += size
        return clipped

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        grouped = {}  # dtype -> [(gradient, variable, offset, size)]
        for grad, variable in zip(grads, trainable_variables):
            slot = self._slots.get(self._get_variable_index(variable))
            if slot is None:
                self.update_step(grad, variable, learning_rate)
            else:
                dtype, offset, size = slot
                grouped.setdefault(dtype, []).append((grad, variable, offset, size))
        for dtype, members in grouped.items():
            self._update_group(members, *self._groups[dtype], learning_rate)

    def _update_group(self, members, momentum, velocity, learning_rate):
        """Adam's `update_step`, term for term, on the group's flat moments; the members' slices of the step are
        subtracted from each variable."""
        dtype = momentum.dtype
        lr = ops.cast(learning_rate, dtype)
        local_step = ops.cast(self.iterations + 1, dtype)
        beta_1_power = ops.power(ops.cast(self.beta_1, dtype), local_step)
        beta_2_power = ops.power(ops.cast(self.beta_2, dtype), local_step)
        alpha = lr * ops.sqrt(1 - beta_2_power) / (1 - beta_1_power)

        gradient, present = self._flat_gradient(members, momentum.shape[0], dtype)
        m_old, v_old = momentum.value, velocity.value
        m = m_old + (gradient - m_old) * (1 - self.beta_1)
        v = v_old + (ops.square(gradient) - v_old) * (1 - self.beta_2)
        if present is not None:  # a variable without a gradient keeps its moments, as Keras skips it
            m, v = ops.where(present, m, m_old), ops.where(present, v, v_old)
        self.assign(momentum, m)
        self.assign(velocity, v)
        step = ops.divide(ops.multiply(m, alpha), ops.add(ops.sqrt(v), self.epsilon))
        for _, variable, offset, size in members:
            self.assign_sub(variable, ops.reshape(step[offset:offset + size], variable.shape))

    @staticmethod
    def _flat_gradient(members, total: int, dtype):
        """(the members' gradients as one (total,) vector in slot order, a (total,) mask of the members' slots or
        None when every slot has a member)."""
        pieces, covered, end = [], np.zeros(total, bool), 0
        for grad, _, offset, size in sorted(members, key=lambda member: member[2]):
            if offset > end:  # slots of variables that got no gradient this step
                pieces.append(ops.zeros((offset - end,), dtype))
            pieces.append(ops.reshape(ops.cast(grad, dtype), (-1,)))
            covered[offset:offset + size] = True
            end = offset + size
        if end < total:
            pieces.append(ops.zeros((total - end,), dtype))
        return ops.concatenate(pieces), (None if covered.all() else covered)

    def get_config(self):
        return {**super().get_config(), "group_below": self.group_below}
