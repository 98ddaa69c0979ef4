"""The soup command's merges from a pretrained W0 (Model Stock, task arithmetic, TIES, DARE) and SLERP.

`cook` turns a method name and the command's options into the merged weights; the runner scores and writes them
like any other soup. None of these looks at validation data, except SLERP's choice of its two ingredients (the
two best on val, ties broken by val loss). `pretrained_weights` reads W0 once per command, for every method that
uses it (WiSE-FT's interpolation too), resized to the ingredients' image size as fit resized it.
"""

from __future__ import annotations

from pathlib import Path

from ich_keras import cli
from ich_keras.errors import UserError
from ich_keras.init_weights import resized_to
from ich_keras.ranking import ranked
from ich_keras.weight_layout import check_pretrained_fits
from ich_keras.soups.registry import MERGES, NEEDS_PRETRAINED, TABLE, parameters
from ich_keras.soups.model_stock import model_stock
from ich_keras.soups.slerp import check_t, slerp
from ich_keras.soups.task_vectors import check_density, check_rate, dare, task_arithmetic, ties
from ich_keras.weight_files import ModelSource

def no_pretrained(what: str) -> str:
    """The message for a method that needs W0 and got none: `what` needs it, then where to give it."""
    return (f"{what}: pass soup's --pretrained FILE, or set model.init or soup.pretrained in the config "
            "(--set soup.pretrained=FILE). Received: no pretrained weights")


def check_options(methods, options, n: int | None) -> None:
    """The merges among `methods` checked against the options and the `n` ingredients (None: not known yet) before
    anything is scored: W0 where a merge needs it, enough ingredients, parameters in range (a `UserError` naming
    the option)."""
    for method in (m for m in methods if m in MERGES):
        flag = cli.flag(method)
        if method in NEEDS_PRETRAINED and not options.pretrained:
            raise UserError(no_pretrained(f"{flag} needs the pretrained weights W0"))
        if n is not None and n < TABLE[method].min_ingredients:
            raise UserError(f"{flag} needs at least {TABLE[method].min_ingredients} checkpoints. "
                            f"Received: {n} checkpoint(s)")
    if "ties" in methods:
        check_density(options.ties_density)
    if "dare" in methods:
        check_rate(options.dare_rate)
    if "slerp" in methods:
        check_t(options.slerp_t)


def pretrained_users(options) -> list[str]:
    """The flags of the requested methods that use W0 (`options.pretrained`): the merges from it and --interpolate."""
    users = [cli.flag(m) for m in options.methods if m in NEEDS_PRETRAINED]
    return users + (["--interpolate"] if options.interpolate else [])


def pretrained_weights(path, model) -> tuple:
    """W0 as the run started from it: the file `path` with its arrays of another image size resized to `model`'s.

    fit resized a `model.init` of another image size that way (`init_weights.load_weights`); the soups do the same,
    once per command, in memory, with a line saying so. W0's head stays as in the file. A W0 of another
    architecture is a UserError naming it and its first differing layer, raised here, before the ingredients are
    scored (each method would find it only when it merges).

    Args:
        path: W0's `.weights.h5`, or None/"" when no method uses it.
        model: a built model of the ingredients' architecture and image size.

    Returns:
        (W0 as a weight source, None without `path`; `init_weights.resized_to`'s notes, [] when nothing was resized).
    """
    if not path:
        return None, []
    w0, notes = resized_to(model, path)
    check_pretrained_fits(w0.layout(), ModelSource(model).layout(), f"the ingredients' model {model.name!r}")
    if notes:
        print(f"W0 {path}: {'; '.join(notes)} for the ingredients, as fit resized its model.init", flush=True)
    return w0, notes


def cook(method: str, ingredients, options, val_results: list[dict], pretrained=None) -> tuple:
    """Merges `ingredients` with `method`.

    Args:
        method: one of `MERGES`.
        ingredients: `.weights.h5` files or weight sources (`weights.as_source`).
        options: the runner's `SoupOptions` (pretrained, lam, ties_density, dare_rate, dare_seed, slerp_t,
            greedy_metric).
        val_results: each ingredient's validation `evaluate` dict (SLERP picks its pair by them).
        pretrained: W0 as `pretrained_weights` gives it; default the file `options.pretrained` as it is.

    Returns:
        (weights, indices of the ingredients used, info for results.json, per-tensor stats for layers.json).
    """
    check_options([method], options, len(ingredients))
    w0 = options.pretrained if pretrained is None else pretrained
    chosen = list(range(len(ingredients)))
    settings = parameters(method, options, len(ingredients))
    if method == "slerp":
        chosen = ranked(val_results, options.greedy_metric)[:2]
        weights, report = slerp(ingredients[chosen[0]], ingredients[chosen[1]], settings["t"])
    elif method == "model_stock":
        weights, report = model_stock(ingredients, w0)
    elif method == "task_arithmetic":
        weights, report = task_arithmetic(ingredients, w0, settings["lambda"], options.progress)
    elif method == "ties":
        weights, report = ties(ingredients, w0, settings["density"], settings["lambda"])
    elif method == "dare":
        weights, report = dare(ingredients, w0, settings["rate"], settings["seed"], settings["lambda"])
    else:
        raise ValueError(f"Unknown merge; expected one of {MERGES}. Received: method={method!r}")
    layers = report.get("layers", {})
    info = {**settings, "new_head": report.get("new_head", []),
            "running_statistics_averaged": report.get("running_statistics", 0)}
    if method in NEEDS_PRETRAINED:
        info["pretrained"] = Path(options.pretrained).resolve().as_posix()  # as typed, it would depend on the cwd
    if method == "model_stock" and layers:
        ratios = [stats["t"] for stats in layers.values()]
        info["t"] = {"min": min(ratios), "mean": sum(ratios) / len(ratios), "max": max(ratios)}
    return weights, chosen, info, layers
