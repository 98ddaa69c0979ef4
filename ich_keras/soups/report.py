"""Readable tables of soup results: the paper's Table IV layout, per-checkpoint and per-class tables.

Every number shown comes from an `ich_keras.evaluation.evaluate` dict; these functions only format them.
"""

from __future__ import annotations

from ich_keras.copies import note_on_test_copies
from ich_keras.evaluation import METRICS
from ich_keras.markdown import cell, percent
from ich_keras.soups import provenance, registry


def _delta(value: float, reference: float) -> str:
    return f"{100 * (value - reference):+.2f}"


def table_iv(rows: list[dict], reference: dict | None) -> str:
    """The Table IV comparison: test accuracy and macro P/R/F1 per method, and the change against `reference`.

    Args:
        rows: [{"method": str, "ingredients": int, "forward_passes": int, "test": evaluate dict, optionally
            "significance": `significance.compare` dict}], in display order.
        reference: the best single checkpoint's test `evaluate` dict (deltas are against it), or None.

    Returns:
        A markdown table (percentages, two decimals); when a row carries significance, two more columns: the 95 %
        paired bootstrap interval of Δ accuracy and McNemar's exact p-value.
    """
    tested = any(row.get("significance") for row in rows)
    head = "| Method | Ingredients | Forward passes | Accuracy | Precision | Recall | F1 | Δ Accuracy | Δ F1 |"
    rule = "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    if tested:
        head, rule = head + " Δ Accuracy 95 % CI | McNemar p |", rule + "---:|---:|"
    lines = [head, rule]
    for row in rows:
        test = row["test"]
        deltas = (_delta(test["accuracy"], reference["accuracy"]), _delta(test["f1"], reference["f1"])) \
            if reference else ("", "")
        line = (f"| {row['method']} | {row['ingredients']} | {row['forward_passes']} | "
                + " | ".join(percent(test[m]) for m in METRICS) + f" | {deltas[0]} | {deltas[1]} |")
        lines.append(line + (f" {_significance_cells(row.get('significance'))} |" if tested else ""))
    return "\n".join(lines)


def _significance_cells(significance: dict | None) -> str:
    """"[low, high] | p" for a row with significance, blank cells otherwise."""
    if not significance:
        return " |"
    interval, p = significance["bootstrap"], significance["mcnemar"]["p_value"]
    return f"[{100 * interval['low']:+.2f}, {100 * interval['high']:+.2f}] | {p:.3g}"


def rows_from_results(results: dict) -> list[dict]:
    """The Table IV rows one `results.json` contributes: its soup (and BN-recalibrated soup) or its vote."""
    rows = []
    if results.get("test") is not None:
        rows.append({"method": results["label"], "ingredients": len(results["chosen"]),
                     "forward_passes": results["forward_passes"], "test": results["test"],
                     "significance": results.get("significance")})
    recalibrated = results.get("bn_recalibrated")
    if recalibrated:
        rows.append({"method": f"{results['label']} + BN recalibration", "ingredients": len(results["chosen"]),
                     "forward_passes": results["forward_passes"], "test": recalibrated["test"],
                     "significance": recalibrated.get("significance")})
    return rows


def table_iv_of_results(all_results: list[dict], with_voting: bool = False) -> str:
    """Table IV over several methods' results.json dicts: best single checkpoint first, then each method.

    Args:
        all_results: results.json dicts of one set of ingredients.
        with_voting: add the soft-voting row every results.json carries (when no soft-voting method is listed).
    """
    if not all_results:
        return "(no results)"
    best = all_results[0]["best_single"]
    rows = [{"method": f"Best single checkpoint ({best['name']})", "ingredients": 1, "forward_passes": 1,
             "test": best["test"]}]
    for results in all_results:
        rows.extend(rows_from_results(results))
    voting = all_results[0].get("soft_voting")
    if with_voting and voting and not any(r["method"] == "soft_voting" for r in all_results):
        rows.append({"method": "Soft voting", "ingredients": len(all_results[0]["ingredients"]),
                     "forward_passes": voting["forward_passes"], "test": voting["test"],
                     "significance": voting.get("significance")})
    return table_iv(rows, best["test"])


def how_chosen(results: dict) -> str:
    """How a method chose and combined its ingredients, in words (the header of its results.md)."""
    n, method = len(results["ingredients"]), results.get("method")
    selection = results.get("selection", {})
    metric, lenient = selection.get("metric", "accuracy"), selection.get("accept") == "ge"
    if method == "uniform":
        return f"all {n} ingredients, weights averaged"
    if method == "greedy":
        rule = "does not drop" if lenient else "improves"
        return (f"greedy on val by {metric} over {n} ingredients: tried best first, each kept when the soup's val "
                f"{metric} {rule}")
    if method == "pruned":
        rule = "is not worse" if lenient else "is better"
        return f"pruned on val by {metric}: from all {n}, an ingredient leaves when the soup without it {rule}"
    if method == "learned":
        epochs = results.get("info", {}).get("epochs", "?")
        return f"all {n} ingredients, per-layer mixing weights fitted on val ({epochs} epochs)"
    if method == "soft_voting":
        return f"all {n} ingredients, averaged probabilities ({n} forward passes)"
    if method in registry.MERGES:
        info = results.get("info", {})
        settings = ", ".join(f"{k} {info[k]:g}" for k in ("t", "density", "rate", "seed", "lambda")
                             if isinstance(info.get(k), (int, float)))
        uniform = [f"new head ({len(info['new_head'])} arrays)"] if info.get("new_head") else []
        statistics = info.get("running_statistics_averaged")
        if statistics and method != "slerp":
            uniform.append(f"BatchNorm statistics ({statistics} arrays)")
        averaged = f"; {' and '.join(uniform)} averaged uniformly" if uniform else ""
        if statistics and method == "slerp":  # no W0: (1 - t) a + t b
            averaged = f"; BatchNorm statistics ({statistics} arrays) interpolated linearly"
        combines = registry.TABLE[method].combines.format(n=n)
        return f"{combines}{' (' + settings + ')' if settings else ''}{averaged}"
    return f"{method}; selection on val by {metric}" if selection else str(method)


def copies_note(results: dict) -> str:
    """A warning under the test tables when some test images have a copy in train (none: "")."""
    return note_on_test_copies(results.get("test_copies_of_train") or [])


def results_markdown(results: dict) -> str:
    """results.md for one method: how it was chosen, Table IV, per-ingredient validation numbers."""
    how = (f"Run: `{results['run_dir']}`; {how_chosen(results)}; "
           "test evaluated once at the end.")
    lines = [f"# {results['label']}", "", how, ""]
    if results.get("provenance"):
        lines += [provenance.summary(results["provenance"]), ""]
    lines += ["## Test (Table IV)", "", table_iv_of_results([results], with_voting=True), ""]
    if note := copies_note(results):
        lines += [note, ""]
    if results.get("significance"):
        lines += [f"Against the best single checkpoint on the same test images: 95 % paired bootstrap interval of "
                  f"Δ accuracy ({results['significance']['bootstrap']['resamples']} resamples, seed "
                  f"{results['significance']['bootstrap']['seed']}) and McNemar's exact p-value.", ""]
    if results.get("chosen"):
        lines += ["Chosen, in order: " + ", ".join(f"`{name}`" for name in results["chosen"]), ""]
    if results.get("interpolation"):
        lines += ["## WiSE-FT interpolation W0 + alpha (W_soup - W0)", "",
                  "| alpha | val accuracy | test accuracy | test F1 |", "|---:|---:|---:|---:|"]
        for point in results["interpolation"]:
            lines.append(f"| {point['alpha']:.2f} | {percent(point['val']['accuracy'])} | "
                         f"{percent(point['test']['accuracy'])} | {percent(point['test']['f1'])} |")
        lines.append("")
    lines += ["## Ingredients", "", checkpoint_table(results["ingredients"], "val"), ""]
    return "\n".join(lines)


def checkpoint_table(entries: list[dict], split: str) -> str:
    """One row per checkpoint: loss, accuracy, macro P/R/F1 on `split`, each header naming the split (in a
    results.md this table follows the test table, and "Accuracy" alone read as test accuracy)."""
    lines = [f"| Checkpoint | {split} loss | {split} accuracy | {split} precision | {split} recall | {split} F1 |",
             "|---|---:|---:|---:|---:|---:|"]
    for entry in entries:
        m = entry[split]
        lines.append(f"| `{entry['name']}` | {m['loss']:.4f} | " + " | ".join(percent(m[k]) for k in METRICS) + " |")
    return "\n".join(lines)


def checkpoint_per_class_markdown(metrics: dict) -> str:
    """Per-class accuracy (recall), precision, F1 and support, then the confusion matrix."""
    names = list(metrics["per_class"])
    lines = ["| Class | Recall (= class accuracy) | Precision | F1 | Support |", "|---|---:|---:|---:|---:|"]
    for name, c in metrics["per_class"].items():
        lines.append(f"| {cell(name)} | {percent(c['accuracy'])} | {percent(c['precision'])} | {percent(c['f1'])} | "
                     f"{c['support']} |")
    lines += ["", "Confusion matrix (rows true, columns predicted):", "",
              "| | " + " | ".join(map(cell, names)) + " |", "|---|" + "---:|" * len(names)]
    for name, row in zip(names, metrics["confusion_matrix"]):
        lines.append(f"| {cell(name)} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


def evaluation_markdown(entries: list[dict], split: str, run_dir: str) -> str:
    """The `evaluate` command's report: the checkpoint table, then per-class numbers for each checkpoint."""
    lines = [f"# Checkpoints on {split}", "", f"Run: `{run_dir}`", "", checkpoint_table(entries, split), ""]
    for entry in entries:
        lines += [f"## `{entry['name']}`", "", checkpoint_per_class_markdown(entry[split]), ""]
    return "\n".join(lines)
