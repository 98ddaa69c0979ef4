"""The run a weights file came from, and the check that keeps weights of a run with other classes out of another
run's soups, predictions and exports: with the same class count they fit the model, and their head's rows would be
read as other classes without a word.

A checkpoint comes from the run that kept it (RUN/checkpoints/NAME beside RUN/config.json). A soup comes from the
run it was cooked on: the run whose soups folder holds it (RUN/soups/METHOD/NAME), else, wherever `--output` put
it, the run that kept its first ingredient, as its provenance.json records (across runs they all share classes);
once those runs have moved, the classes its provenance.json lists. Weights of unknown origin (a converted W0, a file
copied elsewhere) are taken as they are.
"""

from __future__ import annotations

import os
from pathlib import Path

from ich_keras import atomic
from ich_keras.errors import UserError


def run_of(weights) -> Path | None:
    """The run directory a weights file was kept in (RUN/checkpoints/NAME beside RUN/config.json), else None."""
    folder = Path(weights).expanduser().parent
    if folder.name != "checkpoints":  # `epoch_012.weights.h5` given from inside checkpoints/: its folder is "."
        # Made absolute, not resolved: a linked checkpoint belongs to the run it is linked into.
        folder = Path(os.path.abspath(folder))
    return folder.parent if folder.name == "checkpoints" and _is_run(folder.parent) else None


def origin_run(weights) -> Path | None:
    """The run a checkpoint was kept in or a soup was cooked on (see the module docstring), else None."""
    kept_in = run_of(weights)
    if kept_in is not None:
        return kept_in
    method_folder = _method_folder(weights)
    if method_folder.parent.name == "soups" and _is_run(method_folder.parent.parent):
        return method_folder.parent.parent
    try:
        record = _provenance(weights)
        first = Path(record["root"]) / record["ingredients"][0]["path"]
    except (KeyError, IndexError, TypeError):  # no record, or a damaged one: it says nothing of the origin
        return None
    return run_of(first)


def other_classes(weights, class_names) -> tuple[Path, list[str]] | None:
    """(where the classes of `weights`' outputs are recorded, those classes) where they are not `class_names`; None
    where they are, or where nothing says. Recorded in the run it came from (`origin_run`'s classes.json), else, for
    a soup cooked elsewhere whose runs have moved since, in its provenance.json."""
    other = origin_run(weights)
    if other is not None and (other / "classes.json").is_file():
        where, classes = other, list(atomic.read_json(other / "classes.json"))
    else:
        record = _provenance(weights)
        classes = record.get("classes") if isinstance(record, dict) else None
        where = _method_folder(weights) / "provenance.json"
        if not isinstance(classes, list):
            return None
    return None if classes == list(class_names) else (where, classes)


def _method_folder(weights) -> Path:
    return Path(os.path.abspath(Path(weights).expanduser().parent))


def _provenance(weights) -> dict | None:
    """The provenance.json beside a soup, or None where there is none or it cannot be read."""
    path = _method_folder(weights) / "provenance.json"
    try:
        return atomic.read_json(path) if path.is_file() else None
    except UserError:
        return None


def check_classes(weights, run) -> None:
    """Refuses `weights` when the run it came from lists other classes than `run`, naming both."""
    origin = other_classes(weights, run.class_names)
    if origin is not None:
        other, classes = origin
        raise UserError(f"The weights come from a run of other classes ({other}: {classes}) than the run they are "
                        f"used with ({run.path}: {list(run.class_names)}); their outputs would be read as this run's "
                        f"classes. Use weights of this run. Received: {weights}")


def _is_run(folder: Path) -> bool:
    return (folder / "config.json").is_file()
