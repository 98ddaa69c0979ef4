"""Bias–variance decompositions over an ensemble of models (the soup's ingredients), exact per example.

Log-loss (Heskes 1998; Yang et al. 2020), with the normalised geometric mean of the members as the centre:

    log q_ik  = (1/M) sum_m log p_ik^m - log Z_i,    Z_i = sum_k exp((1/M) sum_m log p_ik^m)   (<= 1)
    total     = (1/M) sum_m -log p^m_{i,y_i}                     mean member cross-entropy
    bias      = -log q_{i,y_i}                                   cross-entropy of the centre
    variance  = (1/M) sum_m KL(q_i || p_i^m)                     mean KL from the centre to the members
    total     = bias + variance                                  exactly, for every example i

(the variance equals -log Z_i, which is why the identity holds). With hard labels there is no separate noise term:
it sits inside the bias. Numbers are averaged over the examples.

0-1 loss (Domingos 2000, zero noise), with the main prediction y^main_i = the most frequent member prediction
(ties go to the lowest class index):

    total     = (1/M) sum_m 1[f_m(x_i) != y_i]                  mean member error
    bias      = 1[y^main_i != y_i]
    variance  = (1/M) sum_m 1[f_m(x_i) != y^main_i]             disagreement with the main prediction
    c_i       = 1 if bias = 0, else -P_m(f_m(x_i) = y_i | f_m(x_i) != y^main_i)
    total     = bias + c_i variance                             exactly, for every example i

Averaged over the examples, c_i variance splits into the unbiased variance (examples with bias 0, it adds to the
loss) and the biased variance (examples with bias 1, it subtracts: disagreeing with a wrong main prediction can
be right). "net_variance" is their sum.

A single model (a soup, soft voting) has no variance of its own across one run; `against_reference` places it
relative to the ingredients instead: its loss, its divergence from the ingredients' centre (KL(q || g) or
disagreement with the main prediction) and its excess loss over the shared bias term. Over the members, the mean
excess is exactly the ensemble's variance (for the 0-1 loss its net variance, not the gross "variance").
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

from ich_keras.evaluation import check_log_probabilities, class_indices


def _check(log_probs, labels) -> tuple[np.ndarray, np.ndarray]:
    log_probs = np.asarray(log_probs, dtype=np.float64)
    if log_probs.ndim != 3:
        raise ValueError(f"Expected log-probabilities of shape (models, n, classes). Received: shape={log_probs.shape}")
    labels = class_indices(labels, log_probs.shape[2])
    if log_probs.shape[1] != labels.shape[0]:
        raise ValueError(
            f"Expected log-probabilities of shape (models, n, classes) with n = len(labels) = {labels.shape[0]}. "
            f"Received: shape={log_probs.shape}"
        )
    if not labels.size:  # every mean below would be NaN
        raise ValueError("Expected at least one example. Received: 0 labels")
    check_log_probabilities(log_probs)
    return log_probs, labels


def geometric_centre(log_probs) -> np.ndarray:
    """The normalised geometric mean of the members' probabilities.

    Args:
        log_probs: (M, n, K) member log-probabilities.

    Returns:
        (n, K) log q, with q_i proportional to prod_m (p_i^m)^(1/M) and summing to 1.
    """
    mean_log = np.asarray(log_probs, dtype=np.float64).mean(axis=0)  # (n, K)
    return mean_log - logsumexp(mean_log, axis=-1, keepdims=True)


def _kl(log_p, log_q) -> np.ndarray:
    """KL(p || q) over the last axis: a class p rules out (log p = -inf) adds 0 (0 log 0 = 0), one that only q rules
    out adds inf."""
    p = np.exp(log_p)
    with np.errstate(invalid="ignore"):  # -inf - -inf where both rule a class out; np.where keeps the 0 instead
        terms = np.where(p > 0, p * (log_p - log_q), 0.0)
    return terms.sum(axis=-1)


def log_loss_decomposition(log_probs, labels) -> dict:
    """Log-loss bias–variance decomposition of an ensemble (module docstring).

    Args:
        log_probs: (M, n, K) member log-probabilities on the same n examples.
        labels: (n,) integer labels.

    Returns:
        {"total", "bias", "variance"} (means over examples, total = bias + variance), "per_member" (each member's
        cross-entropy, (M,) list) and "per_example" ({"total", "bias", "variance"} as (n,) arrays).
    """
    log_probs, labels = _check(log_probs, labels)
    rows = np.arange(labels.size)
    member_ce = -log_probs[:, rows, labels]  # (M, n)
    centre = geometric_centre(log_probs)  # (n, K)
    bias = -centre[rows, labels]  # (n,)
    variance = _kl(centre[None], log_probs).mean(axis=0)  # (M, n) -> (n,)
    total = member_ce.mean(axis=0)
    return {
        "total": float(total.mean()), "bias": float(bias.mean()), "variance": float(variance.mean()),
        "per_member": member_ce.mean(axis=1).tolist(),
        "per_example": {"total": total, "bias": bias, "variance": variance},
    }


def main_prediction(predictions, num_classes: int) -> np.ndarray:
    """(n,) most frequent class over the members' (M, n) predictions; ties go to the lowest class index."""
    predictions = np.asarray(predictions, dtype=np.int64)
    counts = np.zeros((predictions.shape[1], num_classes), dtype=np.int64)  # (n, K) votes per class
    for member in predictions:
        np.add.at(counts, (np.arange(member.size), member), 1)
    return counts.argmax(axis=-1)


def zero_one_decomposition(predictions, labels, num_classes: int) -> dict:
    """Domingos' 0-1 loss decomposition of an ensemble (module docstring).

    Args:
        predictions: (M, n) integer class predictions of M members.
        labels: (n,) integer labels.
        num_classes: K.

    Returns:
        {"total", "bias", "variance", "unbiased_variance", "biased_variance", "net_variance"} as means over the
        examples (total = bias + net_variance, net_variance = unbiased_variance - biased_variance), and
        "per_example" with (n,) arrays "total", "bias", "variance", "coefficient".
    """
    labels = class_indices(labels, num_classes)
    predictions = np.asarray(predictions)
    if predictions.ndim != 2 or predictions.shape[1] != labels.size:
        raise ValueError(f"Expected predictions of shape (models, n) with n = len(labels) = {labels.size}. "
                         f"Received: shape={predictions.shape}")
    if not labels.size:
        raise ValueError("Expected at least one example. Received: 0 labels")
    predictions = class_indices(predictions.reshape(-1), num_classes, "predictions").reshape(predictions.shape)
    main = main_prediction(predictions, num_classes)
    wrong = predictions != labels[None]  # (M, n)
    off_main = predictions != main[None]  # (M, n)
    total = wrong.mean(axis=0)
    bias = (main != labels).astype(np.float64)
    variance = off_main.mean(axis=0)
    # P(f = y | f != main) where main != y; 0 where no member leaves the main prediction (then variance is 0).
    right_off_main = (~wrong & off_main).sum(axis=0)
    p_right = np.divide(right_off_main, off_main.sum(axis=0), out=np.zeros_like(variance),
                        where=off_main.sum(axis=0) > 0)
    coefficient = np.where(bias == 0, 1.0, -p_right)
    unbiased = np.where(bias == 0, variance, 0.0)
    biased = np.where(bias == 1, p_right * variance, 0.0)
    return {
        "total": float(total.mean()), "bias": float(bias.mean()), "variance": float(variance.mean()),
        "unbiased_variance": float(unbiased.mean()), "biased_variance": float(biased.mean()),
        "net_variance": float((unbiased - biased).mean()),
        "per_example": {"total": total, "bias": bias, "variance": variance, "coefficient": coefficient},
    }


def against_reference(member_log_probs, labels, log_probs) -> dict:
    """One model's losses placed against an ensemble's centre and main prediction (module docstring).

    Args:
        member_log_probs: (M, n, K) log-probabilities of the reference ensemble (the ingredients).
        labels: (n,) integer labels.
        log_probs: (n, K) log-probabilities of the model to place (a soup, soft voting, one ingredient).

    Returns:
        {"log_loss": {"loss", "bias", "kl_from_centre", "excess"}, "zero_one": {"loss", "bias",
        "disagreement", "excess"}}, where bias is the ensemble's (shared) bias term and excess = loss - bias.
    """
    member_log_probs, labels = _check(member_log_probs, labels)
    log_probs = np.asarray(log_probs, dtype=np.float64)
    if log_probs.shape != member_log_probs.shape[1:]:
        raise ValueError(f"Expected log-probabilities of shape {member_log_probs.shape[1:]}. "
                         f"Received: shape={log_probs.shape}")
    rows = np.arange(labels.size)
    centre = geometric_centre(member_log_probs)
    loss = float(-log_probs[rows, labels].mean())
    bias = float(-centre[rows, labels].mean())
    main = main_prediction(member_log_probs.argmax(axis=-1), member_log_probs.shape[2])
    predicted = log_probs.argmax(axis=-1)
    error = float((predicted != labels).mean())
    main_error = float((main != labels).mean())
    return {
        "log_loss": {"loss": loss, "bias": bias, "kl_from_centre": float(_kl(centre, log_probs).mean()),
                     "excess": loss - bias},
        "zero_one": {"loss": error, "bias": main_error, "disagreement": float((predicted != main).mean()),
                     "excess": error - main_error},
    }
