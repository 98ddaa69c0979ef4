"""Per-class tables (the paper's Table V): several models side by side, per class accuracy, precision, recall, F1.

Every number comes from `ich_keras.evaluation.evaluate`; these functions only gather and format them.
"""

from __future__ import annotations

import numpy as np

from ich_keras.evaluation import METRICS, evaluate
from ich_keras.markdown import cell


def per_class_table(labels, log_probs_by_model: dict, class_names) -> dict:
    """Per-class numbers of several models on the same examples.

    Args:
        labels: (n,) integer labels.
        log_probs_by_model: {display name: (n, K) logits or log-probabilities}, in column order; the first is the
            reference the deltas in the markdown compare with (the best single checkpoint).
        class_names: K names in label order.

    Returns:
        A JSON-ready dict: "models" (names in order), "classes" ({class: {model: {accuracy, precision, recall, f1,
        support}}}) and "macro" ({model: {accuracy, precision, recall, f1}}).
    """
    if not log_probs_by_model:
        raise ValueError("A per-class table needs at least one model. Received: an empty dict")
    class_names = list(class_names)
    results = {name: evaluate(labels, np.asarray(lp), class_names) for name, lp in log_probs_by_model.items()}
    return {
        "models": list(results),
        "classes": {c: {name: r["per_class"][c] for name, r in results.items()} for c in class_names},
        "macro": {name: {m: r[m] for m in METRICS} for name, r in results.items()},
    }


def per_class_markdown(table: dict) -> str:
    """The per-class table as markdown: precision, recall and F1 per model (a class's accuracy is its recall, so it
    has no column of its own) and the last model's F1 change against the first's.

    Args:
        table: a `per_class_table` dict.

    Returns:
        A markdown table, one row per class plus a macro-average row.
    """
    models = table["models"]
    shown = ("precision", "recall", "f1")
    short = {"precision": "P", "recall": "R", "f1": "F1"}
    head = ["Class", "Support"] + [f"{short[m]} {name}" for name in models for m in shown]
    delta = len(models) > 1
    if delta:
        head.append(f"Δ F1 ({models[-1]} − {models[0]})")
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]

    def row(label, support, numbers):
        cells = [label, support] + [f"{100 * numbers[name][m]:.2f}" for name in models for m in shown]
        if delta:
            cells.append(f"{100 * (numbers[models[-1]]['f1'] - numbers[models[0]]['f1']):+.2f}")
        return "| " + " | ".join(cells) + " |"

    for name, by_model in table["classes"].items():
        lines.append(row(cell(name), str(by_model[models[0]]["support"]), by_model))
    lines.append(row("**macro**", "", table["macro"]))
    return "\n".join(lines)
