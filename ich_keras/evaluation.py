"""The one evaluation function: (labels, logits) -> loss, accuracy, macro P/R/F1, per-class numbers.

The training callback, the soups and the analysis all call `evaluate`, so a number means the same thing everywhere.
Definitions follow scikit-learn's `precision_recall_fscore_support(..., labels=range(num_classes), zero_division=0)`:
the macro means average over all num_classes classes. A class that is never predicted has precision 0, a class absent
from the labels has recall 0, and both count, as does a class absent from both (its P, R and F1 are 0), which
scikit-learn's default `labels` (only the classes seen in labels or predictions) would leave out.
"""

from __future__ import annotations

import numbers

import numpy as np

from ich_keras.errors import UserError


# The macro metrics every table shows, in their column order (loss beside them where a table has it).
METRICS = ("accuracy", "precision", "recall", "f1")


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax over the last axis, in float64."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def class_indices(values, num_classes: int, name: str = "labels") -> np.ndarray:
    """`values` as (n,) int64 class indices in [0, num_classes); a ValueError naming `name` for anything else (one-hot
    rows, fractions, an index out of range), which would otherwise be flattened or truncated into wrong numbers.

    Args:
        values: (n,) or (n, 1) integer-valued class indices.
        num_classes: K, the number of classes.
        name: what they are, for the message ("labels", "predictions").
    """
    values = np.asarray(values)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1:
        raise ValueError(f"Expected {name} as (n,) class indices (for one-hot rows, pass rows.argmax(-1)). "
                         f"Received: {name}.shape={values.shape}")
    if values.dtype.kind == "O":  # Python numbers (a list of ints and None, pandas' object columns)
        if not all(isinstance(v, numbers.Real) for v in values):
            raise ValueError(f"Expected {name} as integer class indices. Received: {name} holding "
                             f"{sorted({type(v).__name__ for v in values})}, the first {values[:3].tolist()}")
        values = values.astype(np.float64)
    whole = values.dtype.kind in "biu" or (values.dtype.kind == "f" and np.array_equal(values, np.round(values)))
    if not whole:
        raise ValueError(f"Expected {name} as integer class indices. Received: {name} of dtype {values.dtype}, "
                         f"the first {values[:3].tolist()}")
    # The range before the cast: a value past int64 would wrap into it.
    if values.size and (values.min() < 0 or values.max() >= num_classes):
        raise ValueError(f"{name.capitalize()} must lie in [0, {num_classes}). Received: min={values.min()}, "
                         f"max={values.max()}")
    return values.astype(np.int64)


def check_log_probabilities(log_probs: np.ndarray) -> None:
    """A ValueError unless every row over the last axis is a log-probability vector (its logsumexp is 0): logits or
    probabilities given instead make the distances and decompositions computed from them meaningless."""
    if log_probs.size == 0:
        return
    # logsumexp of log-probabilities: log(sum(p)) = 0; rows held in float32 sum to 1 within ~1e-6.
    top = log_probs.max(axis=-1, keepdims=True)
    total = np.squeeze(top, -1) + np.log(np.exp(log_probs - top).sum(axis=-1))
    worst = float(np.max(np.abs(total)))
    if not worst <= 1e-3:
        raise ValueError(f"Expected log-probabilities (`ich_keras.evaluation.log_softmax` of the logits), each row's "
                         f"logsumexp 0. Received: rows whose logsumexp is up to {worst:.3g} away from 0 (logits? "
                         f"probabilities?)")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities over the last axis, as float32 (`exp(log_softmax)`)."""
    return np.exp(log_softmax(logits)).astype(np.float32)


def pad_batch(images: np.ndarray, batch_size: int) -> tuple[np.ndarray, int]:
    """(images padded to `batch_size` by repeating the last image, the number of real images).

    Every forward pass in the project pads its last batch this way: on CPU every new input shape costs seconds of
    XLA compilation. Repeating a real image (not zeros) keeps the padding in the input distribution.
    """
    n = images.shape[0]
    if n >= batch_size:
        return images, n
    return np.concatenate([images, np.repeat(images[-1:], batch_size - n, axis=0)]), n


def forward(model, dataset) -> tuple[np.ndarray, np.ndarray]:
    """Runs `model` over a dataset of (images, labels) batches.

    The last, smaller batch is padded to the first batch's size (`pad_batch`) and the padding dropped again.

    Args:
        model: a Keras model returning logits.
        dataset: a finite `tf.data.Dataset` (or any iterable) of (images, int labels) batches.

    Returns:
        (labels (n,) int64, logits (n, num_classes) float32), in dataset order.
    """
    all_labels, all_logits = [], []
    batch_size = None
    for images, labels in dataset:
        # .numpy() on tf tensors: np.asarray on them warns under NumPy 2 (no `copy` keyword in their __array__).
        images = images.numpy() if hasattr(images, "numpy") else np.asarray(images)
        labels = labels.numpy() if hasattr(labels, "numpy") else np.asarray(labels)
        batch_size = batch_size or images.shape[0]
        images, n = pad_batch(images, batch_size)
        logits = np.asarray(_predict(model, images), dtype=np.float32)[:n]
        all_labels.append(labels.astype(np.int64))
        all_logits.append(logits)
    if not all_labels:
        raise ValueError("Cannot predict on an empty dataset. Received: dataset with 0 batches")
    return np.concatenate(all_labels), np.concatenate(all_logits)


def _predict(model, images: np.ndarray):
    from ich_keras import distributed

    if distributed.process_count() > 1:
        return distributed.replicated_predict(model, images)
    return model.predict_on_batch(images)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) counts; rows are true classes, columns predicted ones (as scikit-learn)."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    out = np.zeros_like(numerator, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def check_finite_outputs(outputs, model: str, advice: str = "") -> None:
    """Raises a UserError naming `model` when its outputs hold NaN or inf: weights that are finite can still not
    compute (a BatchNorm variance below zero, an overflow), and no number, file or figure is made of such outputs.

    Args:
        outputs: (n, num_classes) logits or probabilities.
        model: what produced them, for the message ("The dare soup", "soups/dare/soup.weights.h5").
        advice: what to do, appended to the message.
    """
    bad = ~np.isfinite(np.asarray(outputs)).all(axis=-1)
    if bad.any():
        raise UserError(f"{model} gives non-finite outputs (NaN or inf) for {int(bad.sum())} of {bad.size} images: "
                        f"its weights do not compute. {advice}".rstrip())


def evaluate(labels, logits, class_names: list[str] | None = None) -> dict:
    """Scores a classifier's logits against integer labels.

    Args:
        labels: (n,) integer class indices.
        logits: (n, num_classes) unnormalised scores. Probabilities also work for every number but `loss`,
            which is the mean cross-entropy of softmax(logits).
        class_names: names in label order, used as keys of `per_class`; defaults to "0", "1", ...

    Returns:
        A JSON-ready dict: `loss`, `accuracy`, `precision`, `recall`, `f1` (macro), `num_examples`,
        `per_class` ({name: {accuracy, precision, recall, f1, support}}, where a class's accuracy is its recall,
        as in the paper's per-class tables) and `confusion_matrix` (nested lists).
    """
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise ValueError(f"Expected logits of shape (n, num_classes). Received: logits.shape={logits.shape}")
    num_classes = logits.shape[1]
    labels = class_indices(labels, num_classes)
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(f"Expected logits of shape (n, num_classes) with n = len(labels) = {labels.shape[0]}. "
                         f"Received: logits.shape={logits.shape}")
    if not labels.size:
        raise ValueError("Expected at least one example to score. Received: 0 labels")
    if class_names is None:
        class_names = [str(c) for c in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(
            f"Expected {num_classes} class names, one per logit. Received: {len(class_names)} names"
        )

    loss = -log_softmax(logits)[np.arange(labels.size), labels].mean()
    predictions = logits.argmax(axis=-1)
    matrix = confusion_matrix(labels, predictions, num_classes)
    true_positives = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1)
    precision = _safe_divide(true_positives, matrix.sum(axis=0))
    recall = _safe_divide(true_positives, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    return {
        "loss": float(loss),
        "accuracy": float(true_positives.sum() / labels.size),
        "precision": float(precision.mean()),
        "recall": float(recall.mean()),
        "f1": float(f1.mean()),
        "num_examples": int(labels.size),
        "per_class": {
            name: {
                "accuracy": float(recall[c]),
                "precision": float(precision[c]),
                "recall": float(recall[c]),
                "f1": float(f1[c]),
                "support": int(support[c]),
            }
            for c, name in enumerate(class_names)
        },
        "confusion_matrix": matrix.tolist(),
    }
