"""What `python -m ich_keras.soup` does with a run directory: evaluate checkpoints, cook soups, write the results.

Outputs, under RUN_DIR/soups/ (or --output):
    evaluate/{val,test}.json|.md      every checkpoint's numbers (the `evaluate` command)
    <method>/soup.weights.h5          the soup (model.load_weights accepts it); soup_bn.weights.h5 if recalibrated
    <method>/results.json             ingredients' val and test metrics, chosen ingredients in order, soup val and
                                      test metrics, soft voting's, best single checkpoint's
    <method>/results.md               Table IV for this method; results.md beside the folders: all methods
                                      (`ich_keras.soups.summary`)
    <method>/provenance.json          the ingredients with their sha256, the method's parameters, W0
                                      (`ich_keras.soups.provenance`)
    <merge>/layers.json               per-tensor statistics of a merge that keeps them
    monosoup_<rule>/                  `ich_keras.soups.monosoup_run`
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ich_keras import atomic, cli, folder_lock, ranking, weights_origin
from ich_keras.data import copies_of_train_in_test
from ich_keras.errors import UserError
from ich_keras.evaluation import check_finite_outputs, evaluate
from ich_keras.progress import Phase
from ich_keras.soups import merges, provenance, publish, registry, report, summary
from ich_keras.soups.bn import batchnorm_layers, recalibrate_bn
from ich_keras.soups.forward import Evaluator, soft_voting
from ich_keras.soups.learned import learned
from ich_keras.soups.methods import check_selection, greedy, ingredient_results, interpolate, pruned, uniform
from ich_keras.soups.significance import compare
from ich_keras.weight_files import H5Source, save

NON_FINITE_ADVICE = ("Nothing of it was written. A merge from W0 with a scale far from 1/N (--lambda) can leave "
                     "the range the model was trained in; a smaller scale, or fine-tunes of that W0, help.")
DISTINCT_NAMES_ADVICE = ("pass files with distinct names (a copy under another name; a symbolic link keeps the "
                         "target's), or the runs themselves with --runs, which labels each checkpoint run/epoch_NNN.")


@dataclass(frozen=True)
class SoupOptions:
    """What to cook and how; see `python -m ich_keras.soup --help`."""

    methods: tuple[str, ...] = ("uniform", "greedy", "soft_voting")
    greedy_metric: str = "accuracy"
    accept: str = "ge"
    prune_accept: str = "gt"
    recalibrate_bn: bool = False
    bn_batches: int | None = None
    interpolate: bool = False
    pretrained: str = ""
    alphas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    learned_epochs: int = 3
    learned_learning_rate: float = 0.05
    lam: float | None = None  # task arithmetic, TIES, DARE: None = 1/N (TIES: 1)
    ties_density: float = 0.2
    dare_rate: float = 0.5
    dare_seed: int = 0
    slerp_t: float = 0.5
    bootstrap_resamples: int = 2000  # significance against the best single checkpoint
    bootstrap_seed: int = 0
    batch_size: int = 32
    progress: bool = True


def _names(paths) -> list[str]:
    return [Path(p).name for p in paths]


def _selection(options: SoupOptions, method: str) -> dict:
    """How greedy (or pruned, with its own acceptance rule) chooses: the metric and the acceptance rule."""
    return {"metric": options.greedy_metric, "accept": options.prune_accept if method == "pruned" else options.accept}


def evaluate_checkpoints(run, paths, split: str, output_dir: Path, batch_size: int, progress: bool = True) -> list:
    """Every checkpoint's `evaluate` dict on `split`, written to output_dir/evaluate/<split>.json and .md."""
    model = run.build_model(paths[0])  # a template: the evaluator passes each weight set in
    results = ingredient_results(model, paths, {split: run.dataset(split, batch_size)}, list(run.class_names),
                                  progress)[0]
    stored = [publish.stored_path(path, run.path) for path in paths]
    names = _names(paths)
    # Nothing downstream keys on these names, so files sharing one (epoch_001 of two runs) are shown by their
    # stored paths instead of being refused as the soups' ingredients are.
    names = [where if names.count(name) > 1 else name for name, where in zip(names, stored)]
    entries = [{"name": name, "path": where, split: r[split]} for name, where, r in zip(names, stored, results)]
    with publish.locked(output_dir):  # one writer at a time in the soups folder
        atomic.write_json(output_dir / "evaluate" / f"{split}.json", entries)
        atomic.write_text(output_dir / "evaluate" / f"{split}.md",
                          report.evaluation_markdown(entries, split, run.path.resolve().as_posix()))
    return entries


@dataclass
class _Shared:
    """What every method of one command shares: the ingredients and their scores, the data and compiled forward
    that score a soup, the baseline on test, provenance's root."""

    run: object  # the `ich_keras.rundir.Run`
    model: object  # a template built once: the evaluator passes each weight set in
    ingredients: list  # `H5Source`s
    val: object  # in memory: scored many times by greedy / pruned / learned
    test: object
    evaluator: Evaluator
    val_results: list[dict]  # each ingredient's `evaluate` dict on val
    names: list[str]
    root: Path  # provenance gives paths relative to it
    baseline: tuple  # the best single checkpoint's (labels, logits) on test
    hashes: dict  # {path: sha256}, so each file is hashed once
    pretrained: object  # W0 as `merges.pretrained_weights` gives it, None when no method uses it
    resized: list[str]  # how W0 was resized to the ingredients' image size ([]: it was not)


def run_soups(run, paths, options: SoupOptions, output_dir: Path, names=None, root=None) -> list[dict]:
    """Cooks every requested soup from `paths` and writes its outputs; returns the results.json dicts.

    Args:
        run: an `ich_keras.rundir.Run` (config, class names, model builder, datasets).
        paths: the ingredient `.weights.h5` files.
        options: methods and their settings.
        output_dir: where the method folders go (RUN_DIR/soups by default).
        names: each ingredient's label (default its file name; `run/epoch_NNN` for soups across runs); two files
            with one label are a UserError before anything is scored.
        root: the directory provenance.json gives paths relative to (default the run directory).
    """
    check_recipe(options, len(paths))  # before minutes of evaluating ingredients
    publish.check_distinct_names(names or _names(paths), paths, DISTINCT_NAMES_ADVICE)
    output_dir = Path(output_dir)
    # The whole command holds the lock: a second soup on this folder stops at once instead of interleaving files.
    with publish.locked(output_dir):
        # Checked again under this lock: a fit that started since the first check holds its run's lock now, or
        # sees this one and stops (`train._locked_run_directory`).
        for kept_in in {weights_origin.run_of(path) for path in paths} - {None}:
            folder_lock.check_not_held(kept_in, "souping")
        publish.remove_leftovers(output_dir, options.methods)
        for method in options.methods:  # before minutes of evaluating ingredients
            publish.check_replaceable(output_dir / method)
            publish.check_inputs_kept(output_dir / method, [*paths, options.pretrained])
        summary.method_results(output_dir)  # the summary reads them all at the end: a damaged one stops us now
        try:
            all_results = _cook_all(run, paths, options, output_dir, names, root)
        except BaseException:
            # Stopped part-way (an error in a later method, Ctrl-C): the methods published so far replaced their
            # folders, so the old summary would show rows (a "+ BN recalibration" row, another set's numbers) of
            # soups no longer on disk. The newest results.json is this command's when it published any.
            if summary.method_results(output_dir):
                summary.write_held(output_dir, None)
            raise
        summary.write_held(output_dir, all_results[0]["ingredients_fingerprint"])
    return all_results


def check_recipe(options: SoupOptions, n: int | None = None) -> None:
    """Raises a UserError naming the option when the recipe cannot run: an unknown method, a selection rule, W0 (or
    its file) or a parameter a method needs, a count below 1; with `n`, also too few ingredients for a merge. A sweep
    calls it before its points train (`n` then unknown)."""
    if not options.methods:
        raise UserError(f"Choose one or more methods of {', '.join(registry.METHODS)}. Received: methods=()")
    registry.known(options.methods, "methods")
    check_selection(options.greedy_metric, options.accept)
    check_selection(options.greedy_metric, options.prune_accept)
    if options.interpolate and not options.pretrained:
        raise UserError(merges.no_pretrained("--interpolate needs the pretrained weights"))
    if options.interpolate and not (options.alphas and all(math.isfinite(a) for a in options.alphas)):
        raise UserError(f"--interpolate needs one or more finite --alphas (soup.alphas). "
                        f"Received: alphas={list(options.alphas)}")
    if options.batch_size < 1 or (options.bn_batches is not None and options.bn_batches < 1):
        raise UserError(f"batch_size and bn_batches must be 1 or more. Received: batch_size={options.batch_size}, "
                        f"bn_batches={options.bn_batches}")
    rate = options.learned_learning_rate
    if "learned" in options.methods and (options.learned_epochs < 1 or not 0 < rate < math.inf):
        raise UserError(f"--learned-epochs (soup.learned_epochs) must be 1 or more and --learned-learning-rate "
                        f"(soup.learned_learning_rate) above 0 and finite. Received: "
                        f"learned_epochs={options.learned_epochs}, learned_learning_rate={rate}")
    _check_numbers(options)
    merges.check_options(options.methods, options, n)
    users = merges.pretrained_users(options)
    if users and not Path(options.pretrained).is_file():
        raise UserError(f"The pretrained weights W0 (for {', '.join(users)}) are not a file: pass --pretrained "
                        "W0.weights.h5, or fix the config's model.init (--pretrained's default). "
                        f"Received: pretrained={options.pretrained!r}")


def _check_numbers(options: SoupOptions) -> None:
    """The numbers every recipe uses, checked before the ingredients are scored: these failed only after it, in the
    significance test (no resample; a negative seed, which numpy refuses with a traceback) or as a soup of NaN."""
    if options.lam is not None and not math.isfinite(options.lam):
        raise UserError(f"--lambda (soup.lam) must be a finite number. Received: lam={options.lam}")
    if options.bootstrap_resamples < 1:
        raise UserError(f"--bootstrap-resamples (soup.bootstrap_resamples) must be 1 or more. "
                        f"Received: bootstrap_resamples={options.bootstrap_resamples}")
    for name in ("bootstrap_seed", "dare_seed"):
        if getattr(options, name) < 0:  # numpy's generators take non-negative seeds only
            raise UserError(f"{cli.flag(name)} (soup.{name}) must be 0 or more. "
                            f"Received: {name}={getattr(options, name)}")


def _cook_all(run, paths, options: SoupOptions, output_dir: Path, names, root) -> list[dict]:
    """`run_soups`' work under the lock: scores the ingredients, then cooks and publishes each method."""
    class_names, progress = list(run.class_names), options.progress
    model = run.build_model(paths[0])  # a template: the evaluator passes each weight set in
    # (W0, how it was resized), read and checked against the model (a UserError naming it) before minutes of scoring
    pretrained = merges.pretrained_weights(options.pretrained if merges.pretrained_users(options) else None, model)
    recalibrated = [m for m in options.methods if m != "soft_voting"]  # soft voting is never recalibrated
    if options.recalibrate_bn and recalibrated and not batchnorm_layers(model):  # else found after minutes of scoring
        raise UserError(f"--recalibrate-bn (soup.recalibrate_bn): {run.config.model.name} has no BatchNormalization "
                        f"layer whose statistics a soup could recalibrate. Received: model={run.config.model.name!r}")
    val = run.in_memory("val", options.batch_size)  # scored many times by greedy / pruned / learned
    test = run.dataset("test", options.batch_size)
    # Progress lines call a file by its label: its stem ("epoch_011"), or across runs "run_a/epoch_011".
    ingredients = [H5Source(path, label) for path, label in zip(paths, names or [None] * len(paths))]
    per_ingredient, outputs, evaluator = ingredient_results(model, ingredients, {"val": val, "test": test},
                                                             class_names, progress)
    val_results = [r["val"] for r in per_ingredient]
    best = ranking.best(val_results, options.greedy_metric)  # ties broken by val loss: a fair baseline
    names = list(names) if names else _names(paths)
    w0, resized = pretrained
    shared = _Shared(run=run, model=model, ingredients=ingredients, val=val, test=test, evaluator=evaluator,
                     val_results=val_results, names=names, root=Path(root) if root else run.path,
                     baseline=outputs["test"][best], hashes={}, pretrained=w0, resized=resized)
    common = {
        "run_dir": run.path.resolve().as_posix(), "model": run.config.model.name,
        "selection": _selection(options, "greedy"),
        # Paths relative to the run directory, so a copied or moved run keeps using its own files.
        "ingredients": [{"name": n, "path": publish.stored_path(p, run.path), **r}
                        for n, p, r in zip(names, paths, per_ingredient)],
        "ingredients_fingerprint": publish.fingerprint(provenance.sha256(p, shared.hashes) for p in paths),
        "best_single": {"name": names[best], **per_ingredient[best]},
        # Test images with a copy in train (a test/ folder given with the data): scored, but no test.
        "test_copies_of_train": list(copies_of_train_in_test(run.splits)),
    }
    vote_logits = {split: soft_voting([logits for _, logits in outputs[split]]) for split in ("val", "test")}
    labels = {split: outputs[split][0][0] for split in ("val", "test")}  # every ingredient saw the same labels
    vote = {split: evaluate(labels[split], vote_logits[split], class_names) for split in ("val", "test")}
    common["soft_voting"] = {**vote, "forward_passes": len(paths),
                             "significance": _significance(vote_logits["test"], shared, options)}

    all_results = []
    phase = Phase("soup", len(options.methods), progress)
    for method in options.methods:
        phase.step(f"cooking {method}")
        # The outputs appear together, by one rename, once all are written.
        with publish.staged(output_dir, method) as directory:
            results = {**common, "method": method, "label": registry.LABELS[method]}
            if method == "soft_voting":
                results.update(chosen=names, forward_passes=len(paths), val=vote["val"], test=vote["test"],
                               significance=common["soft_voting"]["significance"])
            else:
                results.update(_cook(method, shared, options, directory))
            results["provenance"] = _write_provenance(method, results["chosen"], paths, options, shared, directory,
                                                      class_names)
            atomic.write_json(directory / "results.json", results)
            atomic.write_text(directory / "results.md", report.results_markdown(results))
        all_results.append(results)
    return all_results


def _cook(method: str, shared: _Shared, options: SoupOptions, directory: Path) -> dict:
    """Cooks one method's soup from the ingredients into `directory` (its staged folder) and scores it; returns its
    part of results.json."""
    progress, ingredients, template = options.progress, shared.ingredients, shared.ingredients[0].path
    if method == "uniform":
        weights, chosen, steps, info = uniform(ingredients, progress=progress), list(range(len(ingredients))), [], {}
        selection = {}
    elif method in registry.MERGES:
        weights, chosen, info, layers = merges.cook(method, ingredients, options, shared.val_results,
                                                    shared.pretrained)
        steps, selection = [], {}
        if layers:
            atomic.write_json(directory / "layers.json", layers)
    elif method in ("greedy", "pruned"):
        rule = _selection(options, method)
        result = {"greedy": greedy, "pruned": pruned}[method](
            ingredients, shared.model, shared.val, metric=rule["metric"], accept=rule["accept"],
            ingredient_val=shared.val_results, progress=progress, evaluator=shared.evaluator)
        weights, chosen, steps, info = result.weights, result.chosen, result.steps, result.info
        selection = {"selection": rule}
    elif method == "learned":
        result = learned(ingredients, shared.model, shared.val, epochs=options.learned_epochs,
                         learning_rate=options.learned_learning_rate, progress=progress)
        weights, chosen, steps, info, selection = result.weights, result.chosen, result.steps, result.info, {}
    else:
        raise AssertionError(f"no recipe for {method!r}")  # registry.known and check_options keep this unreachable
    save(weights, directory / "soup.weights.h5", template=template)
    # Each step named as "chosen" and "ingredients" name it (the methods give the path as passed, which a moved
    # run or another working directory would make stale).
    steps = [{**step, "name": shared.names[step["ingredient"]]} for step in steps]
    out = {"chosen": [shared.names[i] for i in chosen], "steps": steps, "info": info, "forward_passes": 1,
           **selection, **_scored(weights, shared, options, f"The {method} soup")}
    if options.recalibrate_bn:
        train = recalibration_batches(shared.run, options.batch_size, options.bn_batches)
        recalibrated, bn_info = recalibrate_bn(weights, shared.model, train, options.bn_batches, progress)
        save(recalibrated, directory / "soup_bn.weights.h5", template=template)
        out["bn_recalibrated"] = {**_scored(recalibrated, shared, options,
                                            f"The {method} soup with recalibrated BatchNorm"), **bn_info}
    if options.interpolate:
        points = {split: interpolate(shared.pretrained, weights, shared.model, data, options.alphas,
                                     list(shared.run.class_names), evaluator=shared.evaluator,
                                     name=f"the {method} soup")
                  for split, data in (("val", shared.val), ("test", shared.test))}
        out["interpolation"] = [{"alpha": v["alpha"], "val": v["metrics"], "test": t["metrics"],
                                 "from_soup": v["from_soup"]} for v, t in zip(points["val"], points["test"])]
    return out


def _scored(weights, shared: _Shared, options: SoupOptions, soup: str) -> dict:
    """{"val", "test": `evaluate` dicts, "significance": on test against the best single checkpoint}; a UserError
    naming `soup` when its outputs are not finite (nothing of it is then published)."""
    scored = {}
    for split, data in (("val", shared.val), ("test", shared.test)):
        labels, logits = shared.evaluator.predict(weights, data)
        check_finite_outputs(logits, soup, NON_FINITE_ADVICE)
        scored[split] = evaluate(labels, logits, shared.evaluator.class_names)
    return {**scored, "significance": _significance(logits, shared, options)}


def _significance(logits, shared: _Shared, options: SoupOptions) -> dict:
    labels, baseline = shared.baseline
    return compare(labels, logits, baseline, options.bootstrap_resamples, options.bootstrap_seed)


def _write_provenance(method, chosen_names, paths, options, shared: _Shared, directory: Path, class_names) -> dict:
    """Writes directory/provenance.json (see `ich_keras.soups.provenance`), with the classes of the soup's outputs,
    and returns it."""
    settings = ({"greedy": _selection(options, "greedy"), "pruned": _selection(options, "pruned")}.get(method)
                or registry.parameters(method, options, len(paths)))
    if options.recalibrate_bn and method != "soft_voting":  # its batch size shapes what it finds: recorded
        settings = {**settings, "recalibrate_bn": True, "bn_batches": options.bn_batches,
                    "bn_batch_size": options.batch_size}
    # W0 made the soup (a merge from it) or its WiSE-FT curve (--interpolate, every soup but soft voting's)
    uses_w0 = method in registry.NEEDS_PRETRAINED or (options.interpolate and method != "soft_voting")
    pretrained = options.pretrained if uses_w0 else None
    used = set(chosen_names)
    record = provenance.provenance(method, settings, shared.names, paths, shared.root, pretrained, shared.hashes,
                                   shared.resized)
    for entry in record["ingredients"]:
        entry["used"] = entry["name"] in used
    record["classes"] = list(class_names)  # what `weights_origin` reads once the runs have moved
    atomic.write_json(directory / "provenance.json", record)
    return record


def recalibration_batches(run, batch_size: int, num_batches: int | None, seed: int = 0):
    """Training images in a seeded random order, unaugmented, for BatchNorm recalibration.

    `run.dataset("train")` follows the split list, which is sorted by class: its batches hold one class each, so
    the mean of their variances misses the variance between classes (on AHE64 that cost 5 points of accuracy).
    A shuffled order makes every batch a sample of the whole training set; with `num_batches` only that many
    batches are decoded.
    """
    from ich_keras import pipeline

    train = run.splits.splits["train"]
    order = np.random.default_rng(seed).permutation(len(train))
    if num_batches:
        order = order[:num_batches * batch_size]
    return pipeline.eval_dataset(run.image_source("train"), train.subset(order), run.image_size, run.mean, run.std,
                                 batch_size, cache=False, workers=run.config.data.workers)
