"""What `python -m ich_keras.analyze RUN_DIR` (or SWEEP_DIR: the soups across a sweep's runs, `subject`) does:
predictions (cached), then every table and figure, then report.md. Outputs, under RUN_DIR/analysis/ (or `output`):

    predictions.npz          log-probabilities / probabilities of every model on val and test, labels, names
    metrics.json             `evaluate` of every model on val and test
    distances.json, mds.png  cross-entropy distance matrix, MDS coordinates and stress; Fig. 4
    accuracy.png             Fig. 3: ingredients' val and test accuracy against the soups and soft voting
    training.png             training curves from history.csv, kept checkpoints marked (when history.csv exists);
                             of a sweep, training_<point>.png for each run
    per_class.md|.json       Table V: best single checkpoint against the soup
    confusion.png            confusion matrices of the best single checkpoint and the soup
    wiseft.png               WiSE-FT curves, when a soup's results.json holds an interpolation
    bias_variance.md|.json   decompositions over the ingredients, every model placed against them
    cka.json, cka.png        only when a pretrained init is known (config model.init or --pretrained)
    report.md                all of the above in one file
    report.html              report.md as one self-contained page (figures inline), plus each soup's provenance
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from ich_keras import atomic, folder_lock, ranking, staging
from ich_keras.analysis import bias_variance, curves, distances, figures, html, predictions, report, tables
from ich_keras.analysis.cka import linear_cka
from ich_keras.analysis.subject import load_subject
from ich_keras.copies import note_on_test_copies
from ich_keras.data import copies_of_train_in_test
from ich_keras.errors import UserError
from ich_keras.evaluation import evaluate
from ich_keras.soups import summary

SPLITS = ("val", "test")
# The names an analysis writes at the top of its folder (the module docstring), for `_check_output`.
OUTPUTS = ("metrics.json", "distances.json", "mds.png", "accuracy.png", "training.png", "per_class.md",
           "per_class.json", "confusion.png", "wiseft.png", "bias_variance.md", "bias_variance.json", "cka.json",
           "cka.png", "report.md", "report.html")


@dataclasses.dataclass(frozen=True)
class AnalysisOptions:
    """See `python -m ich_keras.analyze --help`."""

    split: str = "val"
    soup: str = ""  # the soup of the per-class table; "" picks uniform, else the first soup found
    diagonal: str = "subtract"
    pretrained: str = ""  # overrides the config's model.init for CKA
    cka_examples: int = 256
    batch_size: int = 32
    recompute: bool = False
    progress: bool = True
    output: str = ""  # where the outputs and the predictions cache go; "" is RUN_DIR/analysis


def _best_single(preds, metrics, soups_dir: Path, analysed: set[str]) -> str:
    """The best single checkpoint: that of the soups' Table IV (`summary.table_rows`: the newest rows' choice, not
    that of a soup cooked on another --greedy-metric) when they ran, else the ingredient with the best val
    accuracy by the soups' rule (ties broken by lower val loss)."""
    shown = summary.table_rows(soups_dir, methods=analysed).shown
    if shown:
        name = shown[0]["best_single"]["name"].removesuffix(".weights.h5")  # as `discover` names the ingredients
        if name in preds.names:
            return name
    ingredients = [preds.names[i] for i in preds.rows("ingredient")]
    return ingredients[ranking.best([metrics["val"][n] for n in ingredients], "accuracy")]


def _chosen_soup(preds, wanted: str) -> str:
    soups = [preds.names[i] for i in preds.rows("soup")]
    if wanted:
        preds.index(wanted)  # raises naming the models when absent
        return wanted
    if "uniform" in soups:
        return "uniform"
    return soups[0] if soups else "soft_voting"


def _bias_variance(preds, split: str, num_classes: int) -> dict:
    log_probs, labels = preds.log_probs[split], preds.labels[split]
    members = log_probs[preds.rows("ingredient")]  # (M, n, K)
    strip = lambda d: {k: v for k, v in d.items() if k != "per_example"}  # noqa: E731  (arrays stay out of JSON)
    return {
        "split": split,
        "ingredients": {
            "members": len(members),
            "log_loss": strip(bias_variance.log_loss_decomposition(members, labels)),
            "zero_one": strip(bias_variance.zero_one_decomposition(members.argmax(-1), labels, num_classes)),
        },
        "models": [{"name": m.name, "kind": m.kind, **bias_variance.against_reference(members, labels, lp)}
                   for m, lp in zip(preds.models, log_probs)],
    }


def _cka(run, preds, best: str, split: str, options: AnalysisOptions) -> dict:
    """Linear CKA per block between the pretrained model and the best checkpoint, each soup."""
    from ich_keras.analysis.features import block_extractor, block_outputs
    from ich_keras.init_weights import build_with_weights, load_weights

    pretrained = options.pretrained or run.config.model.init
    images = []
    for batch, _ in run.dataset(split, options.batch_size):
        images.append(np.asarray(batch))
        if sum(len(b) for b in images) >= options.cka_examples:
            break
    images = np.concatenate(images)[:options.cka_examples]
    # W0's head (of 1000 classes, say) is replaced without a word: CKA compares the blocks, never the head.
    model = build_with_weights(run.build_model, pretrained, verbose=False)
    extractor = block_extractor(model)  # shares model's layers: loading weights into model changes it too
    reference = block_outputs(extractor, images, options.batch_size)
    rows = [best] + [preds.names[i] for i in preds.rows("soup")]
    values = []
    for name in rows:
        load_weights(model, preds.models[preds.index(name)].path, new_head=False)
        outputs = block_outputs(extractor, images, options.batch_size)
        values.append([linear_cka(reference[b], outputs[b]) for b in reference])
    labels = [f"fine-tuned: best single ({best})"] + rows[1:]
    # Resolved, as the soups' provenance stores W0: as typed it was relative to wherever analyze ran.
    return {"pretrained": Path(pretrained).resolve().as_posix(), "split": split, "examples": len(images),
            "blocks": list(reference), "models": rows, "labels": labels, "cka": values}


def _cka_section(run, preds, best: str, split: str, options: AnalysisOptions, out: Path) -> str:
    """Computes CKA when a pretrained init is known and wanted, writes cka.json/cka.png; returns the report text.

    A W0 of another class count (an ImageNet init) loads with the head left fresh: the blocks compared do not
    include the head.
    """
    pretrained = options.pretrained or run.config.model.init
    reason = ""
    if options.cka_examples == 0:
        reason = "Not computed: --cka-examples 0 was given."
    elif not pretrained:
        reason = "Not computed: no pretrained init is known (config model.init is empty; pass --pretrained)."
    elif not Path(pretrained).is_file():
        reason = f"Not computed: the pretrained weights `{pretrained}` were not found."
        if not options.pretrained:  # the run's model.init, gone since fit read it: a moved file, another machine
            reason += " It is the run's model.init, moved since fit read it: pass --pretrained W0.weights.h5."
        print(f"[analyze] CKA {reason[0].lower()}{reason[1:]}", file=sys.stderr, flush=True)
    if reason:
        return reason
    cka = _cka(run, preds, best, split, options)
    atomic.write_json(out / "cka.json", cka)
    figures.cka_heatmap(np.array(cka["cka"]), cka["labels"], cka["blocks"], out / "cka.png")
    return (f"Linear CKA of block outputs with the pretrained model `{cka['pretrained']}` on {cka['examples']} "
            f"{split} images.\n\n![CKA](cka.png)")


def _check_output(out: Path) -> None:
    """Refuses an --output folder that is a run directory, or that holds files of the analysis' names that no
    analysis wrote: its metrics.json, written by every analysis, is missing or not an analysis' ({split: {model:
    metrics}})."""
    if (out / "config.json").is_file():
        raise UserError(f"--output is a run directory (it holds config.json); the analysis goes into a folder of its "
                        f"own, e.g. {str(out / 'analysis')!r}. Received: output={str(out)!r}")
    theirs = [name for name in OUTPUTS if (out / name).exists()]
    if not theirs:
        return
    try:
        metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
        ours = isinstance(metrics, dict) and set(metrics) == set(SPLITS)
    except (OSError, ValueError):
        ours = False
    if not ours:
        raise UserError(f"--output holds files that no analysis wrote, which this one would replace: {theirs}. "
                        f"Choose another folder, or move them. Received: output={str(out)!r}")


def analyze(run_dir, options: AnalysisOptions = AnalysisOptions(), data_source: str | None = None) -> dict:
    """Runs the whole analysis of a run directory and writes RUN_DIR/analysis/ (module docstring).

    Args:
        run_dir: a run directory from `python -m ich_keras.fit` (soups from `python -m ich_keras.soup` are
            included when present), or a sweep directory from `python -m ich_keras.sweep` with the soups across its
            runs (`ich_keras.analysis.subject`).
        options: `AnalysisOptions`.
        data_source: where the run's images are now, if not in its config.json (`Run.images_at`).

    Returns:
        A summary dict: output paths, best single checkpoint, chosen soup, MDS stress, seconds taken, whether the
        prediction cache was used, and the config of the run that gave the model and data (a sweep's first).
    """
    if options.split not in SPLITS:
        raise UserError(f"split must be one of {SPLITS}. Received: split={options.split!r}")
    if options.batch_size < 1 or options.cka_examples < 0:
        raise UserError(f"batch_size must be 1 or more and cka_examples 0 or more. Received: "
                        f"batch_size={options.batch_size}, cka_examples={options.cka_examples}")
    if options.pretrained and not Path(options.pretrained).is_file():  # asked for by name: not a note in the report
        what = "is a folder, not a .weights.h5 file" if Path(options.pretrained).is_dir() else "does not exist"
        raise UserError(f"The pretrained weights for CKA {what}. Received: pretrained={options.pretrained!r}")
    start = time.perf_counter()
    subject = load_subject(run_dir, data_source)
    out = Path(options.output) if options.output else subject.path / "analysis"
    if options.output:
        _check_output(out)
    if options.soup:  # before minutes of predicting
        available = [m.name for m in predictions.discover(subject)[0]]
        if options.soup not in available:
            raise UserError(f"No soup or model named {options.soup!r} in the run; there are {available}. "
                            f"Received: soup={options.soup!r}")
    # One analysis at a time writes `out`; its files are published together once all are written
    # (`staging.staged_files`): an error, Ctrl-C or a full disk leaves the previous analysis whole, never a report
    # beside another analysis' tables. The predictions cache is written in place: it is checked against the models
    # and images whenever it is read.
    with folder_lock.held(out, "analysis", "pass another --output"):
        staging.remove_temporaries(out)
        preds, results, cached = predictions.predictions_for(subject, SPLITS, options.batch_size, options.recompute,
                                                             options.progress, out)
        with staging.staged_files(out, _owned) as files:
            written = _write_analysis(subject, options, preds, results, cached, files, start)
    return {"output_dir": str(out), **written}


def _owned(name: str) -> bool:
    """Whether `name` in the output folder is an analysis' file, which the next analysis replaces or removes (a
    sweep point's training_<point>.png: its name holds "=", `sweeps.point_name`); anything else there is kept."""
    return name in OUTPUTS or (name.startswith("training_") and "=" in name and name.endswith(".png"))


def _write_analysis(subject, options: AnalysisOptions, preds, results: dict, cached: bool, out: Path,
                    start: float) -> dict:
    """Every table and figure, and the report, into `out`; returns the summary (without output_dir)."""
    run, class_names = subject.run, list(subject.run.class_names)
    names, kinds, split = preds.names, [m.kind for m in preds.models], options.split
    metrics = {s: {n: evaluate(preds.labels[s], lp, class_names) for n, lp in zip(names, preds.log_probs[s])}
               for s in SPLITS}
    atomic.write_json(out / "metrics.json", metrics)
    best = _best_single(preds, metrics, subject.path / "soups", set(results))
    soup = _chosen_soup(preds, options.soup)

    figures.accuracy_figure(names, kinds, {s: [metrics[s][n]["accuracy"] for n in names] for s in SPLITS},
                            out / "accuracy.png")
    distances_md, stress = _distances_section(preds, metrics, split, options.diagonal, out)
    sections = [
        ("Models", report.metrics_markdown(names, kinds, metrics, best)),
        ("Training", _training_markdown(subject, out)),
        ("Accuracy of ingredients, soups and soft voting (Fig. 3)", "![accuracy](accuracy.png)"),
        ("Cross-entropy distances and MDS (Fig. 4)", distances_md),
        (f"Per class on {split} (Table V): best single checkpoint ({best}) against {soup}",
         _per_class_section(preds, metrics, best, soup, split, class_names, out)),
        (f"Bias–variance on {split}", _bias_variance_section(preds, split, run.num_classes, out)),
        ("WiSE-FT", _wiseft_markdown(results, out)),
        ("CKA with the pretrained model", _cka_section(run, preds, best, split, options, out)),
    ] + _soups_table(subject.path, set(results))
    seconds = time.perf_counter() - start
    preamble = (f"{subject.describe()} ({run.config.model.name}, {run.num_classes} classes, "
                f"{len(preds.rows('ingredient'))} ingredients). Best single checkpoint: **{best}**; soup compared "
                f"per class: **{soup}**. Analysis split: {split}; images: "
                f"{', '.join(f'{s} {len(preds.labels[s]):,}' for s in SPLITS)}. Predictions "
                f"{'read from the cache' if cached else 'computed'}; {seconds:.1f} s.")
    if split == "test" and (copies := copies_of_train_in_test(run.splits)):  # a test/ folder with train copies
        preamble += "\n\n" + note_on_test_copies(copies)
    text = report.report_markdown(sections, "Analysis", preamble)
    atomic.write_text(out / "report.md", text)
    atomic.write_text(out / "report.html", html.report_page(text, out, f"Analysis of {subject.path.name}",
                                                            html.soup_provenance(subject.path)))
    return {"best_single": best, "soup": soup, "stress": stress, "seconds": seconds, "cached": cached,
            "config": run.config}


def _distances_section(preds, metrics, split: str, diagonal: str, out: Path) -> tuple[str, float]:
    """Cross-entropy distances and their MDS map: writes distances.json and mds.png; returns (text, stress)."""
    names, kinds = preds.names, [m.kind for m in preds.models]
    matrix = distances.cross_entropy_distances(preds.log_probs[split])
    coordinates, stress = distances.mds_embedding(matrix, diagonal)
    atomic.write_json(out / "distances.json", {
        "split": split, "names": names, "kinds": kinds, "distances": matrix.tolist(), "diagonal": diagonal,
        "mds": coordinates.tolist(), "stress": stress})
    figures.mds_figure(coordinates, names, kinds, [metrics["val"][n]["accuracy"] for n in names], out / "mds.png",
                       f"MDS of cross-entropy distances on {split} (stress {stress:.3f}); labels: val accuracy %")
    diagonal_note = ("its diagonal 2H(p,p) (each model's doubled mean entropy) set to 0 and the paper's distances "
                     "kept off it" if diagonal == "zero" else
                     "each model's self-distance 2H(p,p) removed: Dist(f,g) − (Dist(f,f)+Dist(g,g))/2, the "
                     "symmetrised KL, so identical models coincide")
    text = (f"Dist(f,g) = mean_i [H(p_i^f,p_i^g) + H(p_i^g,p_i^f)] on {split}; metric MDS (scikit-learn, "
            f"classical start) of the matrix with {diagonal_note}. Normalised stress (Kruskal's stress-1: "
            f"sqrt(Σ(d − δ)² / Σd²), d the map's distances, δ the matrix's) {stress:.3f}. Each point shows "
            f"its val accuracy %.\n\n![MDS](mds.png)\n\n"
            f"{_mean_distance_sentence(matrix, preds.rows('ingredient'))}; "
            f"self-distances 2H(p,p) range {np.diag(matrix).min():.4f}–{np.diag(matrix).max():.4f}.")
    return text, stress


def _per_class_section(preds, metrics, best: str, soup: str, split: str, class_names, out: Path) -> str:
    """Table V for the best single checkpoint and the soup, and their confusion matrices: writes per_class.json,
    per_class.md and confusion.png; returns the report's text."""
    figures.confusion_figure({f"best single ({best})": metrics[split][best]["confusion_matrix"],
                              soup: metrics[split][soup]["confusion_matrix"]}, class_names, out / "confusion.png",
                             f"Confusion matrices on {split} (rows true, columns predicted)")
    per_class = tables.per_class_table(preds.labels[split], {
        "best single": preds.log_probs[split][preds.index(best)],
        soup: preds.log_probs[split][preds.index(soup)]}, class_names)
    per_class_md = (f"Precision (P), recall (R, a class's accuracy) and F1 in %; support: the class's images on "
                    f"{split}; macro: the unweighted mean over classes.\n\n{tables.per_class_markdown(per_class)}")
    atomic.write_json(out / "per_class.json", {"split": split, "best_single": best, **per_class})
    atomic.write_text(out / "per_class.md", f"# Per class on {split}\n\n{per_class_md}\n")
    return f"{per_class_md}\n\n![confusion matrices](confusion.png)"


def _bias_variance_section(preds, split: str, num_classes: int, out: Path) -> str:
    """The ingredients' bias–variance decompositions: writes bias_variance.json and .md; returns the report's text."""
    bv = _bias_variance(preds, split, num_classes)
    bv_md = report.bias_variance_markdown(bv)
    atomic.write_json(out / "bias_variance.json", bv)
    atomic.write_text(out / "bias_variance.md", f"# Bias–variance on {split}\n\n{bv_md}\n")
    return bv_md


def _training_markdown(subject, out: Path) -> str:
    """training.png from history.csv (training_<point>.png for each run of a sweep), and its section of the report."""
    shown, missing = [], []
    for run in subject.runs:
        label = subject.label(run)
        if not (run.path / "history.csv").is_file():
            missing.append(f"No history.csv in the run directory{f' {label}' if label else ''}: no training curves.")
            continue
        name = f"training_{label}.png" if label else "training.png"
        curves.training_curves(run.path, out / name)
        shown.append(f"![training curves{f' of {label}' if label else ''}]({name})")
    intro = ["Loss, accuracy and macro F1 per epoch (train on augmented batches, val after each epoch), the learning "
             "rate, and each checkpoint a keep rule holds (checkpoints/manifest.json)."] if shown else []
    return "\n\n".join(intro + shown + missing)


def _wiseft_markdown(results: dict, out: Path) -> str:
    """wiseft.png when a soup's results.json holds a WiSE-FT interpolation, and its section of the report."""
    found = {method: r["interpolation"] for method, r in results.items() if r.get("interpolation")}
    if not found:
        return "No soup was interpolated with its pretrained weights (`python -m ich_keras.soup ... --interpolate`)."
    curves.wiseft_figure(found, out / "wiseft.png")
    return (f"W0 + alpha (W_soup − W0) for {', '.join(found)}; the numbers are in each soup's results.md.\n\n"
            "![WiSE-FT](wiseft.png)")


def _soups_table(run_path: Path, analysed: set[str]) -> list[tuple[str, str]]:
    """The soups' Table IV (soups/results.md's, test split) as a report section, when the soups wrote one, with
    the `analysed` methods' rows: a soup left out of the analysis (cooked from checkpoints no longer kept) would
    compare against another best single checkpoint than the report's.

    Made again from the method folders' results.json, not read from results.md: a soup command killed part-way
    leaves a results.md whose rows may name soups that were replaced since.
    """
    if not (run_path / "soups" / "results.md").is_file() or not analysed:
        return []
    table = summary.table(run_path / "soups", methods=analysed).strip()
    return [("Soups on test (Table IV, as soups/results.md)", table)]


def _mean_distance_sentence(matrix, rows) -> str:
    """The mean distance between two different ingredients (`rows` of `matrix`), in words (none with one)."""
    if len(rows) < 2:
        return "One ingredient, no distance between ingredients"
    sub = matrix[np.ix_(rows, rows)]
    return f"Mean distance between ingredients: {sub[~np.eye(len(rows), dtype=bool)].mean():.4f}"
