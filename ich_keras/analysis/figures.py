"""The analysis figures from arrays, as PNG: Fig. 4 MDS, Fig. 3 accuracies, confusion matrices, CKA.

Each function takes arrays and names only and writes one file atomically; `style` decides how each model looks.
Training curves and the WiSE-FT curve are in `ich_keras.analysis.curves` (`python -m ich_keras.curves` alone).
"""

from __future__ import annotations

import math
import re

import numpy as np

from ich_keras.analysis import placement, style

LABEL_FONT = 7
CONFUSION_MAX_SIDE = 14.0  # inches of one confusion matrix panel
CONFUSION_MAX_TICKS = 40  # class names along each axis of a panel


def mds_label(name: str) -> str:
    """"epoch_007" -> "e7": ingredient labels stay short enough for 24 of them to fit around a cluster."""
    match = re.fullmatch(r"epoch_0*(\d+)", name)
    return f"e{match.group(1)}" if match else name


def ingredient_labels(names, kinds) -> tuple[list[str], list[str]]:
    """Short point labels for the MDS map, and the legend lines that decode them.

    "epoch_007" -> "e7"; a sweep's "learning_rate=0.0005,seed=0/epoch_007" -> "r1/e7" with the legend line
    "r1: learning_rate=0.0005,seed=0" (runs numbered in order of appearance): whole names drew 33 labels of 40
    characters that covered the map and each other. Soups and ensembles keep their names.

    Returns:
        (M labels, legend lines: one per run, none for a single run's "epoch_NNN" names).
    """
    runs = list(dict.fromkeys(n.rpartition("/")[0] for n, k in zip(names, kinds) if k == "ingredient" and "/" in n))
    labels = []
    for name, kind in zip(names, kinds):
        run, _, epoch = name.rpartition("/")
        if kind != "ingredient":
            labels.append(name)
        else:
            labels.append(f"r{runs.index(run) + 1}/{mds_label(epoch)}" if run else mds_label(name))
    return labels, [f"r{i + 1}: {run}" for i, run in enumerate(runs)]


@style.styled
def mds_figure(coordinates, names, kinds, accuracies, path, title: str = "") -> None:
    """Fig. 4: models placed by MDS of their cross-entropy distances, each labelled with its accuracy.

    Labels are placed around their points so that none overprints another label or a point; a label pushed away
    from its point gets a leader line.

    Args:
        coordinates: (M, 2) MDS coordinates.
        names: M model names ("uniform", "greedy", "soft_voting", "<method>+bn", ... get their own markers).
        kinds: M kinds ("ingredient", "soup", "ensemble").
        accuracies: M accuracies in [0, 1] written beside the points (the paper uses val accuracy).
        path: PNG file to write.
        title: figure title.
    """
    style.save(draw_mds(coordinates, names, kinds, accuracies, title), path)


@style.styled
def draw_mds(coordinates, names, kinds, accuracies, title: str = ""):
    """`mds_figure`'s matplotlib Figure, unsaved."""
    plt = style.pyplot()
    coordinates = np.asarray(coordinates, float)
    looks = [style.look(n, k) for n, k in zip(names, kinds)]
    labels, run_key = ingredient_labels(names, kinds)
    figure, axis = plt.subplots(figsize=(7.5, 6.2))
    labelled = set()
    for (x, y), name, kind, lk in zip(coordinates, names, kinds, looks):
        legend = name if kind != "ingredient" else (
            "ingredients (rK/eN = run K, epoch N)" if run_key else "ingredients (eN = epoch N)")
        axis.scatter(x, y, zorder=2 if kind == "ingredient" else 3, label=None if legend in labelled else legend,
                     **lk.scatter())
        labelled.add(legend)
    for line in run_key:  # legend lines without a marker
        axis.plot([], [], linestyle="none", label=line)
    # Equal axes: MDS distances mean the same in both directions, a stretched plot would mislead.
    axis.set_aspect("equal", adjustable="datalim")
    axis.margins(0.22)
    axis.set_xlabel("MDS 1")
    axis.set_ylabel("MDS 2")
    axis.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, markerscale=0.8,
                title="model", alignment="left")
    axis.set_title(title or "Models by cross-entropy distance (MDS), labelled with accuracy %")
    figure.canvas.draw()  # fixes the limits (aspect, margins) so that data and pixels map for good
    axis.set_xlim(axis.get_xlim())
    axis.set_ylim(axis.get_ylim())
    texts = [f"{label} {100 * a:.1f}" for label, a in zip(labels, accuracies)]
    _label_points(figure, axis, coordinates, texts, looks, [k != "ingredient" for k in kinds])
    return figure


def _label_points(figure, axis, coordinates, texts, looks, first) -> None:
    """Annotates each point with its text where `placement` finds room; models flagged in `first` choose first."""
    renderer = figure.canvas.get_renderer()
    pixels = axis.transData.transform(coordinates)  # (M, 2) display pixels
    order = sorted(range(len(texts)), key=lambda i: (not first[i], i))
    sizes = []
    for i in order:
        probe = axis.text(0, 0, texts[i], fontsize=LABEL_FONT)
        box = probe.get_window_extent(renderer)
        probe.remove()
        sizes.append((box.width + 5, box.height + 4))  # + the white box drawn behind the text
    radii = [(lk.size ** 0.5 / 2) * style.DPI / 72 + 1 for lk in looks]  # marker radius, points -> pixels
    markers = [(x - r, y - r, x + r, y + r) for (x, y), r in zip(pixels, radii)]
    box = axis.get_window_extent(renderer)
    centres = placement.place_labels(pixels[order], sizes, markers, (box.x0, box.y0, box.x1, box.y1))
    to_data = axis.transData.inverted()
    for i, (cx, cy), (w, h) in zip(order, centres, sizes):
        (x, y), lk = pixels[i], looks[i]
        # A label pushed away from its point gets a leader line to the nearest edge of its box; lines sit under
        # every label (zorder), so none crosses a text.
        ex, ey = np.clip(x, cx - w / 2, cx + w / 2), np.clip(y, cy - h / 2, cy + h / 2)
        if np.hypot(ex - x, ey - y) > radii[i] + 6:
            start = (x, y) + (np.array([ex, ey]) - (x, y)) * radii[i] / np.hypot(ex - x, ey - y)
            axis.plot(*to_data.transform([start, (ex, ey)]).T, color=lk.color, linewidth=0.6, zorder=3.5)
        axis.text(*to_data.transform((cx, cy)), texts[i], ha="center", va="center", fontsize=LABEL_FONT,
                  color="black" if lk.color == style.INGREDIENT_COLOR else lk.color, zorder=4,
                  bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none", alpha=0.85))


@style.styled
def accuracy_figure(names, kinds, accuracies: dict, path, title: str = "") -> None:
    """Fig. 3: each ingredient's accuracy as a bar, each soup and soft voting as a line across, one panel a split.

    Every method has its own colour, dash and marker (a soup and its BN-recalibrated version differ); markers are
    staggered along the lines so that two methods of the same accuracy both stay visible; the legend, with each
    value, sits outside the panel.

    Args:
        names: M model names.
        kinds: M kinds.
        accuracies: {split: M accuracies in [0, 1]}, e.g. {"val": [...], "test": [...]}.
        path: PNG file to write.
        title: figure title.
    """
    style.save(draw_accuracy(names, kinds, accuracies, title), path)


@style.styled
def draw_accuracy(names, kinds, accuracies: dict, title: str = ""):
    """`accuracy_figure`'s matplotlib Figure, unsaved."""
    plt = style.pyplot()
    splits = list(accuracies)
    ingredients = [i for i, k in enumerate(kinds) if k == "ingredient"]
    others = [i for i, k in enumerate(kinds) if k != "ingredient"]
    count = len(ingredients)
    figure, axes = plt.subplots(len(splits), 1, figsize=(max(6.0, 0.3 * count + 3.5), 3.2 * len(splits)),
                                squeeze=False, sharex=True)
    for axis, split in zip(axes[:, 0], splits):
        values = 100 * np.asarray(accuracies[split], float)
        axis.bar(range(count), values[ingredients], color="#dddddd", edgecolor="#555555", linewidth=0.5,
                 label="ingredients", zorder=1)
        for j, i in enumerate(others):
            _method_line(axis, values[i], names[i], kinds[i], j, len(others), count)
        low, high = values.min(), values.max()
        span = max(high - low, 1.0)
        floor = max(0.0, low - 0.6 * span)
        axis.set_ylim(floor, high + 0.2 * span)
        # Each bar's value at its foot: every line lies at least 0.6 span higher, so no line crosses a value.
        for x, i in enumerate(ingredients):
            axis.text(x, floor + 0.04 * span, f"{values[i]:.1f}", ha="center", va="bottom", zorder=5,
                      fontsize=7 if count <= 12 else 6, rotation=0 if count <= 12 else 90)
        axis.set_xlim(-0.6, count - 0.4)
        axis.set_ylabel(f"{split} accuracy (%)")
        axis.grid(axis="x", visible=False)
        axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, handlelength=3.2,
                    title=f"{split} accuracy (%)", alignment="left")
    bottom = axes[-1, 0]
    bottom.set_xticks(range(count), [names[i] for i in ingredients], rotation=60 if count > 6 else 0,
                      ha="right" if count > 6 else "center")
    figure.suptitle(title or "Ingredients (bars) against soups and soft voting (lines)")
    figure.tight_layout()
    # A legend taller than its panel runs into the next panel's (a sweep: 11 methods, long rotated ingredient
    # names): the figure grows until every panel is as tall as its legend.
    renderer = figure.canvas.get_renderer()
    shortfall = max(axis.get_legend().get_window_extent(renderer).height - axis.get_window_extent(renderer).height
                    for axis in axes[:, 0])
    if shortfall > 0:
        figure.set_figheight(figure.get_figheight() + len(splits) * (shortfall + 10) / figure.dpi)
        figure.tight_layout()
    return figure


def _method_line(axis, value, name, kind, index, total, count) -> None:
    """One method's horizontal line; its markers sit at an offset of its own so coinciding lines both show."""
    lk = style.look(name, kind)
    line = lk.line()
    marker_kw = {k: line.pop(k) for k in ("marker", "markersize", "markerfacecolor", "markeredgecolor")}
    axis.plot([-0.6, count - 0.4], [value, value], zorder=2 + index / 10, **line)
    spacing = count / 3  # three markers a line; methods shifted by a fraction of the spacing each
    xs = np.arange(-0.4 + spacing * (index + 0.5) / total, count - 0.4, spacing)
    axis.plot(xs, np.full(len(xs), value), linestyle="none", zorder=3, **marker_kw)
    # The legend shows dash and marker together: an invisible proxy carries both.
    axis.plot([], [], label=f"{name}  {value:.2f}", **lk.line())


@style.styled
def confusion_figure(matrices: dict, class_names, path, title: str = "") -> None:
    """Confusion matrices side by side (rows true, columns predicted), coloured by the share of each true class,
    with the counts written in the cells (up to 25 classes). Many classes share a panel of bounded size, their
    names on every n-th row and column.

    Args:
        matrices: {model display name: (K, K) counts}.
        class_names: K names in label order.
        path: PNG file to write.
        title: figure title.
    """
    plt = style.pyplot()
    names = list(class_names)
    k = len(names)
    # The panels stop growing at CONFUSION_MAX_SIDE: at 0.3 in a class, 200 classes drew a 16,000 px wide image
    # (46 s, 3 GB of memory) and 1000 classes (an ImageNet-sized head) one matplotlib cannot allocate.
    side = min(max(3.4, (0.42 if k <= 12 else 0.3) * k + 1.6), CONFUSION_MAX_SIDE)
    ticks = range(0, k, math.ceil(k / CONFUSION_MAX_TICKS))  # every class's name while they fit, else every n-th
    figure, axes = plt.subplots(1, len(matrices), figsize=(side * len(matrices) + 1.0, side + 0.9), squeeze=False,
                                layout="constrained")
    image = None
    for axis, (name, matrix) in zip(axes[0], matrices.items()):
        counts = np.asarray(matrix)
        if counts.shape != (k, k):
            raise ValueError(f"A confusion matrix must be (K, K) with K={k} classes. Received: {name!r} with "
                             f"shape={counts.shape}")
        share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        image = axis.imshow(share, vmin=0, vmax=1, cmap="Blues")
        if k <= 25:
            for r in range(k):
                for c in range(k):
                    axis.text(c, r, str(counts[r, c]), ha="center", va="center", fontsize=7 if k <= 12 else 5.5,
                              color="white" if share[r, c] > 0.6 else ("#999999" if counts[r, c] == 0 else "black"))
        axis.set_xticks(ticks, [names[t] for t in ticks], rotation=60, ha="right", fontsize=7)
        axis.set_yticks(ticks, [names[t] for t in ticks], fontsize=7)
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        axis.grid(False)
        accuracy = np.trace(counts) / max(counts.sum(), 1)
        axis.set_title(f"{name}\naccuracy {100 * accuracy:.2f} %")
    figure.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="share of the true class (row)")
    figure.suptitle(title or "Confusion matrices")
    style.save(figure, path)


@style.styled
def cka_heatmap(values, row_names, column_names, path, title: str = "") -> None:
    """Linear CKA of each model's block outputs with the pretrained model's, as a heatmap with the numbers.

    Args:
        values: (rows, blocks) CKA values in [0, 1].
        row_names: model names.
        column_names: block names.
        path: PNG file to write.
        title: figure title.
    """
    plt = style.pyplot()
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
    axis.grid(False)
    figure.colorbar(image, ax=axis, label="linear CKA with the pretrained model")
    axis.set_title(title or "Block-output similarity to the pretrained model (linear CKA)")
    figure.tight_layout()
    style.save(figure, path)
