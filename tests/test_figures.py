"""The analysis figures: label placement, the MDS and accuracy figures, training and WiSE-FT curves, confusion.

Synthetic predictions and run directories stand in for a fit: the figures are functions of arrays and files, and
these tests check what a reader relies on (nothing overprints, methods are told apart, kept checkpoints marked).
"""

import csv
import json

import numpy as np
import pytest
from PIL import Image
from scipy.special import log_softmax

from ich_keras.analysis import curves, distances, figures, placement, style
from ich_keras.errors import UserError


def _overlaps(a, b) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def _boxes(centres, sizes):
    return [(x - w / 2, y - h / 2, x + w / 2, y + h / 2) for (x, y), (w, h) in zip(centres, sizes)]


def test_place_labels_spreads_a_dense_cluster_without_overlap():
    rng = np.random.default_rng(0)
    anchors = 300 + rng.uniform(-3, 3, size=(24, 2))  # 24 points within 6 pixels
    sizes = np.tile([52.0, 11.0], (24, 1))
    markers = [(x - 4, y - 4, x + 4, y + 4) for x, y in anchors]
    boxes = _boxes(placement.place_labels(anchors, sizes, markers, (0, 0, 600, 600)), sizes)
    for i, a in enumerate(boxes):
        assert not any(_overlaps(a, m) for m in markers), i
        assert not any(_overlaps(a, b) for b in boxes[i + 1:]), i


def test_place_labels_keeps_a_lone_label_right_beside_its_point():
    centres = placement.place_labels([[100.0, 100.0]], [[40.0, 10.0]])
    np.testing.assert_allclose(centres, [[100 + placement.RADII[0] + 20, 100]])
    with pytest.raises(ValueError, match="sizes.shape"):
        placement.place_labels([[1.0, 2.0]], [[1.0, 2.0, 3.0]])


def _synthetic_models(m, n=120, k=5, seed=0):
    """m ingredients along a drift, then uniform, uniform+bn, greedy (= the last ingredient) and soft voting."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    base = rng.normal(size=(n, k))
    base[np.arange(n), labels] += 2.0
    drift = rng.normal(size=(n, k))
    members = np.stack([log_softmax(base + t * drift + 0.3 * rng.normal(size=(n, k)), -1)
                        for t in np.linspace(0, 1, m)])
    uniform = log_softmax(members.mean(0), -1)
    models = np.concatenate([members, np.stack([uniform, uniform, members[-1], uniform])])
    names = [f"epoch_{i + 1:03d}" for i in range(m)] + ["uniform", "uniform+bn", "greedy", "soft_voting"]
    kinds = ["ingredient"] * m + ["soup"] * 3 + ["ensemble"]
    accuracies = [float((lp.argmax(-1) == labels).mean()) for lp in models]
    return names, kinds, models, accuracies


def _sweep_models():
    """The ahe64 sweep's analysis: 33 ingredients named run/epoch, ten soups and soft voting."""
    runs = [f"learning_rate={lr},seed={seed}" for lr in ("0.0005", "0.0002") for seed in (0, 1)]
    ingredients = [f"{run}/epoch_{e:03d}" for run in runs for e in range(2, 11)][:33]
    soups = ["dare", "greedy", "learned", "model_stock", "monosoup_variance", "pruned", "slerp", "task_arithmetic",
             "ties", "uniform"]
    return ingredients + soups + ["soft_voting"], ["ingredient"] * 33 + ["soup"] * 10 + ["ensemble"]


@pytest.mark.parametrize("count", [4, 24])
def test_mds_labels_overprint_neither_each_other_nor_points(count):
    names, kinds, models, accuracies = _synthetic_models(count)
    coordinates, _ = distances.mds_embedding(distances.cross_entropy_distances(models), "subtract")
    figure = figures.draw_mds(coordinates, names, kinds, accuracies, "test")
    axis = figure.axes[0]
    renderer = figure.canvas.get_renderer()
    labels = [t for t in axis.texts]
    assert len(labels) == len(names)
    assert {t.get_text() for t in labels} >= {f"e{count} {100 * accuracies[count - 1]:.1f}", "greedy " +
                                              f"{100 * accuracies[-2]:.1f}"}
    boxes = [tuple(t.get_window_extent(renderer).extents) for t in labels]
    for i, a in enumerate(boxes):
        assert not any(_overlaps(a, b) for b in boxes[i + 1:]), labels[i].get_text()
    # Every kind of model appears once in the legend, outside the plotting area.
    legend = axis.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["ingredients (eN = epoch N)", "uniform", "uniform+bn",
                                                          "greedy", "soft_voting"]
    assert legend.get_window_extent(renderer).x0 >= axis.get_window_extent(renderer).x1
    style.pyplot().close(figure)


def test_mds_of_a_sweep_labels_ingredients_by_run_and_epoch_decoded_in_the_legend():
    names, kinds = _sweep_models()
    _, _, models, accuracies = _synthetic_models(33)
    models = np.concatenate([models[:33], np.repeat(models[33:34], 11, axis=0)])
    coordinates, _ = distances.mds_embedding(distances.cross_entropy_distances(models), "subtract")
    figure = figures.draw_mds(coordinates, names, kinds, accuracies[:33] + [accuracies[33]] * 11, "test")
    axis = figure.axes[0]
    renderer = figure.canvas.get_renderer()
    texts = {t.get_text() for t in axis.texts}
    assert f"r1/e2 {100 * accuracies[0]:.1f}" in texts and f"r4/e7 {100 * accuracies[32]:.1f}" in texts
    assert not any("learning_rate" in t for t in texts)  # whole names: 33 labels of 40 characters covered the map
    legend = [t.get_text() for t in axis.get_legend().get_texts()]
    assert legend[0] == "ingredients (rK/eN = run K, epoch N)"
    assert legend[-4:] == ["r1: learning_rate=0.0005,seed=0", "r2: learning_rate=0.0005,seed=1",
                           "r3: learning_rate=0.0002,seed=0", "r4: learning_rate=0.0002,seed=1"]
    boxes = [tuple(t.get_window_extent(renderer).extents) for t in axis.texts]
    for i, a in enumerate(boxes):
        assert not any(_overlaps(a, b) for b in boxes[i + 1:]), axis.texts[i].get_text()
    style.pyplot().close(figure)


def test_soup_and_its_bn_recalibration_look_different():
    plain, bn = style.look("uniform", "soup"), style.look("uniform+bn", "soup")
    assert plain.color == bn.color and (plain.dash, plain.filled) != (bn.dash, bn.filled)
    assert style.look("monosoup_variance", "soup").marker == style.METHODS["monosoup"].marker
    assert style.look("epoch_003", "ingredient") == style.METHODS["ingredient"]
    dashes = [lk.dash for name, lk in style.METHODS.items() if name != "ingredient"]
    assert len(set(dashes)) == len(dashes)


def test_accuracy_figure_keeps_coinciding_methods_visible_and_the_legend_off_the_data():
    names, kinds, _, _ = _synthetic_models(4)
    accuracies = {"val": [0.9, 0.92, 0.91, 0.93, 0.95, 0.95, 0.93, 0.95],
                  "test": [0.88, 0.9, 0.9, 0.91, 0.94, 0.93, 0.91, 0.94]}
    figure = figures.draw_accuracy(names, kinds, accuracies)
    renderer = figure.canvas.get_renderer()
    for axis, split in zip(figure.axes, accuracies):
        legend = axis.get_legend()
        assert legend.get_window_extent(renderer).x0 >= axis.get_window_extent(renderer).x1
        labels = [t.get_text() for t in legend.get_texts()]
        assert f"uniform  {100 * accuracies[split][4]:.2f}" in labels
        # uniform and soft_voting share val 95.00: their markers sit at different x, so both show.
        marker_x = {}
        for line in axis.get_lines():
            if line.get_linestyle() == "None" and len(line.get_xdata()):
                marker_x.setdefault(line.get_marker(), set()).update(np.round(line.get_xdata(), 6))
        assert not marker_x["s"] & marker_x["D"]  # uniform's squares, soft voting's diamonds
        # Every ingredient's value is written on the panel.
        texts = {t.get_text() for t in axis.texts}
        assert {f"{100 * v:.1f}" for v in accuracies[split][:4]} <= texts
    style.pyplot().close(figure)


def test_accuracy_figure_of_a_sweep_keeps_each_legend_beside_its_own_panel():
    names, kinds = _sweep_models()
    rng = np.random.default_rng(0)
    accuracies = {split: rng.uniform(0.55, 0.75, len(names)).tolist() for split in ("val", "test")}
    figure = figures.draw_accuracy(names, kinds, accuracies)
    renderer = figure.canvas.get_renderer()
    legends = [axis.get_legend().get_window_extent(renderer) for axis in figure.axes]
    for axis, legend in zip(figure.axes, legends):
        assert legend.y0 >= axis.get_window_extent(renderer).y0 - 1, axis.get_ylabel()  # no taller than its panel
    assert legends[0].y0 >= legends[1].y1  # the val legend ran into the test legend's title
    style.pyplot().close(figure)


def _write_run(run_dir, epochs=12, k=3, extra_rule=None):
    """history.csv and checkpoints/manifest.json as fit writes them (columns and keys), with made-up numbers."""
    rows = []
    for e in range(1, epochs + 1):
        rows.append({"epoch": e, "updates": 10 * e, "lr": 1e-3 / e, "loss": 2 / e, "accuracy": 1 - 1 / (e + 1),
                     "val_loss": 1.5 / e + 0.02 * (e % 3), "val_accuracy": 1 - 1 / (e + 2), "val_f1": 1 - 1.1 / (e + 2),
                     "val_precision": 0.5, "val_recall": 0.5, "wall_time_s": 2.0 * e})
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "history.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    rules = [{"metric": "loss", "mode": "min", "k": k}, {"metric": "f1", "mode": "max", "k": k}] + (
        [extra_rule] if extra_rule else [])
    epochs_metrics = {str(r["epoch"]): {m: r[f"val_{m}"] for m in ("loss", "accuracy", "f1", "precision")}
                      for r in rows}
    ranked = {r["metric"]: sorted(range(1, epochs + 1), key=lambda e: epochs_metrics[str(e)][r["metric"]] *
                                  (1 if r["mode"] == "min" else -1))[:r["k"]] for r in rules}
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    (run_dir / "checkpoints" / "manifest.json").write_text(json.dumps(
        {"rules": rules, "epochs": epochs_metrics, "ranked": ranked, "kept": {}}))
    return ranked


def test_training_curves_mark_each_kept_checkpoint_on_its_metric(tmp_path):
    ranked = _write_run(tmp_path / "run", epochs=12, k=3, extra_rule={"metric": "precision", "mode": "max", "k": 2})
    figure = curves.draw_training(tmp_path / "run")
    panels = {axis.get_title(): axis for axis in figure.axes if axis.get_visible()}
    assert set(panels) == {"Loss", "Accuracy", "Macro F1", "precision", "Learning rate (at each epoch's end)"}
    # The kept epochs 1 and 2 tie on precision: the star is on the lower val loss (epoch 2), as the commands pick
    # (`ich_keras.ranking`), not on the keep rule's first (the earlier epoch).
    best = {"loss": ranked["loss"][0], "f1": ranked["f1"][0], "precision": 2}
    assert ranked["precision"] == [1, 2]
    for title, metric in (("Loss", "loss"), ("Macro F1", "f1"), ("precision", "precision")):
        rings, star = [c.get_offsets() for c in panels[title].collections]
        assert sorted(rings[:, 0]) == sorted(ranked[metric])
        assert star[0, 0] == best[metric]  # the best epoch is starred
    assert panels["precision"].get_legend_handles_labels()[1][-1] == "best: epoch 2 (0.5)"
    assert not panels["Accuracy"].collections  # no rule keeps by accuracy here: nothing marked
    assert {line.get_label() for line in panels["Loss"].get_lines()} == {"train", "val"}
    style.pyplot().close(figure)

    from ich_keras import curves as curves_command

    assert curves_command.main([str(tmp_path / "run")]) == 0
    path = tmp_path / "run" / "analysis" / "training.png"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 800
    # An --output the user named: a PNG, and an existing file is replaced only with --overwrite.
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"someone's photo")
    with pytest.raises(UserError, match="The output exists; pass --overwrite"):
        curves_command.main([str(tmp_path / "run"), "--output", str(photo)])
    assert photo.read_bytes() == b"someone's photo"
    with pytest.raises(UserError, match="must end in .png"):
        curves_command.main([str(tmp_path / "run"), "--output", str(tmp_path / "curves.pdf")])
    assert curves_command.main([str(tmp_path / "run"), "--output", str(photo), "--overwrite"]) == 0
    with Image.open(photo) as image:
        assert image.format == "PNG"


def test_training_curves_name_a_missing_history_or_a_folder_that_is_no_run(tmp_path):
    with pytest.raises(ValueError, match=r"Not a run directory \(no config.json\).*nope"):
        curves.training_curves(tmp_path / "nope")  # not: "has this run finished an epoch?"
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"No history.csv: has this run finished an epoch\?"):
        curves.training_curves(tmp_path)


def test_wiseft_and_confusion_figures_write_pngs(tmp_path):
    points = [{"alpha": a, "val": {"accuracy": 0.6 + 0.2 * a}, "test": {"accuracy": 0.55 + 0.25 * a}}
              for a in (0.0, 0.5, 1.0)]
    curves.wiseft_figure({"uniform": points}, tmp_path / "wiseft.png")
    figures.confusion_figure({"best": [[3, 1], [0, 4]], "uniform": [[4, 0], [1, 3]]}, ["arch", "dome"],
                             tmp_path / "confusion.png")
    for name in ("wiseft.png", "confusion.png"):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and min(image.size) > 300
    with pytest.raises(ValueError, match="shape=\\(2, 3\\)"):
        figures.confusion_figure({"best": [[1, 2, 3], [4, 5, 6]]}, ["arch", "dome"], tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


PALATAL_D = "\N{LATIN SMALL LETTER D WITH PALATAL HOOK}"  # not in DejaVu Sans; in the STIX fonts matplotlib ships


def test_names_in_other_scripts_are_drawn_from_an_installed_font_that_has_them(tmp_path):
    import matplotlib

    @style.styled
    def families_in_use(names):
        return tuple(matplotlib.rcParams["font.family"])

    assert families_in_use(["arch", "dome"]) == ("DejaVu Sans",)
    used = families_in_use([f"{PALATAL_D}ance", "dome"])
    assert used[0] == "DejaVu Sans" and len(used) == 2  # and one family that has it (STIXGeneral, if no other does)
    assert families_in_use({"best": np.eye(2)}) == ("DejaVu Sans",)  # dict keys are names too
    assert tuple(matplotlib.rcParams["font.family"]) != used  # only inside the figure

    # Drawn: the glyph from STIXGeneral differs from the box matplotlib's last resort draws without it.
    def drawn(family):
        with matplotlib.rc_context({"font.family": family}):
            figure = style.pyplot().figure(figsize=(0.6, 0.4), dpi=100)
            figure.text(0.1, 0.2, PALATAL_D, fontsize=20)
            figure.canvas.draw()
            pixels = np.asarray(figure.canvas.buffer_rgba())[..., 0].copy()
            style.pyplot().close(figure)
            return pixels
    with pytest.warns(UserWarning, match="missing from font"):
        box = drawn(["DejaVu Sans"])
    assert np.abs(drawn(list(families_in_use([PALATAL_D]))).astype(int) - box).sum() > 0


def test_a_character_no_font_has_is_named_once_not_per_glyph(tmp_path, capsys, recwarn):
    unknown = "\U0010fffd"  # a private-use code point no font draws
    names = [f"festival {unknown}", "craft"]
    figures.confusion_figure({"best": [[3, 1], [0, 4]]}, names, tmp_path / "a.png")
    figures.confusion_figure({"best": [[3, 1], [0, 4]]}, names, tmp_path / "b.png")
    notes = [line for line in capsys.readouterr().err.splitlines() if "no installed font has" in line]
    assert len(notes) == 1 and unknown in notes[0] and "Noto Sans CJK" in notes[0]
    assert not [w for w in recwarn if "missing from font" in str(w.message)]
    assert Image.open(tmp_path / "b.png").size[0] > 100


def test_a_confusion_figure_of_1000_classes_stays_a_readable_size(tmp_path):
    # An ImageNet-sized head: panels grew 0.3 in per class, 90,000 px wide, which matplotlib cannot allocate.
    k = 1000
    counts = np.random.default_rng(0).integers(0, 3, size=(k, k))
    figures.confusion_figure({"best single (epoch_001)": counts, "uniform": counts}, [f"class_{i}" for i in range(k)],
                             tmp_path / "confusion.png")
    with Image.open(tmp_path / "confusion.png") as image:
        assert image.format == "PNG" and max(image.size) <= 4000


def test_every_soup_method_has_a_look_of_its_own():
    """The merges from W0 (model_stock, task_arithmetic, ties, dare, slerp) drawn alike made the MDS map, the
    accuracy figure and the WiSE-FT curves unreadable where several were cooked: one colour, marker and dash each."""
    from ich_keras.soups.registry import METHODS as SOUP_METHODS

    looks = {method: style.look(method, "ensemble" if method == "soft_voting" else "soup") for method in SOUP_METHODS}
    looks["monosoup_variance"] = style.look("monosoup_variance", "soup")
    for attribute in ("color", "marker", "dash"):
        values = [getattr(lk, attribute) for lk in looks.values()]
        assert len(set(values)) == len(values), (attribute, values)
    assert style.look("model_stock+bn", "soup").marker == looks["model_stock"].marker
