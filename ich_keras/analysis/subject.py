"""What one analysis reads: a run directory, or a sweep's directory with its runs and the soups cooked across them.

    subject = load_subject("runs/demo")       # or "runs/sweep_c0", the output of `python -m ich_keras.sweep`
    subject.path        # soups/ and the default analysis/ lie here
    subject.run         # the model, classes, data and W0 (a sweep's first run: soups across runs share them)
    subject.runs        # the runs whose kept checkpoints and training curves the report covers
    subject.label(run)  # "" for the run directory itself; in a sweep the point's name, e.g. "seed=0"

Only `load_subject` tells a sweep (its sweep.json) from a run; the rest of the analysis asks this object.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ich_keras import atomic, cli, folder_lock
from ich_keras.config import recipe_table
from ich_keras.errors import UserError


@dataclass(frozen=True)
class Subject:
    """A run directory or a sweep's directory, loaded; see the module docstring.

    Attributes:
        path: the folder analysed (RUN_DIR or SWEEP_DIR).
        runs: its runs, the first giving the model and the data.
        cook_argv: the `python -m ich_keras.soup` arguments, before the method flags, that cook its soups again.
        across_runs: whether soups/ holds soups across runs (`soup cook --runs`), whose results.json paths are
            relative to the first run of their cook.
        missing: the names of the sweep's points whose run directory is gone (deleted or moved).
        recipe: the [soup] options the `cook_argv` command reads from a sweep's config and --set, which option flags
            need not repeat.
    """

    path: Path
    runs: tuple
    cook_argv: tuple[str, ...]
    across_runs: bool = False
    missing: tuple[str, ...] = ()
    recipe: dict = field(default_factory=dict)

    @property
    def run(self):
        return self.runs[0]

    def label(self, run) -> str:
        """How the report names `run`: "" for the run analysed on its own, else its path under `path`."""
        return "" if run.path == self.path else Path(os.path.relpath(run.path, self.path)).as_posix()

    def describe(self) -> str:
        """The report's first words: "Run `runs/demo`", or "Sweep `runs/sw` of 2 runs: seed=0, seed=1"."""
        labels = [self.label(run) for run in self.runs if self.label(run)]
        runs = f"{len(labels)} run{'s' * (len(labels) != 1)}"
        return f"Sweep `{self.path}` of {runs}: {', '.join(labels)}" if labels else f"Run `{self.path}`"

    def cook_command(self, methods=(), results=None) -> str:
        """The shell command that cooks the soups `methods` again, with the options their results.json dicts in
        `results` ({method: dict}) show they were cooked with where the command would not give them already
        (`soups.recorded`): soups that no one command can cook as they were get a command each, joined by &&. A
        MonoSoup (`monosoup_<rule>/`, one fine-tune's, made by `soup monosoup`) has no cook flag and no part in it."""
        from ich_keras.soups.recorded import cook_flags
        from ich_keras.soups.registry import METHODS

        cooked = [m for m in methods if m in METHODS]
        records = {m: results[m] for m in cooked if m in (results or {})}
        baseline = self._cook_baseline() if records else {}
        commands = cook_flags(records, baseline, cooked, self._w0_flag(baseline))
        return " && ".join(shlex.join(["python", "-m", "ich_keras.soup", *self.cook_argv,
                                       *map(cli.flag, names), *flags])
                           for names, flags in commands)

    def _cook_baseline(self) -> dict:
        """{SoupOptions field: value} that `cook_argv` cooks with where no option flag is given: the defaults, then
        the [soup] recipe a sweep's cook reads (its --config and --set), W0 from the run's model.init and the batch
        size from its training batch size (as `soup cook` takes them)."""
        from ich_keras.soups.runner import SoupOptions

        baseline = {**dataclasses.asdict(SoupOptions()), "pretrained": ""}
        if self.runs:
            config = self.run.config
            baseline.update(pretrained=config.model.init, batch_size=config.train.batch_size)
        return {**baseline, **self.recipe}

    def _w0_flag(self, baseline: dict):
        """A function from W0's path as provenance.json stores it (relative to the folder soups/ lies in, or
        absolute: `provenance.inside_or_absolute`) to the path --pretrained passes: the baseline's own where it is
        that file, so the command leaves --pretrained out."""
        def path_of(stored: str) -> str:
            path = self.path / stored if not Path(stored).is_absolute() else Path(stored)
            default = baseline.get("pretrained")
            return default if default and Path(default).resolve() == path.resolve() else str(path)
        return path_of

    def monosoup_root(self, results: dict) -> Path:
        """The folder a MonoSoup's provenance.json paths are relative to (`soup monosoup` records no "ingredients"
        in results.json), as it lies now: its recorded path from the soups folder (`ROOT_FROM_SOUPS`). Made before
        that was recorded, a guess: the run it was made with (across runs, the point of that name), or the soups
        folder it went into where it was made without one (`--no-eval` with --config)."""
        from ich_keras.soups.provenance import ROOT_FROM_SOUPS

        record = results.get("provenance") or {}
        if ROOT_FROM_SOUPS in record:
            relative = record[ROOT_FROM_SOUPS]
            if not isinstance(relative, str) or Path(relative).is_absolute():
                raise UserError(f"The provenance of the MonoSoup {results.get('label')!r} under {self.path / 'soups'}"
                                f" should give {ROOT_FROM_SOUPS} as a path relative to that folder; make it again "
                                f"with `soup monosoup`. Received: {ROOT_FROM_SOUPS}={relative!r}")
            # From the resolved folder, as `soup monosoup` computed it (a linked soups folder's ".." is its target's).
            return Path(os.path.normpath((self.path / "soups").resolve() / relative))
        root = record.get("root")
        if root and Path(root).resolve() == (self.path / "soups").resolve():
            return self.path / "soups"
        return self.path / Path(root or "").name if self.across_runs else self.path

    def monosoup_finetuned(self, results: dict) -> list[Path]:
        """[W1], the fine-tuned checkpoint of the MonoSoup whose results.json is `results`; [] where its provenance
        is not recorded (made before provenance.json). Made before its root was recorded from the soups folder, a
        soups folder moved with its run no longer matches the recorded root, so where W1 is not found beside the
        guessed root, it is looked for beside the other."""
        from ich_keras.soups.provenance import ROOT_FROM_SOUPS

        record = results.get("provenance") or {}
        ingredients = record.get("ingredients") or []
        if not ingredients:
            return []
        guessed = self.monosoup_root(results)
        if ROOT_FROM_SOUPS in record:  # no guess to hedge: the other root may hold a file of that name, not W1
            return [guessed / ingredients[0]["path"]]
        other = self.path if guessed == self.path / "soups" else self.path / "soups"
        candidates = [root / ingredients[0]["path"] for root in (guessed, other)]
        return [next((path for path in candidates if path.is_file()), candidates[0])]

    def monosoup_command(self, results: dict) -> str:
        """The shell command that makes the MonoSoup of `results` (its results.json) again, with its W0, rule and R,
        from the run's best kept checkpoint on val accuracy (the W1 it was made from is gone); scored unless it was
        made with --no-eval."""
        from ich_keras.ranking import ranked

        root = self.monosoup_root(results)
        run = next((r for r in self.runs if r.path.resolve() == root.resolve()), self.run)
        kept = run.checkpoints
        finetuned = str(kept[ranked([c.val for c in kept], "accuracy")[0]].path) if kept else "W1.weights.h5"
        w0 = Path(((results.get("provenance") or {}).get("pretrained") or {}).get("path", "W0.weights.h5"))
        argv = ["python", "-m", "ich_keras.soup", "monosoup", str(run.path), "--pretrained",
                str(w0 if w0.is_absolute() else root / w0), "--finetuned", finetuned, "--rule", results["rule"]]
        argv += ["--R", str(results["R"])] if results["rule"] == "variance" else []
        argv += [] if "test" in results else ["--no-eval"]
        argv += ["--output", str(self.path / "soups")] if self.across_runs else []
        return shlex.join(argv)

    def missing_runs(self, paths) -> list[str]:
        """The names of the points of `missing` whose run directory held any of `paths`."""
        resolved = [Path(p).resolve() for p in paths]
        return [name for name in self.missing
                if any(p.is_relative_to((self.path / name).resolve()) for p in resolved)]

    def paths_root(self, results: dict, soups: dict | None = None) -> Path:
        """The folder soups/<method>/results.json's ingredient paths are relative to (`publish.stored_path`): the
        run, or across runs the first run of that cook, found by name here (the sweep may have moved since).

        Args:
            results: that results.json dict.
            soups: {method: results.json dict} of every soup there, which the error's command cooks again as they
                were cooked (default: this one alone).
        """
        if not self.across_runs:
            return self.path
        first = self.path / Path(results.get("run_dir", "")).name
        # A point's run deleted since: its ingredients read as gone, and the analysis names it (`missing_runs`).
        if not (first / "config.json").is_file() and first.name not in self.missing:
            soups = soups or {results.get("method"): results}
            raise UserError(f"Soups under {self.path / 'soups'} were cooked from the runs of "
                            f"{results.get('run_dir')!r}, which is not a run of this sweep; cook them again with "
                            f"`{self.cook_command(sorted(soups), soups)}`. Received: sweep_dir={str(self.path)!r}")
        return first


def load_subject(path, data_source: str | None = None) -> Subject:
    """Loads a run directory, or the sweep whose sweep.json lies in `path`.

    A sweep's runs are its points that finished (their run directory holds results.json), which must share model,
    image size, init, classes and val/test images (`soups.across_runs.check_compatible`), and its soups are those
    across them in SWEEP_DIR/soups: without them it is a UserError giving the command that cooks them.

    Args:
        path: RUN_DIR or SWEEP_DIR.
        data_source: where the runs' images are now, if not in their config.json (`Run.images_at`).
    """
    from ich_keras import sweeps
    from ich_keras.rundir import load_run
    from ich_keras.soups import across_runs, runner

    path = Path(path)
    if not (path / sweeps.SWEEP_FILE).is_file():
        folder_lock.check_not_held(path, "analysing")
        return Subject(path, (load_run(path, data_source),), (str(path),))
    record = atomic.read_json(path / sweeps.SWEEP_FILE)
    points = [path / p["directory"] for p in record.get("points", [])]
    # Finished points only (results.json), as the sweep cooks its soups: a point that failed (diverged, killed) may
    # hold no checkpoint and no epoch row, and the cook command below would stop on it.
    finished = [d for d in points if sweeps.run_status(d) == "done"]
    missing = tuple(d.name for d in points if not d.is_dir())
    if not finished:
        raise UserError(f"No point of the sweep has finished yet (results.json): run the sweep first. Received: "
                        f"sweep_dir={str(path)!r}")
    for name in missing:
        print(f"[analyze] not analysed: {name}, whose run directory {path / name} is missing (deleted or moved)",
              file=sys.stderr)
    unfinished = [d.name for d in points if d not in finished and d.name not in missing]
    if unfinished:
        print(f"[analyze] not analysed: {', '.join(unfinished)}, not finished (no results.json)", file=sys.stderr)
    for directory in finished:
        folder_lock.check_not_held(directory, "analysing")
    runs = tuple(load_run(directory, data_source) for directory in finished)
    across_runs.check_compatible(runs)
    argv = tuple(sweeps.cook_argv(record["config"], record.get("set", []), None, finished, path, False))
    # The sweep's [soup] recipe, as the cook command reads it: the flags it gives need not repeat it.
    config = Path(record["config"])
    recipe = recipe_table(runner.SoupOptions, "soup", config, record.get("set", [])) if config.is_file() else {}
    subject = Subject(path, runs, argv, across_runs=True, missing=missing, recipe=recipe)
    if not any((path / "soups").glob("*/results.json")):
        raise UserError(f"The sweep holds no soups across its runs (soups/) to analyse: cook them with "
                        f"`{subject.cook_command()}`. Received: sweep_dir={str(path)!r}")
    return subject
