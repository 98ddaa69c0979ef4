"""Learning-rate schedules, evaluated at every optimizer update (`optimizer.iterations`), not once per epoch."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="ich_keras")
class WarmupCosineRestarts(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup, then cosine annealing with warm restarts (SGDR; PyTorch's CosineAnnealingWarmRestarts).

    During the first `warmup_steps` updates the rate rises linearly to `peak` (reaching it at update
    `warmup_steps`); after that it is keras' `CosineDecayRestarts` shifted by the warmup: period `first_decay_steps`
    updates, each next period `t_mul` times longer and `m_mul` times lower, annealing to `min_learning_rate`.

    Args:
        peak: the rate at the start of each period (before `m_mul` scaling).
        first_decay_steps: the first period in optimizer updates (T0).
        warmup_steps: updates of linear warmup; 0 for none.
        t_mul: period growth factor (T_mult).
        m_mul: peak decay factor per restart.
        min_learning_rate: the floor each period anneals to (eta_min).
    """

    def __init__(self, peak, first_decay_steps, warmup_steps=0, t_mul=1.0, m_mul=1.0, min_learning_rate=0.0):
        self.peak = float(peak)
        self.first_decay_steps = int(first_decay_steps)
        self.warmup_steps = int(warmup_steps)
        self.t_mul = float(t_mul)
        self.m_mul = float(m_mul)
        self.min_learning_rate = float(min_learning_rate)
        self._cosine = keras.optimizers.schedules.CosineDecayRestarts(
            self.peak,
            self.first_decay_steps,
            t_mul=self.t_mul,
            m_mul=self.m_mul,
            alpha=self.min_learning_rate / self.peak,
        )

    def __call__(self, step):
        step = ops.cast(step, "float32")
        cosine = self._cosine(ops.maximum(step - self.warmup_steps, 0.0))
        if self.warmup_steps == 0:
            return cosine
        warmup = self.peak * step / self.warmup_steps
        return ops.where(step < self.warmup_steps, warmup, cosine)

    def get_config(self):
        return {
            "peak": self.peak,
            "first_decay_steps": self.first_decay_steps,
            "warmup_steps": self.warmup_steps,
            "t_mul": self.t_mul,
            "m_mul": self.m_mul,
            "min_learning_rate": self.min_learning_rate,
        }
