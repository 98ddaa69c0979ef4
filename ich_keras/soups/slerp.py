"""SLERP: spherical linear interpolation between two ingredients, per weight tensor.

For one tensor with flattened values a, b and their angle omega = arccos(<a, b> / (|a| |b|)):

    W = sin((1 - t) omega) / sin(omega) a + sin(t omega) / sin(omega) b

on the raw (unnormalised) values, as mergekit does. When a and b are nearly colinear (|cos omega| > 0.9995, where
sin(omega) loses its digits) or one of them is zero, W = (1 - t) a + t b. t = 0 gives a, t = 1 gives b.
BatchNorm's running statistics are always (1 - t) a + t b: mergekit's models have none, and SLERP of two positive
variance vectors at omega apart scales their mean up by 1 / cos(omega / 2) at t = 1/2.
"""

from __future__ import annotations

import numpy as np

from ich_keras.errors import UserError
from ich_keras.soups.per_tensor import merge_per_tensor
from ich_keras.weight_files import WeightSet

# Above this |cos|, sin(omega) is too small to divide by in float32; mergekit uses the same threshold.
COLINEAR = 0.9995


def slerp_tensor(a: np.ndarray, b: np.ndarray, t: float) -> tuple[np.ndarray, dict]:
    """SLERP of two flattened tensors.

    Args:
        a, b: (size,) values of the two ingredients.
        t: the interpolation point, 0 = a, 1 = b.

    Returns:
        ((size,) float32 values, {"cos": cos omega (0 if a or b is zero), "linear": whether it fell back}).
    """
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    norms = np.linalg.norm(a64) * np.linalg.norm(b64)
    cos = float(np.clip(a64 @ b64 / norms, -1.0, 1.0)) if norms > 0 else 0.0
    if norms == 0 or abs(cos) > COLINEAR:
        return ((1.0 - t) * a64 + t * b64).astype(np.float32), {"cos": cos, "linear": True}
    omega = np.arccos(cos)
    merged = (np.sin((1.0 - t) * omega) * a64 + np.sin(t * omega) * b64) / np.sin(omega)
    return merged.astype(np.float32), {"cos": cos, "linear": False}


def check_t(t: float) -> None:
    if not 0.0 <= t <= 1.0:
        raise UserError(f"The SLERP point t must lie in [0, 1]. Received: slerp_t={t}")


def slerp(first, second, t: float = 0.5) -> tuple[WeightSet, dict]:
    """SLERP between two ingredients of one architecture, tensor by tensor (holds the soup and two tensors).

    Args:
        first, second: `.weights.h5` paths, Keras models, `WeightSet`s or dicts.
        t: the interpolation point in [0, 1] (0 = first, 1 = second).

    Returns:
        (the soup, {"t", "layers": {key: {"label", "cos", "linear"}}, "running_statistics": how many BatchNorm
        statistics were interpolated linearly}).
    """
    check_t(t)
    weights, report = merge_per_tensor([first, second], lambda v, w0, stack: slerp_tensor(stack[0], stack[1], t),
                                       exactly=2, statistics_weights=(1.0 - t, t))
    return weights, {"t": t, "layers": report["layers"], "running_statistics": report["running_statistics"]}
