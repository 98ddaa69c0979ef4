"""The analysis figures as PNG (matplotlib, Agg backend: no display needed): Fig. 4 MDS, Fig. 3 accuracies, CKA.

Each function takes arrays and names only and writes one file atomically.
"""

from __future__ import annotations


import numpy as np

from ich_keras import atomic

# How each kind of model is drawn; soups get their own marker so greedy and uniform stand apart (as in Fig. 4).
STYLE = {
    "ingredient": dict(marker="o", color="#7f7f7f", s=60),
    "uniform": dict(marker="s", color="#1f77b4", s=120),
    "greedy": dict(marker="*", color="#d62728", s=220),
    "soft_voting": dict(marker="D", color="#2ca02c", s=100),
    "pruned": dict(marker="v", color="#ff7f0e", s=110),
    "learned": dict(marker="P", color="#8c564b", s=120),
    "monosoup": dict(marker="X", color="#e377c2", s=120),
    "soup": dict(marker="^", color="#9467bd", s=110),
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _style(name: str, kind: str) -> dict:
    if kind == "ingredient":
        return STYLE["ingredient"]
    # "monosoup_variance", "uniform+bn": the method before any rule or recalibration suffix.
    method = name.split("+")[0].split("_")[0] if name != "soft_voting" else name
    return STYLE.get(method, STYLE["soup"])


def _save(figure, path) -> None:
    with atomic.atomic_path(path, suffix=".png") as temp:
        figure.savefig(temp, dpi=130, bbox_inches="tight", format="png")
    _pyplot().close(figure)


def mds_figure(coordinates, names, kinds, accuracies, path, title: str = "") -> None:
    """Fig. 4: models placed by MDS of their cross-entropy distances, each labelled with its accuracy.

    Args:
        coordinates: (M, 2) MDS coordinates.
        names: M model names ("uniform", "greedy", "soft_voting" get their own markers).
        kinds: M kinds ("ingredient", "soup", "ensemble").
        accuracies: M accuracies in [0, 1] written beside the points (the paper uses val accuracy).
        path: PNG file to write.
        title: figure title.
    """
    plt = _pyplot()
    coordinates = np.asarray(coordinates)
    figure, axis = plt.subplots(figsize=(7, 6))
    labelled = set()
    for (x, y), name, kind, accuracy in zip(coordinates, names, kinds, accuracies):
        style = _style(name, kind)
        legend = "ingredient" if kind == "ingredient" else name
        axis.scatter(x, y, edgecolors="black", linewidths=0.6, zorder=2 if kind == "ingredient" else 3,
                     label=None if legend in labelled else legend, **style)
        labelled.add(legend)
        text = f"{name} {100 * accuracy:.1f}"
        # Soups are drawn over ingredients and labelled below them, so a soup that equals an ingredient
        # (greedy keeping one) stays readable.
        below = kind != "ingredient"
        axis.annotate(text, (x, y), textcoords="offset points", xytext=(7, -11 if below else 5), fontsize=7,
                      color=style["color"] if below else "black")
    # Equal axes: MDS distances mean the same in both directions, a stretched plot would mislead.
    axis.set_aspect("equal", adjustable="datalim")
    axis.margins(0.15)
    axis.set_xlabel("MDS 1")
    axis.set_ylabel("MDS 2")
    axis.grid(alpha=0.3)
    axis.legend(loc="best", fontsize=8)
    axis.set_title(title or "Models by cross-entropy distance (MDS), labelled with accuracy %")
    _save(figure, path)


def accuracy_figure(names, kinds, accuracies: dict, path, title: str = "") -> None:
    """Fig. 3: accuracy of every ingredient as bars, soups and soft voting as horizontal lines, one panel a split.

    Args:
        names: M model names.
        kinds: M kinds.
        accuracies: {split: M accuracies in [0, 1]}, e.g. {"val": [...], "test": [...]}.
        path: PNG file to write.
        title: figure title.
    """
    plt = _pyplot()
    splits = list(accuracies)
    figure, axes = plt.subplots(1, len(splits), figsize=(5.5 * len(splits), 4.2), squeeze=False, sharey=True)
    ingredients = [i for i, k in enumerate(kinds) if k == "ingredient"]
    others = [i for i, k in enumerate(kinds) if k != "ingredient"]
    for axis, split in zip(axes[0], splits):
        values = 100 * np.asarray(accuracies[split])
        axis.bar(range(len(ingredients)), values[ingredients], color="#bbbbbb", edgecolor="black", linewidth=0.5,
                 label="ingredients")
        for i in others:
            color = _style(names[i], kinds[i])["color"]
            axis.axhline(values[i], color=color, linewidth=2, linestyle="--" if kinds[i] == "ensemble" else "-",
                         label=f"{names[i]} ({values[i]:.1f})")
        axis.set_xticks(range(len(ingredients)), [names[i] for i in ingredients], rotation=60, ha="right",
                        fontsize=7)
        low = min(values.min(), 100)
        axis.set_ylim(max(0.0, low - 10), min(100.0, values.max() + 5))
        axis.set_title(f"{split} accuracy (%)")
        axis.grid(axis="y", alpha=0.3)
        axis.legend(fontsize=7, loc="lower right")
    figure.suptitle(title or "Ingredients against soups and soft voting")
    figure.tight_layout()
    _save(figure, path)


def cka_heatmap(values, row_names, column_names, path, title: str = "") -> None:
    """Linear CKA of each model's block outputs with the pretrained model's, as a heatmap with the numbers.

    Args:
        values: (rows, blocks) CKA values in [0, 1].
        row_names: model names.
        column_names: block names.
        path: PNG file to write.
        title: figure title.
    """
    plt = _pyplot()
    values = np.asarray(values)
    width = max(6.0, 0.55 * len(column_names) + 2.5)
    figure, axis = plt.subplots(figsize=(width, 0.6 * len(row_names) + 2.2))
    image = axis.imshow(values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for r in range(values.shape[0]):
        for c in range(values.shape[1]):
            axis.text(c, r, f"{values[r, c]:.2f}", ha="center", va="center", fontsize=7,
                      color="white" if values[r, c] < 0.6 else "black")
    axis.set_xticks(range(len(column_names)), column_names, rotation=60, ha="right", fontsize=7)
    axis.set_yticks(range(len(row_names)), row_names, fontsize=8)
    figure.colorbar(image, ax=axis, label="linear CKA with the pretrained model")
    axis.set_title(title or "Block-output similarity to the pretrained model (linear CKA)")
    figure.tight_layout()
    _save(figure, path)
