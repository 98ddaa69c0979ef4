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
    (per dtype) and are updated, and clipped, as one vector; the rest are updated one by one, as Keras does.

    The same update as Keras' AdamW, term for term (bit for bit with `group_below=0`; equal up to rounding
    otherwise: tests/test_optimizers.py). The step size, the learning rate (a schedule) and the global norm are
    computed once per update instead of once per variable; gradient accumulation, EMA, loss scaling and the other
    clipping modes are Keras' own code. Keras' per-variable update traced the schedule ~200 times and XLA compiled
    ~6 kernels per variable for it: grouping coatnet_0's 147 variables under 64 k elements (of 194) shortened its
    training step's tracing, lowering and compilation by seconds (`benchmarks/optimizer_update.py`,
    benchmarks/README.md). The large variables are not grouped: concatenating them would copy every weight and
    gradient at each step.

    Args:
        group_below: variables with fewer elements than this are grouped; 0 groups none.
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
        self._moments = {}  # variable index -> its (momentum, velocity), for the variables not grouped
        self._slots = {}  # variable index -> (dtype, offset, size) in its group's flat moments
        group_sizes = {}
        for index, variable in enumerate(var_list):
            size = math.prod(variable.shape)
            if variable.overwrite_with_gradient:  # Keras overwrites it with its gradient and keeps no moments
                continue
            if self._grouped(variable.shape):
                offset = group_sizes.get(variable.dtype, 0)
                self._slots[index] = (variable.dtype, offset, size)
                group_sizes[variable.dtype] = offset + size
            else:
                self._moments[index] = tuple(self.add_variable_from_reference(variable, name, initializer=_host_zeros)
                                             for name in ("momentum", "velocity"))
        self._groups = {
            dtype: tuple(self.add_variable((size,), _host_zeros, dtype=dtype, name=f"grouped_{name}_{dtype}")
                         for name in ("momentum", "velocity"))
            for dtype, size in group_sizes.items()
        }

    def _grouped(self, shape) -> bool:
        """Whether a variable (or its gradient) of this shape is in the flat group."""
        return math.prod(shape) < self.group_below

    def _clip_gradients(self, grads):
        if not (self.global_clipnorm and self.global_clipnorm > 0):
            return super()._clip_gradients(grads)
        # Keras' clip_by_global_norm, with the small gradients as one flat vector: one sum of squares, one scaling,
        # and slices that the group's update concatenates again (XLA folds that back into the vector).
        small = [i for i, g in enumerate(grads) if g is not None and self._grouped(g.shape)]
        large = [i for i, g in enumerate(grads) if g is not None and not self._grouped(g.shape)]
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

    def _apply_weight_decay(self, variables):
        # Keras' decoupled decay, term for term, with the learning rate (a schedule) evaluated once per dtype
        # instead of once per variable: ~200 evaluations made the step's tracing longer.
        if self.weight_decay is None:
            return
        factors = {}  # dtype -> (learning rate, weight decay)
        for variable in variables:
            if self._use_weight_decay(variable):
                if variable.dtype not in factors:
                    factors[variable.dtype] = (ops.cast(self.learning_rate, variable.dtype),
                                               ops.cast(self.weight_decay, variable.dtype))
                lr, wd = factors[variable.dtype]
                variable.assign(variable - variable * wd * lr)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        step_sizes, grouped = {}, {}  # dtype -> Adam's step size; dtype -> [(gradient, variable, offset, size)]
        for grad, variable in zip(grads, trainable_variables):
            dtype = variable.dtype
            if dtype not in step_sizes:
                step_sizes[dtype] = self._step_size(learning_rate, dtype)
            index = self._get_variable_index(variable)
            if index in self._slots:
                _, offset, size = self._slots[index]
                grouped.setdefault(dtype, []).append((grad, variable, offset, size))
                continue
            momentum, velocity = self._moments[index]
            m, v = self._moments_after(ops.cast(grad, dtype), momentum.value, velocity.value)
            self.assign(momentum, m)
            self.assign(velocity, v)
            self.assign_sub(variable, self._step(m, v, step_sizes[dtype]))
        for dtype, members in grouped.items():
            self._update_group(members, *self._groups[dtype], step_sizes[dtype])

    def _step_size(self, learning_rate, dtype):
        """Adam's bias-corrected step size at this update, as Keras' `Adam.update_step` computes it per variable."""
        lr = ops.cast(learning_rate, dtype)
        local_step = ops.cast(self.iterations + 1, dtype)
        beta_1_power = ops.power(ops.cast(self.beta_1, dtype), local_step)
        beta_2_power = ops.power(ops.cast(self.beta_2, dtype), local_step)
        return lr * ops.sqrt(1 - beta_2_power) / (1 - beta_1_power)

    def _moments_after(self, gradient, m, v):
        return m + (gradient - m) * (1 - self.beta_1), v + (ops.square(gradient) - v) * (1 - self.beta_2)

    def _step(self, m, v, step_size):
        return ops.divide(ops.multiply(m, step_size), ops.add(ops.sqrt(v), self.epsilon))

    def _update_group(self, members, momentum, velocity, step_size):
        """The same update on the group's flat moments; each member's slice of the step is subtracted from it."""
        gradient, present = self._flat_gradient(members, momentum.shape[0], momentum.dtype)
        m_old, v_old = momentum.value, velocity.value
        m, v = self._moments_after(gradient, m_old, v_old)
        if present is not None:  # a variable without a gradient keeps its moments, as Keras skips it
            m, v = ops.where(present, m, m_old), ops.where(present, v, v_old)
        self.assign(momentum, m)
        self.assign(velocity, v)
        step = self._step(m, v, step_size)
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

    def finalize_variable_values(self, var_list):
        """Leaves the model's variables as trained. Keras' `fit` ends by copying the EMA averages into them, also
        when Ctrl-C lands before the first step built the averages (a TypeError then hid the interrupt); here the
        checkpoints already hold the averages (`checkpoints.EMAWeights`) and the saved state the raw weights."""

    def get_config(self):
        return {**super().get_config(), "group_below": self.group_below}
