"""Which models a run (or a sweep: `ich_keras.analysis.subject`) holds, one forward pass of each over the splits,
and the `predictions.npz` cache.

Models, in this order: every ingredient (the checkpoints the soups were cooked from, named as the soups name them:
`epoch_007`, across a sweep's runs `seed=0/epoch_007`; or every kept checkpoint when no soup exists yet), every soup
found under RUN_DIR/soups/<method>/ (soup.weights.h5, and soup_bn.weights.h5 as "<method>+bn"), and soft voting over
the ingredients (computed from their probabilities, no pass of its own).

The cache holds, per split, the labels and the (models, n, classes) log-probabilities (and probabilities, for
readers); it is reused while the same weights files and the same image files, unchanged (size and mtime), are asked
for the same splits: images replaced under their names, or another data folder given with `--set data.source=DIR`
whose files differ, are predicted again. Files are named relative to the run directory, so a run moved (`mv`,
`cp -a`) or analysed from another working directory keeps its cache. It lies in the analysis' output folder
(RUN_DIR/analysis by default).
"""

from __future__ import annotations

import hashlib
import os
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import log_softmax

from ich_keras import atomic, data
from ich_keras.errors import UserError
from ich_keras.progress import Phase
from ich_keras.soups.publish import check_distinct_names, stored_path

CACHE = "predictions.npz"


@dataclass(frozen=True)
class ModelRef:
    """One model of the analysis: a display name, its kind ("ingredient", "soup" or "ensemble") and its weights
    file ("" for soft voting, which is computed from the ingredients)."""

    name: str
    kind: str
    path: str


@dataclass
class ModelPredictions:
    """Every model's log-probabilities on each split.

    Attributes:
        models: the `ModelRef`s, in row order.
        labels: {split: (n,) int64}.
        log_probs: {split: (M, n, K) float64}.
    """

    models: list[ModelRef]
    labels: dict
    log_probs: dict

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.models]

    def index(self, name: str) -> int:
        if name not in self.names:
            raise UserError(f"No model named {name!r}; the models are {self.names}. Received: name={name!r}")
        return self.names.index(name)

    def rows(self, kind: str) -> list[int]:
        return [i for i, m in enumerate(self.models) if m.kind == kind]


def _soup_results(run_path: Path) -> dict:
    """{method folder name: results.json dict} for every soup folder with a results.json."""
    found = {}
    for path in sorted((run_path / "soups").glob("*/results.json")):
        found[path.parent.name] = atomic.read_json(path)
    return found


def _ingredient_file(subject, method: str, soups: dict, stored: str) -> Path:
    """The file an ingredient path of soups/<method>/results.json names, resolved against the run directory it is
    relative to (never the working directory). Results cooked before paths were stored relative to the run (no
    `ingredients_fingerprint`) are trusted only where their path lies inside this run directory: an absolute path
    into another copy of the run would silently score that copy's files.

    `soups` is {method: results.json dict} of every soup there: the error's command cooks them again as they were
    cooked."""
    from ich_keras.soups.publish import resolve_ingredient

    results = soups[method]
    where, root = subject.path / "soups" / method / "results.json", subject.paths_root(results, soups)
    path = resolve_ingredient(stored, root, where)
    if "ingredients_fingerprint" not in results and root.resolve() not in path.resolve().parents:
        raise UserError(f"{where} was written by an older `soup` that stored ingredient paths as typed; this one "
                        f"points outside the run directory {str(root)!r}. Cook the soups again with "
                        f"`{subject.cook_command(sorted(soups), soups)}`. Received: path={stored!r}")
    return path


def _note_checkpoints_after_the_soups(subject, results: dict, ingredients: list[str]) -> None:
    """Names the kept checkpoints written after the soups were cooked (a resume's new epochs): the analysis takes
    the soups' ingredients, so it leaves them out until the soups are cooked again. A checkpoint older than the
    soups and not among their ingredients was left out by the user's choice, and is not named."""
    cooked = min((subject.path / "soups" / method / "results.json").stat().st_mtime for method in results)
    cooked_from = {Path(path).resolve() for path in ingredients}
    newer = [os.path.join(subject.label(run), c.path.name) for run in subject.runs for c in run.checkpoints
             if c.path.resolve() not in cooked_from and c.path.is_file() and c.path.stat().st_mtime > cooked]
    if newer:
        print(f"[analyze] not analysed: {', '.join(newer)}, kept after the soups were cooked; cook again with "
              f"`{subject.cook_command(sorted(results), results)}` to include them", file=sys.stderr)


def _note_stale(subject, stale: list[str], stored: dict, results: dict) -> None:
    """Says why each soup of `stale` is left out, with the command that cooks it again: cooked from a sweep point
    whose run directory is gone (named), or from checkpoints the run no longer keeps (a resume's top-k dropped them);
    a MonoSoup of a W1 the run no longer keeps, with the `soup monosoup` command that makes one again.

    Args:
        stale: the methods whose ingredient files are not all there.
        stored: {method: its ingredients' paths}.
        results: {method: results.json dict}.
    """
    made = [m for m in stale if results[m].get("method") == "monosoup"]  # by `soup monosoup`, which cook cannot
    for m in made:
        print(f"[analyze] left out soups/{m}/: a MonoSoup of {stored[m][0].name}, a checkpoint the run no longer "
              f"keeps; make one again from a kept checkpoint with `{subject.monosoup_command(results[m])}`",
              file=sys.stderr)
    stale = [m for m in stale if m not in made]
    gone = {m: subject.missing_runs(path for path in stored[m] if not path.is_file()) for m in stale}
    of_missing = [m for m in stale if gone[m]]
    if of_missing:
        names = sorted({name for m in of_missing for name in gone[m]})
        runs = (f"the run of {names[0]}, whose directory {subject.path / names[0]} is" if len(names) == 1 else
                f"the runs of {', '.join(names)}, whose directories {', '.join(str(subject.path / n) for n in names)}"
                f" are")
        print(f"[analyze] left out {', '.join(f'soups/{m}/' for m in of_missing)}: cooked from {runs} missing; "
              f"cook again across the runs left with `{subject.cook_command(of_missing, results)}`", file=sys.stderr)
    dropped = [m for m in stale if not gone[m]]
    if dropped:
        print(f"[analyze] left out {', '.join(f'soups/{m}/' for m in dropped)}: cooked from checkpoints the run no "
              f"longer keeps; cook again with `{subject.cook_command(dropped, results)}`", file=sys.stderr)


def discover(subject) -> tuple[list[ModelRef], dict]:
    """The models to analyse in a run or sweep directory (module docstring) and the soups' results.json dicts.

    Args:
        subject: an `ich_keras.analysis.subject.Subject`.

    Returns:
        ([ModelRef], {method: results.json dict}).
    """
    results = _soup_results(subject.path)
    stored = {m: [subject.paths_root(r, results) / i["path"] for i in r.get("ingredients", [])]
              for m, r in results.items()}
    for method, r in results.items():  # a MonoSoup lists no ingredients: its one is W1
        if r.get("method") == "monosoup":
            stored[method] = subject.monosoup_finetuned(r)
    # A kept checkpoint deleted by hand: the run names it and how to cook without it (`publish.resolve_ingredient`
    # would only say to cook again, which the deleted file stops as well). Paths resolve as there: against the run.
    for run in subject.runs:
        run.check_kept([path for paths in stored.values() for path in paths])
    # A soup of checkpoints the run no longer keeps (a resume's top-k dropped them): left out, as `soup` leaves it
    # out of its results.md, rather than stopping the analysis of the rest.
    stale = sorted(m for m, paths in stored.items() if not all(path.is_file() for path in paths))
    if stale:
        _note_stale(subject, stale, stored, results)
        results = {m: r for m, r in results.items() if m not in stale}
    ingredients = {}  # {path: name}, the soups' own name of each file (`run/epoch_NNN` across runs)
    for method, r in results.items():
        for ingredient in r.get("ingredients", []):
            path = str(_ingredient_file(subject, method, results, ingredient["path"]))
            ingredients.setdefault(path, ingredient["name"].removesuffix(".weights.h5"))
    if ingredients:
        _note_checkpoints_after_the_soups(subject, results, list(ingredients))
    else:
        for run in subject.runs:
            run.check_kept()
        # Named as soups across the runs name them (`seed=0/epoch_007`): runs share their checkpoints' file names.
        ingredients = {str(c.path): Path(subject.label(run), c.path.name.removesuffix(".weights.h5")).as_posix()
                       for run in subject.runs for c in run.checkpoints}
    if not ingredients:
        raise subject.run.none_kept_error("cook soups from the files you choose (`soup cook RUN --checkpoints "
                                          "...`), which analyze then takes")
    models = [ModelRef(name, "ingredient", path) for path, name in ingredients.items()]
    soups = subject.path / "soups"
    for method in sorted(p.parent.name for p in soups.glob("*/soup.weights.h5") if p.parent.name not in stale):
        models.append(ModelRef(method, "soup", str(soups / method / "soup.weights.h5")))
        bn = soups / method / "soup_bn.weights.h5"
        if bn.is_file():
            models.append(ModelRef(f"{method}+bn", "soup", str(bn)))
    models.append(ModelRef("soft_voting", "ensemble", ""))
    # Rows, tables and figures name the models: soups cooked from epoch_001 of two runs cannot be analysed together.
    check_distinct_names([m.name for m in models], [m.path or "(soft voting)" for m in models],
                         f"the soups under {soups} were cooked from files with one name; move the soups "
                         "of one set of files out of soups/, or cook them again from files with distinct names.")
    return models, results


def _stamp(path: str) -> str:
    stat = Path(path).stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def images_stamp(run, split: str) -> str:
    """A digest of the split's image files as they are now in the run's data folder: name, size and mtime of each."""
    source = run.image_source(split)  # every file there, or a UserError saying where to find them
    if source == data.DIGITS:  # embedded in scikit-learn: always the same
        return source
    digest = hashlib.sha256()
    for key in run.splits.splits[split].keys:
        digest.update(f"{key}\t{_stamp(Path(source) / key)}\n".encode())
    return digest.hexdigest()


def predict(run, models: list[ModelRef], splits, batch_size: int = 32, progress: bool = True) -> ModelPredictions:
    """One forward pass of each model with weights over each split; soft voting from the ingredients.

    Args:
        run: an `ich_keras.rundir.Run`.
        models: from `discover`; weights files must share the run's architecture.
        splits: split names, e.g. ("val", "test").
        batch_size: evaluation batch size.
        progress: one `[analyze] predictions of NAME on val, test (i/n)` line per model on stderr.

    Returns:
        `ModelPredictions`.
    """
    from ich_keras.soups.averaging import Reader
    from ich_keras.soups.forward import Evaluator, soft_voting

    weighted = [m for m in models if m.path]
    reader = Reader([m.path for m in weighted])
    # One compiled forward for every weight set: the weights are an argument of the jitted function, and the model a
    # template, built from the first file without running its initializers.
    evaluator = Evaluator(run.build_model(weighted[0].path), reader.layout, list(run.class_names))
    data = {split: run.in_memory(split, batch_size) for split in splits}
    labels, outputs = {}, {split: [] for split in splits}
    phase = Phase("analyze", len(weighted), progress)

    def announce(index, split):
        if split == next(iter(data)):  # one line per model for all its splits
            phase.step(f"predictions of {weighted[index].name} on {', '.join(splits)}")

    def describe(index):
        model = weighted[index]
        return (f"{model.name} ({model.path})",
                "Cook it again, or move its folder out of soups/." if model.kind == "soup" else "")

    for _, out in evaluator.predict_each(reader, data, announce, describe):
        for split, (split_labels, logits) in out.items():
            labels[split] = split_labels
            outputs[split].append(log_softmax(np.asarray(logits, np.float64), axis=-1))
    log_probs = {}
    for split in splits:
        rows = dict(zip(weighted, outputs[split]))  # by ModelRef, not by name: names are for people
        ingredients = [rows[m] for m in models if m.kind == "ingredient"]
        # soft_voting returns log of the mean probability, a valid log-probability (it sums to 1 after exp).
        full = [rows[m] if m.path else soft_voting(ingredients) for m in models]
        log_probs[split] = np.stack(full)  # (M, n, K)
    return ModelPredictions(list(models), labels, log_probs)


def save(path: Path, predictions: ModelPredictions, run_dir: Path, images: dict[str, str]) -> None:
    """Writes the cache atomically: names, kinds, paths (relative to `run_dir`), file stamps, and per split the
    images' stamp (`images_stamp`), labels, log_probs, probs."""
    arrays = {
        "names": np.array(predictions.names), "kinds": np.array([m.kind for m in predictions.models]),
        "paths": np.array([_in_run(m.path, run_dir) for m in predictions.models]),
        "stamps": np.array([_stamp(m.path) if m.path else "" for m in predictions.models]),
        "splits": np.array(sorted(predictions.labels)),
    }
    for split, labels in predictions.labels.items():
        arrays[f"{split}_images"] = np.array(images[split])
        arrays[f"{split}_labels"] = labels
        arrays[f"{split}_log_probs"] = predictions.log_probs[split]
        arrays[f"{split}_probs"] = np.exp(predictions.log_probs[split]).astype(np.float32)
    with atomic.atomic_path(path, suffix=".npz") as temp:
        np.savez(temp, **arrays)


def load(path: Path, models: list[ModelRef], run_dir: Path, images: dict[str, str] | None,
         splits) -> ModelPredictions | None:
    """The cached predictions if they cover exactly `models` (same files of `run_dir`, unchanged) and `splits` with
    the images of `images` ({split: `images_stamp`}; None: not compared), else None. A cache that cannot be read (cut
    short by a copy, written by another version) is None too: it is only a cache, and the caller writes it again."""
    if not Path(path).is_file():
        return None
    try:
        with np.load(path) as f:
            cached = [ModelRef(str(n), str(k), str(p)) for n, k, p in zip(f["names"], f["kinds"], f["paths"])]
            stamps = [str(s) for s in f["stamps"]]
            wanted = [ModelRef(m.name, m.kind, _in_run(m.path, run_dir)) for m in models]
            if cached != wanted or not set(splits) <= set(str(s) for s in f["splits"]):
                return None
            if images is not None and any(str(f[f"{split}_images"]) != images[split] for split in splits):
                return None
            if any(m.path and (not Path(m.path).is_file() or _stamp(m.path) != s) for m, s in zip(models, stamps)):
                return None
            return ModelPredictions(list(models), {s: f[f"{s}_labels"] for s in splits},
                               {s: f[f"{s}_log_probs"] for s in splits})
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def _in_run(path: str, run_dir: Path) -> str:
    """A weights file's name in the cache: as results.json stores it (relative to the run directory, or to a run
    beside it), so the key does not depend on where the run lies or where analyze starts; "" (soft voting) stays."""
    return stored_path(path, run_dir) if path else path


def predictions_for(subject, splits=("val", "test"), batch_size: int = 32, recompute: bool = False,
                    progress: bool = True, output: Path | None = None) -> tuple[ModelPredictions, dict, bool]:
    """The run's (or sweep's) predictions from a valid cache, else from one pass per model (then cached).

    Args:
        subject: an `ich_keras.analysis.subject.Subject`.
        splits: splits to predict.
        batch_size: evaluation batch size.
        recompute: ignore the caches.
        progress: print progress lines (stderr).
        output: the analysis' output folder; its cache is read first and written. None is RUN_DIR/analysis. The
            run's own cache is read too, so an output elsewhere reuses it but never writes into the run (which may
            be read-only, or someone else's).

    Returns:
        (ModelPredictions, {method: soups results.json dict}, whether a cache was used).
    """
    models, results = discover(subject)
    run, root = subject.run, subject.path  # the run gives the model and the data; the cache lies under root
    try:
        images = {split: images_stamp(run, split) for split in splits}
    except UserError:  # the images are not here (a run copied without its data): the cache, unchecked against them
        images = None
    path = Path(output or root / "analysis") / CACHE
    for candidate in dict.fromkeys([path, root / "analysis" / CACHE]):
        cached = None if recompute else load(candidate, models, root, images, splits)
        if cached is not None:
            if images is None:
                print(f"[analyze] the run's images are not in {run.config.data.source}: predictions from "
                      f"{candidate} of these weights files, not checked against the images", file=sys.stderr)
            return cached, results, True
    predictions = predict(run, models, splits, batch_size, progress)  # without the images: their UserError
    save(path, predictions, root, images)
    return predictions, results, False
