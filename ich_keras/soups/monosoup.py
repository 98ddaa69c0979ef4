"""MonoSoup: a soup from one fine-tuned model W1 and its pretrained initialisation W0.

Per variable with >= 2 dims (a convolution kernel (kh, kw, in, out) is read as the (kh*kw*in, out) matrix, the way
it multiplies its input patches), with delta = W1 - W0 and singular values s_1 >= s_2 >= ... >= s_r:

    k          variance rule: smallest k with sum_{i<=k} s_i^2 >= R * sum_i s_i^2
               Vetterli rule: ceil(exp(H)), H the entropy of p_i = s_i / sum_j s_j (the effective rank)
    high       rank-k reconstruction of delta; low = delta - high
    P_k        sum_{i<=k} s_i^2 / sum_i s_i^2 (captured energy)
    rho        (s_{k+1} / s_1)^2, 0 at full rank
    lambda_low = rho + (1 - rho) sqrt(1 - P_k); lambda_high = 1 - lambda_low
    W          = W0 + lambda_high * high + lambda_low * low

1-D and non-float variables come from W1, as does a variable W0 lacks or holds with another shape (a new head).
"""

from __future__ import annotations

import math

import numpy as np

from ich_keras.errors import UserError
from ich_keras.weight_layout import check_pretrained_fits, head_keys
from ich_keras.weight_files import WeightSet, as_source, empty_flat, read

RULES = ("variance", "vetterli")


def check_options(rule: str, R: float) -> None:
    """Raises a UserError naming the option unless `rule` is one of `RULES` and, for the variance rule, the energy
    fraction `R` lies in (0, 1] (NaN does not)."""
    if rule not in RULES:
        raise UserError(f"rule must be one of {RULES}. Received: rule={rule!r}")
    if rule == "variance" and not 0.0 < R <= 1.0:
        raise UserError(f"--energy (R, the energy fraction of --rule variance) must lie in (0, 1]. Received: R={R}")


def select_rank(singular_values: np.ndarray, rule: str, R: float = 0.9) -> int:
    """The rank k that `rule` keeps for these singular values (descending, not all zero).

    Args:
        singular_values: (r,) non-negative, descending.
        rule: "variance" (energy fraction `R`) or "vetterli" (effective rank).
        R: energy fraction for the variance rule, in (0, 1].

    Returns:
        k in [1, r].
    """
    s = np.asarray(singular_values, dtype=np.float64)
    r = s.size
    if rule == "variance":
        check_options(rule, R)
        captured = np.cumsum(s**2) / np.sum(s**2)
        # The tolerance absorbs rounding, so R = 1 means "all of the energy" rather than "more than the sum".
        k = int(np.argmax(captured >= R - 1e-9)) + 1
    elif rule == "vetterli":
        p = s / s.sum()
        p = p[p > 0]
        entropy = float(-(p * np.log(p)).sum())
        k = math.ceil(math.exp(entropy) - 1e-9)
    else:
        raise UserError(f"rule must be one of {RULES}. Received: rule={rule!r}")
    return min(max(k, 1), r)


def split_delta(delta: np.ndarray, rule: str, R: float = 0.9) -> tuple[np.ndarray, dict]:
    """MonoSoup's reweighting of one 2-D delta.

    Args:
        delta: (m, n) W1 - W0.
        rule, R: as `select_rank`.

    Returns:
        (the reweighted delta lambda_high * high + lambda_low * low, {rank, k, P_k, rho, lambda_high,
        lambda_low}); a zero delta is returned unchanged with k = 0.
    """
    delta = np.asarray(delta, dtype=np.float64)
    u, s, vt = np.linalg.svd(delta, full_matrices=False)  # u (m, r), s (r,), vt (r, n)
    r = s.size
    if r == 0 or s[0] == 0.0:
        return delta, {"rank": r, "k": 0, "P_k": 1.0, "rho": 0.0, "lambda_high": 1.0, "lambda_low": 0.0}
    k = select_rank(s, rule, R)
    energy = s**2
    captured = float(energy[:k].sum() / energy.sum())
    rho = float((s[k] / s[0]) ** 2) if k < r else 0.0
    lambda_low = rho + (1.0 - rho) * math.sqrt(max(1.0 - captured, 0.0))
    lambda_high = 1.0 - lambda_low
    high = (u[:, :k] * s[:k]) @ vt[:k]  # (m, k) * (k,) @ (k, n)
    low = delta - high
    stats = {"rank": r, "k": k, "P_k": captured, "rho": rho, "lambda_high": lambda_high, "lambda_low": lambda_low}
    return lambda_high * high + lambda_low * low, stats


def aligned_pretrained(pretrained, target: WeightSet) -> tuple[WeightSet, list[str]]:
    """W0 in `target`'s layout: W0's variables, with its head taken from `target` when W0 has another class count.

    The rule is the init loader's (`ich_keras.init_weights`): only the head may differ, in its class axis; any other
    difference raises, naming the arrays.

    Returns:
        (W0 as a `WeightSet` of target.layout, the keys taken from `target` because W0 has no counterpart).
    """
    base = read(as_source(pretrained))
    check_pretrained_fits(base.layout, target.layout, f"the fine-tuned weights {target.layout.name or ''}".rstrip())
    from_target = head_keys(base.layout, target.layout)
    flat = empty_flat(target.layout.size)
    flat[:] = np.asarray(target.flat)
    for v in target.layout.variables:
        if v.is_float and v.key not in from_target:  # non-float variables live in `others`, from the target
            w0 = base.layout.by_key[v.key]
            flat[v.offset:v.offset + v.size] = base.flat[w0.offset:w0.offset + w0.size]
    return WeightSet(target.layout, flat, target.others), from_target


def monosoup(pretrained, finetuned, rule: str = "variance", R: float = 0.9) -> tuple[WeightSet, dict]:
    """MonoSoup of one fine-tuned model against its pretrained weights.

    Args:
        pretrained: W0 (`.weights.h5` path, Keras model, `WeightSet` or dict); may lack the new head.
        finetuned: W1, same kinds.
        rule: "variance" or "vetterli".
        R: energy fraction for the variance rule.

    Returns:
        (the MonoSoup weights in W1's layout, a JSON-ready report {"rule", "R", "layers": {key: stats},
        "from_finetuned": [keys copied from W1]}).
    """
    check_options(rule, R)
    w1 = read(as_source(finetuned))
    w0, no_counterpart = aligned_pretrained(pretrained, w1)
    flat = empty_flat(w1.layout.size)
    flat[:] = np.asarray(w1.flat)
    layers, from_finetuned, skip = {}, list(no_counterpart), set(no_counterpart)
    for v in w1.layout.variables:
        if v.key in skip:
            continue
        if not v.is_float or len(v.shape) < 2:
            from_finetuned.append(v.key)
            continue
        start, stop = v.offset, v.offset + v.size
        base = np.asarray(w0.flat[start:stop], dtype=np.float64).reshape(-1, v.shape[-1])  # (prod(shape[:-1]), out)
        delta = np.asarray(flat[start:stop], dtype=np.float64).reshape(base.shape) - base
        new_delta, stats = split_delta(delta, rule, R)
        flat[start:stop] = (base + new_delta).reshape(-1)
        layers[v.key] = {"label": v.label, "shape": list(v.shape), "matrix": list(base.shape), **stats}
    report = {"rule": rule, "R": R if rule == "variance" else None, "layers": layers,
              "from_finetuned": from_finetuned, "no_pretrained_counterpart": no_counterpart}
    return WeightSet(w1.layout, flat, w1.others), report
