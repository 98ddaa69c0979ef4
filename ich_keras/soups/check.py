"""Will these two soup? Val loss and accuracy along the straight line between two weight sets.

Weights fine-tuned from one initialisation usually sit in one basin: every point of the segment (1 - a) W_A + a W_B
scores about as well as its ends. Weights from different inits (or a soup already broken) do not: the midpoint
collapses, as for the Keras user of model-soups issue #13 whose soup scored 2 %. A midpoint whose val accuracy
falls more than `tolerance` below the worse end is flagged.

The loss barrier reported is the largest excess of the loss over the straight line between the end losses,
max_a [L((1 - a) W_A + a W_B) - ((1 - a) L_A + a L_B)] (Frankle et al., 2020), over the points scored.
"""

from __future__ import annotations

import math

from ich_keras.errors import UserError
from ich_keras.evaluation import check_finite_outputs, evaluate
from ich_keras.progress import note
from ich_keras.soups.averaging import Reader
from ich_keras.soups.forward import Evaluator

POINTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def check_options(points, tolerance: float) -> None:
    """Raises a UserError naming the option before anything is scored: `tolerance` must be a fraction in [0, 1]
    (a negative one warned of a midpoint "more than -100 points below", NaN never warned, 5 meant 500 points), and
    `points` three or more distinct finite coefficients (the two ends and an interior point; NaN scored as a broken
    soup)."""
    if not 0.0 <= tolerance <= 1.0:  # NaN fails the comparison too
        raise UserError(f"--tolerance is a fraction of val accuracy in [0, 1] (0.05 = 5 points). "
                        f"Received: tolerance={tolerance}")
    if not all(math.isfinite(a) for a in points) or len(set(points)) < 3:
        raise UserError(f"--points takes three or more distinct finite coefficients: the two ends and an interior "
                        f"point. Received: points={list(points)}")


def line_scan(first, second, model, data, points=POINTS, class_names=None, evaluator: Evaluator | None = None
              ) -> list[dict]:
    """Scores (1 - a) first + a second for each a in `points`, with one compiled forward.

    Args:
        first, second: weight sets of one architecture (`.weights.h5` paths, models, `WeightSet`s or dicts).
        model: a built Keras model of that architecture.
        data: re-iterable of (images, labels) batches (validation).
        points: the coefficients a (0 = first, 1 = second), in any order.
        class_names: names in label order.
        evaluator: an `Evaluator` to reuse.

    Returns:
        [{"alpha": a, "val": `evaluate` dict}] in increasing a, so the first and last are the ends `verdict` reads
        (`--points 0 1 0.5` would otherwise take a = 1 for an interior point). A point whose outputs are not finite
        is a UserError naming it.
    """
    reader = Reader([first, second])
    evaluator = evaluator or Evaluator(model, reader.layout, class_names)
    start = reader.mix(None, 0, 1.0)  # W_A (a fresh array: the reader's buffer is refilled by the next read)
    scan = []
    for alpha in sorted(float(a) for a in points):
        weights = reader.mix(start, 1, alpha)  # W_A + a (W_B - W_A)
        labels, logits = evaluator.predict(reader.weight_set(weights), data)
        check_finite_outputs(logits, f"The point a = {alpha:g} of the line", "Leave it out of --points.")
        scan.append({"alpha": alpha, "val": evaluate(labels, logits, evaluator.class_names)})
    return scan


def verdict(scan: list[dict], tolerance: float = 0.05) -> dict:
    """Reads a `line_scan`: the loss barrier and whether the midpoint is much worse than both ends.

    Args:
        scan: `line_scan`'s points; the first and last are the ends.
        tolerance: how far (a fraction, 0.05 = 5 points) the midpoint's val accuracy may fall below the worse end.

    Returns:
        {"loss_barrier", "midpoint": the interior point nearest a = 0.5, "worse_end_accuracy", "warning": a
        sentence, or None when the line looks fine}.
    """
    if len(scan) < 3:
        raise UserError(f"A line scan needs both ends and an interior point. Received: {len(scan)} points")
    ends = (scan[0], scan[-1])
    interior = scan[1:-1]
    a0, a1 = ends[0]["alpha"], ends[1]["alpha"]

    def excess(point):
        w = (point["alpha"] - a0) / (a1 - a0)
        return point["val"]["loss"] - ((1 - w) * ends[0]["val"]["loss"] + w * ends[1]["val"]["loss"])

    middle = min(interior, key=lambda p: abs(p["alpha"] - (a0 + a1) / 2))
    worse = min(e["val"]["accuracy"] for e in ends)
    warning = None
    if middle["val"]["accuracy"] < worse - tolerance:
        warning = (f"The midpoint (a = {middle['alpha']:g}) scores {100 * middle['val']['accuracy']:.1f} % val "
                   f"accuracy, more than {100 * tolerance:g} points below the worse end ({100 * worse:.1f} %): "
                   "these weights do not share a basin (different inits?), and a soup of them will likely fail.")
    return {"loss_barrier": max(excess(p) for p in interior), "midpoint": middle["alpha"],
            "worse_end_accuracy": worse, "warning": warning}


def markdown(scan: list[dict], result: dict, names: tuple[str, str]) -> str:
    """The scan as a table, the barrier, and the warning if any."""
    lines = [f"Line from `{names[0]}` (a = 0) to `{names[1]}` (a = 1), on val:", "",
             "| a | val loss | val accuracy |", "|---:|---:|---:|"]
    lines += [f"| {p['alpha']:.2f} | {p['val']['loss']:.4f} | {100 * p['val']['accuracy']:.2f} |" for p in scan]
    lines += ["", f"Loss barrier: {result['loss_barrier']:.4f}"]
    if result["warning"]:
        lines += ["", f"WARNING: {result['warning']}"]
    return "\n".join(lines)


def run_check(run, first, second=None, points=POINTS, tolerance: float = 0.05, batch_size: int = 32,
              progress: bool = True) -> tuple[list[dict], dict, str]:
    """`python -m ich_keras.soup check`: the line scan on the run's val split.

    Args:
        run: an `ich_keras.rundir.Run` (model, data).
        first: the weights at a = 0.
        second: the weights at a = 1; None for the uniform soup of the run's kept checkpoints.
        points, tolerance: as `line_scan` and `verdict`.
        batch_size: evaluation batch size.
        progress: say what is scored.

    Returns:
        (the scan, its verdict, the markdown report).
    """
    from pathlib import Path

    from ich_keras.soups.methods import uniform

    check_options(points, tolerance)
    name = str(second) if second is not None else "uniform soup"
    if second is None:
        paths = [c.path for c in run.checkpoints]
        if not paths:
            raise run.none_kept_error("check against a second file of your choice (`soup check A B`)")
        second = uniform(paths)
    note("check", f"scoring {len(points)} points between {Path(first).name} and {Path(name).name} on val", progress)
    scan = line_scan(first, second, run.build_model(), run.in_memory("val", batch_size), points,
                     list(run.class_names))
    result = verdict(scan, tolerance)
    return scan, result, markdown(scan, result, (str(first), name))
