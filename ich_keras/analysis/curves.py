"""Curves over a parameter: training curves of a run directory and the WiSE-FT interpolation of a soup.

    python -m ich_keras.curves RUN_DIR          # -> RUN_DIR/analysis/training.png (no predictions needed)

The training figure reads `history.csv` (per-epoch train and val metrics, learning rate) and
`checkpoints/manifest.json` (the epochs each keep rule ranks), and marks on each metric's panel the checkpoints
that metric keeps, the best one starred.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ich_keras import atomic, ranking
from ich_keras.analysis import style
from ich_keras.errors import UserError
from ich_keras.rundir import check_is_run

TRAIN_COLOR, VAL_COLOR = "#555555", "#0072B2"
# Panels in this order; a keep rule on another val metric ("precision", "recall") adds a panel of its own.
PANELS = {"loss": "Loss", "accuracy": "Accuracy", "f1": "Macro F1"}


def read_history(run_dir) -> dict[str, np.ndarray]:
    """history.csv as {column: (epochs,) float array} in epoch order; an empty cell is NaN.

    Raises:
        ValueError: the file is missing or holds no epoch.
    """
    path = Path(run_dir) / "history.csv"
    if not path.is_file():
        check_is_run(run_dir)
        raise UserError(f"No history.csv: has this run finished an epoch? Received: path={str(path)!r}")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "epoch" not in rows[0]:
        raise UserError(f"history.csv holds no epoch rows. Received: path={str(path)!r}")
    try:
        rows.sort(key=lambda row: int(float(row["epoch"])))
        return {column: np.array([float(row[column]) if row.get(column) not in ("", None) else np.nan
                                  for row in rows]) for column in rows[0]}
    except (TypeError, ValueError) as error:  # a cell that is no number (the file edited by hand)
        raise UserError(f"history.csv holds a value that is not a number ({error}); was it edited? Restore it, or "
                        f"resume the run, which writes it again. Received: path={str(path)!r}") from None


def _read_manifest(run_dir) -> dict:
    path = Path(run_dir) / "checkpoints" / "manifest.json"
    return atomic.read_json(path) if path.is_file() else {"rules": [], "ranked": {}}


@style.styled
def training_curves(run_dir, path=None) -> Path:
    """Training curves of a run: loss, accuracy and macro F1 (train where logged, val), the learning rate, and each
    kept checkpoint marked on the metric that keeps it.

    Args:
        run_dir: a run directory with history.csv (checkpoints/manifest.json optional).
        path: PNG to write; default RUN_DIR/analysis/training.png.

    Returns:
        The path written.
    """
    path = Path(path) if path else Path(run_dir) / "analysis" / "training.png"
    style.save(draw_training(run_dir), path)
    return path


@style.styled
def draw_training(run_dir):
    """`training_curves`' matplotlib Figure, unsaved."""
    plt = style.pyplot()
    history, manifest = read_history(run_dir), _read_manifest(run_dir)
    rules = {rule["metric"]: rule for rule in manifest.get("rules", [])}
    metrics = list(PANELS) + [m for m in rules if m not in PANELS and f"val_{m}" in history]
    panels = [m for m in metrics if m in history or f"val_{m}" in history] + ["lr"]
    columns = 2 if len(panels) <= 4 else 3
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.4 * rows), squeeze=False)
    epochs = history["epoch"]
    marker = "o" if len(epochs) <= 40 else None
    for axis, metric in zip(axes.flat, panels):
        if metric == "lr":
            _lr_panel(axis, epochs, history)
            continue
        if metric in history:
            axis.plot(epochs, history[metric], color=TRAIN_COLOR, marker=marker, markersize=3, label="train")
        if f"val_{metric}" in history:
            axis.plot(epochs, history[f"val_{metric}"], color=VAL_COLOR, marker=marker, markersize=3, label="val")
            if metric in rules:
                _mark_kept(axis, epochs, history, manifest["ranked"].get(metric, []), rules[metric])
        axis.set_title(PANELS.get(metric, metric))
        axis.legend(loc="best")
    for axis in axes.flat[len(panels):]:
        axis.set_visible(False)
    for axis in axes.flat[:len(panels)]:
        axis.xaxis.get_major_locator().set_params(integer=True)
    for column in range(columns):  # "epoch" under the lowest visible panel of each column
        axes[(len(panels) - 1 - column) // columns, column].set_xlabel("epoch")
    figure.suptitle(f"Training of {Path(run_dir).resolve().name}: {len(epochs)} epochs; "
                    "train metrics on augmented batches, val after each epoch")
    figure.tight_layout()
    return figure


def _mark_kept(axis, epochs, history: dict, kept_epochs: list, rule: dict) -> None:
    """Rings on the epochs `rule` keeps, a star on the best of them by `ich_keras.ranking` (a tie broken by lower val
    loss, as the commands pick, where the keep rule keeps the earlier epoch first), with its epoch beside it."""
    metric, values = rule["metric"], history[f"val_{rule['metric']}"]
    index = {int(e): i for i, e in enumerate(epochs)}
    kept = [index[e] for e in kept_epochs if e in index]
    if not kept:
        return
    axis.scatter(epochs[kept], values[kept], s=70, facecolors="none", edgecolors="#D55E00", linewidths=1.4,
                 zorder=4, label=f"kept: top-{rule['k']} by val {metric} ({rule['mode']})")
    best = kept[ranking.ranked([{metric: values[i], "loss": history["val_loss"][i]} for i in kept], metric)[0]]
    axis.scatter(epochs[best], values[best], s=160, marker="*", color="#D55E00", edgecolors="black",
                 linewidths=0.5, zorder=5, label=f"best: epoch {int(epochs[best])} ({values[best]:.4g})")


def _lr_panel(axis, epochs, history) -> None:
    axis.plot(epochs, history.get("lr", np.full(len(epochs), np.nan)), color="#009E73",
              marker="o" if len(epochs) <= 40 else None, markersize=3)
    if np.nanmin(history.get("lr", [np.nan])) > 0:
        axis.set_yscale("log")
    axis.set_title("Learning rate (at each epoch's end)")


@style.styled
def wiseft_figure(interpolations: dict, path, title: str = "") -> None:
    """WiSE-FT: val and test accuracy along W0 + alpha (W_soup − W0), one colour per soup.

    Args:
        interpolations: {soup name: results.json "interpolation" list of {"alpha", "val", "test"}}.
        path: PNG file to write.
        title: figure title.
    """
    plt = style.pyplot()
    figure, axis = plt.subplots(figsize=(7.2, 4.4))
    for name, points in interpolations.items():
        lk = style.look(name, "soup")
        alphas = [p["alpha"] for p in points]
        for split, dash, face in (("test", "-", lk.color), ("val", (0, (3, 2)), "white")):
            values = [100 * p[split]["accuracy"] for p in points]
            best = int(np.argmax(values))
            axis.plot(alphas, values, color=lk.color, linestyle=dash, marker=lk.marker, markerfacecolor=face,
                      markersize=7, label=f"{name} {split} (best {values[best]:.2f} at alpha {alphas[best]:g})")
    axis.set_xlabel("alpha   (0 = pretrained W0, 1 = the soup)")
    axis.set_ylabel("accuracy (%)")
    axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    axis.set_title(title or "WiSE-FT: W0 + alpha (W_soup − W0); val dashed, test solid")
    style.save(figure, path)
