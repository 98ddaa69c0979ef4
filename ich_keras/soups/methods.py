"""Soup recipes on any same-architecture weights: uniform, greedy, pruned, and WiSE-FT interpolation.

Each recipe streams its ingredients through `averaging.Reader` (one buffer, one compiled update) and scores candidates
with one `forward.Evaluator` (one compiled forward). Selection only ever looks at validation data; the caller
evaluates the chosen soup on test once, at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ich_keras.errors import UserError
from ich_keras.evaluation import check_finite_outputs, evaluate
from ich_keras.progress import Phase, note
from ich_keras.ranking import METRIC_MODES, ranked
from ich_keras.soups.averaging import Reader, running_mean
from ich_keras.soups.forward import Evaluator
from ich_keras.weight_files import WeightSet

ACCEPT_RULES = ("ge", "gt")


@dataclass
class SoupResult:
    """A soup and how it was chosen.

    Attributes:
        weights: the soup's weights.
        chosen: indices of the ingredients in the soup, in the order they were added (or kept).
        val: the soup's validation metrics (the dict of `ich_keras.evaluation.evaluate`); None if not evaluated.
        steps: one record per candidate tried: {"ingredient", "name", "value", "accepted"}.
        info: recipe-specific extras (e.g. a learned soup's coefficients and memory).
    """

    weights: WeightSet
    chosen: list[int]
    val: dict | None = None
    steps: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)


def check_selection(metric: str, accept: str) -> None:
    """Raises a UserError for an unknown selection metric or acceptance rule."""
    if metric not in METRIC_MODES:
        raise UserError(f"metric must be one of {sorted(METRIC_MODES)}. Received: metric={metric!r}")
    if accept not in ACCEPT_RULES:
        raise UserError(f"accept must be one of {ACCEPT_RULES}. Received: accept={accept!r}")


def improves(new: float, old: float, metric: str, accept: str) -> bool:
    """Whether `new` is acceptable against `old`: not worse (`ge`) or strictly better (`gt`), in `metric`'s mode."""
    check_selection(metric, accept)
    if METRIC_MODES[metric] == "min":
        new, old = old, new  # compare as "old <= new" for a metric where lower is better
    return new >= old if accept == "ge" else new > old


def evaluate_ingredients(ingredients, model, data, class_names=None, progress: bool = False,
                         return_logits: bool = False):
    """Scores every ingredient on `data` with one compiled forward function.

    Args:
        ingredients: `.weights.h5` paths, Keras models, `WeightSet`s or dicts of one architecture.
        model: a built Keras model of that architecture (its own weights are not used).
        data: a re-iterable of (images, labels) batches.
        class_names: names in label order.
        progress: one `[evaluate] NAME (i/n)` line per ingredient on stderr.
        return_logits: also return each ingredient's (labels, logits), e.g. for soft voting.

    Returns:
        A list with one `evaluate` dict per ingredient, or (that list, [(labels, logits), ...]).

    Raises:
        UserError naming the ingredient whose outputs hold NaN or inf.
    """
    reader = Reader(ingredients)
    evaluator = Evaluator(model, reader.layout, class_names)
    results, outputs = scored_each(evaluator, reader, {"data": data}, Phase("evaluate", len(reader), progress),
                                   lambda index, _: reader.label(index))
    results = [r["data"] for r in results]
    return (results, outputs["data"]) if return_logits else results


def ingredient_results(model, ingredients, datasets: dict, class_names, progress: bool):
    """(per ingredient {split: `evaluate` dict}, per split every ingredient's (labels, logits), the evaluator): one
    compiled forward for all, one `[evaluate] NAME on SPLIT` line each. `ingredients`: `.weights.h5` paths or weight
    sources."""
    reader = Reader(ingredients)
    evaluator = Evaluator(model, reader.layout, class_names)
    phase = Phase("evaluate", len(reader) * len(datasets), progress)
    results, outputs = scored_each(evaluator, reader, datasets, phase,
                                   lambda index, split: f"{reader.label(index)} on {split}")
    return results, outputs, evaluator


def scored_each(evaluator: Evaluator, reader: Reader, datasets: dict, phase: Phase, line):
    """Every ingredient of `reader` alone on every split: (per ingredient {split: `evaluate` dict}, per split every
    ingredient's (labels, logits)), each pass announced in `phase` as `line(index, split)`; a UserError naming an
    ingredient whose outputs are not finite."""
    results, outputs = [], {split: [] for split in datasets}
    for _, out in evaluator.predict_each(reader, datasets, lambda index, split: phase.step(line(index, split))):
        results.append({split: evaluate(labels, logits, evaluator.class_names)
                        for split, (labels, logits) in out.items()})
        for split, pair in out.items():
            outputs[split].append(pair)
    return results, outputs


def uniform(ingredients, progress: bool = False) -> WeightSet:
    """The uniform soup: the mean of all ingredients (float32 accumulation; non-float variables copied).

    Args:
        ingredients: `.weights.h5` paths, Keras models, `WeightSet`s or {key: array} dicts of one architecture.
        progress: one `[average] reading NAME (i/n)` line per ingredient on stderr.

    Returns:
        The soup as a `WeightSet` (write it with `ich_keras.soups.save`, load it with `load_into`).
    """
    return running_mean(ingredients, progress=progress)


def greedy(ingredients, model, val_data, *, metric: str = "accuracy", accept: str = "ge", class_names=None,
           ingredient_val=None, progress: bool = False, evaluator: Evaluator | None = None) -> SoupResult:
    """Greedy soup (the paper's Algorithm 1; model-soups with `accept="gt"`).

    Ingredients are sorted by their own validation `metric`, best first; the soup starts as the best one and each
    next candidate stays if the soup's validation metric does not drop (`ge`) or strictly improves (`gt`).

    Args:
        ingredients: `.weights.h5` paths, Keras models, `WeightSet`s or dicts of one architecture.
        model: a built Keras model of that architecture.
        val_data: re-iterable of (images, labels) validation batches.
        metric: a key of `ranking.METRIC_MODES` ("accuracy", "f1" (macro), "loss", ...).
        accept: "ge" or "gt".
        class_names: names in label order.
        ingredient_val: each ingredient's validation `evaluate` dict, if already computed.
        progress: one `[greedy] trying NAME on val (i/n)` line per candidate on stderr.
        evaluator: an `Evaluator` to reuse (so nothing recompiles across recipes).

    Returns:
        A `SoupResult`; `chosen` lists ingredient indices in the order they entered the soup.
    """
    check_selection(metric, accept)
    reader = Reader(ingredients)
    evaluator = evaluator or Evaluator(model, reader.layout, class_names)
    if ingredient_val is None:
        ingredient_val = _scored_alone(evaluator, reader, val_data, "greedy", progress)
    order = ranked(ingredient_val, metric)  # ties broken by lower val loss, as for the best single
    soup = reader.mix(None, order[0], 1.0)
    chosen, soup_val = [order[0]], ingredient_val[order[0]]
    steps = [_step(reader, order[0], soup_val[metric], True)]
    phase = Phase("greedy", len(order) - 1, progress)
    for index in order[1:]:
        phase.step(f"trying {reader.label(index)} on val")
        candidate = reader.mix(soup, index, 1.0 / (len(chosen) + 1))
        candidate_val = evaluator.evaluate(reader.weight_set(candidate), val_data)
        accepted = improves(candidate_val[metric], soup_val[metric], metric, accept)
        steps.append(_step(reader, index, candidate_val[metric], accepted))
        note("greedy", f"{reader.label(index)}: val {metric} {candidate_val[metric]:.4f}, "
                       f"{'kept' if accepted else 'dropped'}", progress)
        if accepted:
            soup, soup_val = candidate, candidate_val
            chosen.append(index)
    return SoupResult(reader.weight_set(soup), chosen, soup_val, steps,
                      {"metric": metric, "accept": accept, "order": order})


def pruned(ingredients, model, val_data, *, metric: str = "accuracy", accept: str = "gt", class_names=None,
           ingredient_val=None, progress: bool = False, evaluator: Evaluator | None = None) -> SoupResult:
    """Pruned soup: start from the uniform soup and drop ingredients whose removal improves validation.

    One pass over the ingredients, worst first by their own validation `metric`; an ingredient is removed if the
    soup without it is strictly better (`gt`, the default) or not worse (`ge`). At least one ingredient stays.

    Args and Returns: as `greedy`; `chosen` lists the kept ingredients in input order.
    """
    check_selection(metric, accept)
    reader = Reader(ingredients)
    evaluator = evaluator or Evaluator(model, reader.layout, class_names)
    if ingredient_val is None:
        ingredient_val = _scored_alone(evaluator, reader, val_data, "pruned", progress)
    soup = running_mean(reader.sources).flat
    soup_val = evaluator.evaluate(reader.weight_set(soup), val_data)
    kept = list(range(len(reader)))
    steps = []
    phase = Phase("pruned", len(reader), progress)
    for index in reversed(ranked(ingredient_val, metric)):
        if len(kept) == 1:
            break
        phase.step(f"trying without {reader.label(index)} on val")
        # mean of n without x: m + (m - x) / (n - 1) = m - (x - m) / (n - 1)
        candidate = reader.mix(soup, index, -1.0 / (len(kept) - 1))
        candidate_val = evaluator.evaluate(reader.weight_set(candidate), val_data)
        removed = improves(candidate_val[metric], soup_val[metric], metric, accept)
        steps.append(_step(reader, index, candidate_val[metric], removed))
        note("pruned", f"without {reader.label(index)}: val {metric} {candidate_val[metric]:.4f}, "
                       f"{'removed' if removed else 'kept'}", progress)
        if removed:
            soup, soup_val = candidate, candidate_val
            kept.remove(index)
    return SoupResult(reader.weight_set(soup), kept, soup_val, steps, {"metric": metric, "accept": accept})


def interpolate(pretrained, soup, model, data, alphas=(0.0, 0.25, 0.5, 0.75, 1.0), class_names=None,
                progress: bool = False, evaluator: Evaluator | None = None, name: str = "the soup") -> list[dict]:
    """WiSE-FT: scores W0 + alpha (W_soup - W0) for each alpha.

    Variables the pretrained weights lack, or hold with another shape (a new head), are taken from the soup.

    Args:
        pretrained: the initialisation W0 (path, model, `WeightSet` or dict).
        soup: the fine-tuned soup W_soup.
        model: a built Keras model of the soup's architecture.
        data: re-iterable of (images, labels) batches.
        alphas: interpolation coefficients (0 = pretrained, 1 = soup).
        class_names: names in label order.
        progress: one `[wise-ft] alpha A (i/n)` line per alpha on stderr.
        evaluator: an `Evaluator` to reuse.
        name: what the error calls the soup when an alpha's outputs are not finite (a UserError).

    Returns:
        One dict per alpha: {"alpha", "metrics" (an `evaluate` dict), "from_soup" (keys without a counterpart)}.
    """
    from ich_keras.soups.monosoup import aligned_pretrained

    soup_set = soup if isinstance(soup, WeightSet) else running_mean([soup])
    base, from_soup = aligned_pretrained(pretrained, soup_set)
    reader = Reader([soup_set])
    evaluator = evaluator or Evaluator(model, reader.layout, class_names)
    results = []
    phase = Phase("wise-ft", len(alphas), progress)
    for alpha in alphas:
        phase.step(f"alpha {alpha:g}")
        mixed = reader.mix(base.flat, 0, float(alpha))
        labels, logits = evaluator.predict(reader.weight_set(mixed), data)
        # Far from [0, 1] the mix can leave the range the weights compute in (a BatchNorm variance below zero):
        # no number is made of NaN outputs.
        check_finite_outputs(logits, f"The WiSE-FT point alpha = {alpha:g} of {name}",
                             "Nothing of this soup was written; drop that alpha from --alphas (soup.alphas).")
        metrics = evaluate(labels, logits, evaluator.class_names)
        results.append({"alpha": float(alpha), "metrics": metrics, "from_soup": from_soup})
    return results


def _scored_alone(evaluator: Evaluator, reader: Reader, val_data, label: str, progress: bool) -> list[dict]:
    """Each ingredient's `evaluate` dict on val, one `[label] scoring NAME on val (i/n)` line each."""
    results, _ = scored_each(evaluator, reader, {"val": val_data}, Phase(label, len(reader), progress),
                             lambda index, _: f"scoring {reader.label(index)} on val")
    return [r["val"] for r in results]


def _step(reader: Reader, index: int, value: float, accepted: bool) -> dict:
    return {"ingredient": index, "name": reader.name(index), "value": float(value), "accepted": bool(accepted)}
