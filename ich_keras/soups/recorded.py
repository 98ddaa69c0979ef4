"""The cook options a soup was cooked with, read back from its results.json (and the provenance record in it), so
`analyze` can give the command that cooks stale soups again as they were cooked.

    found = recorded_options(results)          # {SoupOptions field: value}, e.g. {"greedy_metric": "loss", ...}
    commands = cook_flags({"greedy": results, "ties": other}, baseline)   # [(methods, flags)]: one per command

Only what the soups' own files record is read: the selection rule, the significance test's resamples and seed, the
method's parameters (learned soup, merges), BatchNorm recalibration, the WiSE-FT alphas and W0. The batch size is
read where it decided the soup (the learned soup's steps, BN recalibration's batches); elsewhere it only sets how
many images are scored at once, and the command leaves it to cook's default, the run's. Soups cooked before it was
recorded get that default too.
"""

from __future__ import annotations

import dataclasses

from ich_keras import cli
from ich_keras.soups import registry
from ich_keras.soups.runner import SoupOptions

FLAGS = {"lam": "--lambda"}  # the other fields' flags are their names with dashes


def recorded_options(results: dict) -> dict:
    """{SoupOptions field: value} for the options that decided the soup whose results.json dict is `results`; a
    field it does not record (a soup written before provenance.json) is absent. "pretrained" is W0's path as
    provenance.json stores it (relative to the folder soups/ lies in, or absolute)."""
    method = results.get("method")
    record = results.get("provenance") or {}
    parameters = record.get("parameters") or {}
    found = {}
    # Every results.json carries the greedy rule (it picks the best single checkpoint, the significance baseline);
    # pruned's carries its own acceptance rule instead.
    selection = results.get("selection") or {}
    if "metric" in selection:
        found["greedy_metric"] = selection["metric"]
    if "accept" in selection:
        found["prune_accept" if method == "pruned" else "accept"] = selection["accept"]
    bootstrap = (results.get("significance") or {}).get("bootstrap") or {}
    found.update({f"bootstrap_{key}": bootstrap[key] for key in ("resamples", "seed") if key in bootstrap})
    recorded = registry.TABLE[method].parameters if method in registry.TABLE else {}
    found.update({field: parameters[key] for key, field in recorded.items() if key in parameters})
    if method != "soft_voting":  # soft voting is neither recalibrated nor interpolated, whatever the flags
        found["recalibrate_bn"] = bool(results.get("bn_recalibrated"))
        if found["recalibrate_bn"]:
            found.update({field: parameters[key] for key, field in (("bn_batches", "bn_batches"),
                                                                    ("bn_batch_size", "batch_size"))
                          if key in parameters})
        found["interpolate"] = bool(results.get("interpolation"))
        if found["interpolate"]:
            found["alphas"] = tuple(float(point["alpha"]) for point in results["interpolation"])
    w0 = (record.get("pretrained") or {}).get("path")
    if w0:
        found["pretrained"] = w0
    return found


def cook_flags(results: dict, baseline: dict, methods=None, w0=str) -> list[tuple[list[str], list[str]]]:
    """The `soup cook` method flags and option flags that cook the soups of `results` again as they were cooked.

    Soups cooked by different commands may need options one command cannot give both (greedy on loss, a uniform
    soup scored against the best checkpoint on accuracy): each goes into the first command that can cook it as it
    was, else into a new one.

    Args:
        results: {method: results.json dict}.
        baseline: {SoupOptions field: value} the command cooks with where no option flag is given (the defaults,
            the recipe of its --config, W0 from model.init).
        methods: the methods to cook, in order (default: those of `results`); one without results.json adds its
            flag to the first command and needs nothing.
        w0: turns W0's path as provenance.json stores it into the path the command passes, comparable with
            baseline["pretrained"].

    Returns:
        [(method names, option flags)], one pair per command.
    """
    groups: list[tuple[list[str], dict]] = []
    for method in list(results) if methods is None else methods:
        needs = _needs(method, results.get(method) or {}, baseline, w0)
        group = next((g for g in groups if all(_satisfiable([*g[1].get(f, []), n]) for f, n in needs.items())), None)
        if group is None:
            group = ([], {})
            groups.append(group)
        group[0].append(method)
        for field, need in needs.items():
            group[1].setdefault(field, []).append(need)
    order = [f.name for f in dataclasses.fields(SoupOptions)]
    return [(names, [flag for field in order if field in needs for flag in _flag(field, needs[field])])
            for names, needs in groups] or [([], [])]


def _needs(method: str, results: dict, baseline: dict, w0) -> dict:
    """{field: (value the soup was cooked with, whether the command's baseline gives it already)}."""
    found = recorded_options(results) if results else {}  # no results.json: nothing recorded, nothing needed
    if "pretrained" in found:
        found["pretrained"] = w0(found["pretrained"])
    record = results.get("provenance") or {}
    count = len(record.get("ingredients") or results.get("ingredients") or ())
    needs = {}
    for field, value in found.items():
        default = baseline[field]
        if field == "lam" and default is None:  # lambda's default depends on the merge and the ingredient count
            default = registry.default_lambda(method, count) if count else None
        needs[field] = (value, value == default)
    return needs


def _satisfiable(needs: list) -> bool:
    """Whether one command gives every soup of `needs` ((value, baseline gives it) each) its value: all take the
    baseline's, or one flag gives them all the same value."""
    return all(ok for _, ok in needs) or all(value == needs[0][0] for value, _ in needs)


def _flag(field: str, needs: list) -> list[str]:
    """The flag giving `field` the value `needs` agree on ([] where the baseline gives it)."""
    value = needs[0][0]
    if all(ok for _, ok in needs) or value is None:  # None (bn_batches: all) has no flag; it is the default
        return []
    flag = FLAGS.get(field, cli.flag(field))
    if isinstance(value, bool):
        return [flag if value else "--no-" + flag[2:]]
    return [flag, *map(str, value)] if isinstance(value, tuple) else [flag, str(value)]
