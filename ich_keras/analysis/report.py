"""Markdown for the analysis: the models' metrics, the bias–variance tables, and report.md around the figures.

Only formatting here; every number arrives computed.
"""

from __future__ import annotations

from ich_keras.markdown import percent


def metrics_markdown(names, kinds, metrics: dict, reference: str) -> str:
    """Accuracy and macro P/R/F1 of every model on every split, with the change in accuracy against `reference`.

    Args:
        names: model names in row order.
        kinds: their kinds.
        metrics: {split: {name: evaluate dict}}.
        reference: the name the deltas compare with (the best single checkpoint).

    Returns:
        A line that says what the columns hold, then a markdown table.
    """
    # The headers alone left open whether P/R/F1 are macro or micro and what Δ is measured against.
    caption = (f"Accuracy and macro-averaged precision (P), recall (R) and F1 in %, loss the mean cross-entropy; "
               f"Δ = accuracy − that of the best single checkpoint (**{reference}**, in bold), in percentage points.")
    splits = list(metrics)
    head = ["Model", "Kind"] + [f"{s} {m}" for s in splits for m in ("acc", "P", "R", "F1", "loss")]
    head += [f"Δ {s} acc" for s in splits]
    lines = [caption, "", "| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for name, kind in zip(names, kinds):
        cells = [f"**{name}**" if name == reference else name, kind]
        for s in splits:
            r = metrics[s][name]
            cells += [percent(r["accuracy"]), percent(r["precision"]), percent(r["recall"]), percent(r["f1"]),
                      f"{r['loss']:.3f}"]
        cells += [f"{100 * (metrics[s][name]['accuracy'] - metrics[s][reference]['accuracy']):+.2f}" for s in splits]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _non_negative(value: float) -> float:
    """A KL divergence as shown: >= 0 (round-off gives -1e-17 where a model is the centre, as one ingredient is)."""
    return max(value, 0.0)


def bias_variance_markdown(result: dict) -> str:
    """The ingredients' decompositions and every model placed against them (`runner` builds `result`)."""
    log, zero = result["ingredients"]["log_loss"], result["ingredients"]["zero_one"]
    members = result["ingredients"]["members"]
    lines = [
        (f"Ensemble of the {members} ingredients" if members > 1 else "One ingredient: its own centre, no variance")
        + " (log-loss in nats, 0-1 loss as a fraction of the images):",
        "",
        "| Loss | Total (mean member) | Bias | Variance (0-1: net) | Check: total − bias − variance |",
        "|---|---:|---:|---:|---:|",
        f"| log-loss (centre: normalised geometric mean) | {log['total']:.4f} | {log['bias']:.4f} | "
        f"{_non_negative(log['variance']):.4f} | {log['total'] - log['bias'] - log['variance']:.1e} |",  # a mean KL
        f"| 0-1 (Domingos; net variance = {zero['unbiased_variance']:.4f} unbiased − "
        f"{zero['biased_variance']:.4f} biased) | {zero['total']:.4f} | {zero['bias']:.4f} | "
        f"{zero['net_variance']:.4f} | {zero['total'] - zero['bias'] - zero['net_variance']:.1e} |",
        "",
        "Every model against the ingredients' centre (log-loss) and main prediction (0-1). Bias is the shared term "
        "above; excess = loss − bias, whose mean over the ingredients is exactly their variance (0-1: the net "
        "variance; bias_variance.json's `variance` is the gross disagreement); KL(centre‖model) "
        "and disagreement say how far the model sits from the centre.",
        "",
        "| Model | Kind | CE | Excess CE | KL(centre‖model) | 0-1 error | Excess 0-1 | Disagreement |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["models"]:
        ll, zo = row["log_loss"], row["zero_one"]
        lines.append(f"| {row['name']} | {row['kind']} | {ll['loss']:.4f} | {ll['excess']:+.4f} | "
                     f"{_non_negative(ll['kl_from_centre']):.4f} | {zo['loss']:.4f} | {zo['excess']:+.4f} | "
                     f"{zo['disagreement']:.4f} |")
    return "\n".join(lines)


def report_markdown(sections: list[tuple[str, str]], title: str, preamble: str) -> str:
    """report.md: a title, a preamble, then each (heading, body) section."""
    parts = [f"# {title}", "", preamble, ""]
    for heading, body in sections:
        parts += [f"## {heading}", "", body, ""]
    return "\n".join(parts)
