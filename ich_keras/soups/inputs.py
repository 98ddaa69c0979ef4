"""What a soup command works on: the run (or a config's run-like view of it), the ingredients, and where the outputs go.

With a run directory, the model and data come from the run and the outputs go to RUN_DIR/soups/. Without one, the
model and data come from a config file, and the run the weights files were kept in (RUN/checkpoints/NAME) stands for
the run directory, so that `analyze RUN` finds the soups.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ich_keras import checkpoints, data, folder_lock, rundir, weights_origin
from ich_keras.config import load_config
from ich_keras.errors import UserError


def run_or_config(run_dir: str | None, config: str | None, overrides, progress: bool, home: Path):
    """The `Run` for a run directory, or a run-like view of a config for weights that did not come from fit (its data
    checked as fit checks it, with the check's count on stderr where that takes a while and `progress`), whose
    folder is `home` (`home_of`): results.json and provenance.json give the ingredients' paths relative to it."""
    if run_dir:
        folder_lock.check_not_held(run_dir, "souping")
        return rundir.load_run(run_dir, run_source(overrides))
    if not config:
        raise UserError("Pass a run directory or --config to say which model and data the weights belong to. "
                        "Received: neither")
    cfg = load_config(config, list(overrides))
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, source=data.resolve_source(cfg.data.source)))
    # Same split rule as fit (seeded, stratified), rebuilt from the config since there is no run directory.
    return rundir.Run(Path(home), cfg, data.build_splits(cfg.data, progress),
                      checkpoints.empty_manifest(cfg.checkpoint.keep))


def run_source(overrides) -> str | None:
    """With run directories, --set may say where their images are now (data.source=DIR) and nothing else."""
    source, rest = rundir.source_override(overrides)
    if rest:
        raise UserError("With a run directory the model and data come from its config.json; --set takes "
                        f"soup.KEY=VALUE, or data.source=DIR where the run's images are now. Received: {rest}")
    return source


def ingredients(run, explicit, command: str = "cook") -> list[Path]:
    """The weights files a command works on: `explicit` (--checkpoints; refused where one came from a run this one
    cannot be souped with), else the run's kept checkpoints (a kept file deleted by hand named, for `command`'s
    advice)."""
    if not explicit:
        run.check_kept(command=command)  # a kept file deleted by hand is named before anything is read
    paths = [Path(p) for p in explicit] if explicit else [c.path for c in run.checkpoints]
    if not paths:
        raise run.none_kept_error("pass the files to use with --checkpoints")
    if explicit:
        _check_soupable(paths, run)
    return paths


def _check_soupable(paths, run) -> None:
    """Refuses a weights file that came from another run this one cannot be souped with, as `--runs` refuses that
    run (`across_runs`): its head's rows would be averaged with, and scored as, other classes; another model, init
    or head seed is no fine-tune of this run's W0; and a run with other val or test images could have trained on
    the images these soups are chosen and scored on."""
    from ich_keras.soups import across_runs

    others = {}
    for path in paths:
        weights_origin.check_classes(path, run)
        other = weights_origin.origin_run(path)
        if other is not None and other.resolve() != Path(run.path).resolve():
            others.setdefault(other.resolve(), (other, path))
    digests = {}
    for other, path in others.values():
        apart = across_runs.differences(run, rundir.load_run(other), digests)
        if apart:
            what, a, b = apart[0]
            raise UserError(f"A weights file comes from a run that cannot be souped with {run.path}: its {what} "
                            f"differs ({b!r} vs {a!r}), as --runs would refuse that run ({other}). Received: {path}")


def check_output(output: Path, run_path: Path | None) -> None:
    """Refuses an --output that is a run directory, or the soups/ folder of a run other than the one souped
    (`run_path`; None for soups across runs): its own soups there would be replaced by these, and `analyze` of that
    run would take them for its own (their ingredients' names, epoch_NNN, are found there too). Also one holding a
    results.md that no soup command wrote (no method folder with its results.json beside it): it would be replaced."""
    from ich_keras.soups.registry import METHODS

    output = Path(output).resolve()
    table = output / "results.md"
    if table.is_file() and not any((output / method / "results.json").is_file() for method in METHODS):
        raise UserError(f"--output holds a results.md that no soup command wrote (no soup's folder beside it); "
                        f"cooking there would replace it. Choose another folder, or move the file. Received: "
                        f"{str(table)!r}")
    if (output / "config.json").is_file():
        raise UserError(f"--output is a run directory: its soups go in its soups/ folder (the default). Choose "
                        f"another folder. Received: output={str(output)!r}")
    owner = output.parent
    if (owner / "config.json").is_file() and (run_path is None or owner != Path(run_path).resolve()):
        raise UserError(f"--output is the soups folder of another run ({owner}): these soups would replace that "
                        f"run's own and be analysed as its soups. Choose another folder. Received: "
                        f"output={str(output)!r}")


def soups_dir(run_dir: str | None, weights: str | None) -> Path:
    """Where soups go without --output: RUN_DIR/soups/. Without RUN_DIR, the soups/ folder of the run the weights
    file belongs to (RUN/checkpoints/epoch_N.weights.h5 -> RUN/soups), else beside the file (else ./soups)."""
    if run_dir:
        return Path(run_dir) / "soups"
    if not weights:
        return Path("soups")
    run = weights_origin.run_of(weights)
    return (run if run is not None else Path(weights).parent) / "soups"


def home_of(weights, output: Path) -> Path:
    """The folder a command without RUN_DIR treats as its run (`load_run`): the run the first weights file was kept in,
    whose soups/ `analyze RUN` reads (paths stored relative to it resolve there), else the folder holding `output`."""
    run = weights_origin.run_of(weights[0]) if weights else None
    return run if run is not None else Path(output).parent
