"""A sweep's points checked and run, for `python -m ich_keras.sweep` (its docstring says what a sweep is).

    configs = check_points("configs/x.toml", [], sweeps.expand(grid))   # {point name: Config}; a UserError first
    check_soupable(configs)                                             # one model, init, classes, val and test
    write_sweep_file(output, "configs/x.toml", [], grid, points)        # OUTPUT/sweep.json
    failures = run_points(points, configs, output)                      # trains, resumes or skips each

Each check runs before any point trains; each point is a run directory that `fit --resume` could continue alone.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ich_keras import atomic, interrupts, sweeps
from ich_keras.errors import UserError

# Sections that do not change what a run trains: a sweep started again with other values there keeps its runs.
UNTRAINED_SECTIONS = ("soup", "analysis", "log")
# How long a stopped --parallel sweep waits for its shards to stop (a fit ends its epoch's files and its W&B run)
# before it kills them; under the 30 s a scheduler (Slurm, Kubernetes) leaves between SIGTERM and SIGKILL.
SHARD_STOP_S = 20.0


def check_points(config: str, sets: list[str], points: list[sweeps.Point]) -> dict:
    """Loads every point's config (unknown keys, wrong types, bad values, an unknown model or an image size it
    cannot take, a missing data source or init file fail here, before any training).

    Returns:
        {point name: validated Config}.
    """
    from ich_keras.config import COMMAND_SECTIONS, load_config
    from ich_keras.run_start import check_inputs

    configs = {}
    for point in points:
        for key in point.values:
            if key.split(".")[0] in COMMAND_SECTIONS:
                raise UserError(f"A grid key must be a training config key; [{key.split('.')[0]}] is another "
                                f"command's table. Received: key={key!r}")
        try:
            cfg = configs[point.name] = load_config(config, [*sets, *point.overrides], passed_on=("soup",))
            check_inputs(cfg)
        except ValueError as error:
            if _fails_without_the_grid(config, sets, error):  # a --set typo is not the grid's
                raise UserError(str(error)) from None
            raise UserError(f"Grid point {point.index} ({point.name}) is not a valid config: {error}") from None
    return configs


def _fails_without_the_grid(config: str, sets: list[str], error: ValueError) -> bool:
    """Whether the config and --set alone fail with `error`'s message (only the same error is theirs: a base that
    fails alone may be one the grid completes)."""
    from ich_keras.config import load_config
    from ich_keras.run_start import check_inputs

    try:
        check_inputs(load_config(config, sets, passed_on=("soup",)))
    except ValueError as alone:
        return str(alone) == str(error)
    return False


def check_soupable(configs: dict, progress: bool = False) -> None:
    """Raises a UserError when the points' runs could not be souped together: they start apart (one model, image
    size, pretrained init and new head: `soups.across_runs.start_differences`), or their data settings give them
    other classes or val / test images; found after every point trained, the soups failed. `progress`: say so
    while the splits are built."""
    from ich_keras.soups import across_runs

    (first_name, first), digests, built = next(iter(configs.items())), {}, {}
    for name, cfg in configs.items():
        differences = across_runs.start_differences(first, cfg, digests)
        if differences:
            what, a, b = differences[0]
            raise UserError(f"The grid's points differ in their {what}, so their runs cannot be souped together (a "
                            f"soup averages fine-tunes of one model, image size, init and new head): pass --no-soup "
                            f"to train them without soups, or sweep each on its own. Received: {a!r} at "
                            f"{first_name}, {b!r} at {name}")
        differences = across_runs.split_differences(first, cfg)
        if not differences:  # the same settings build the same splits: nothing to read
            continue
        # Settings that may carve other splits need not (a val_count equal to what val_fraction gives, near copies
        # looked for in data holding none): the splits are built, as fit builds them, each data section once.
        if progress and not built:
            print(f"Building the splits of the grid's points to compare them (their {differences[0][0]} differs)",
                  flush=True)
        apart = across_runs.built_split_differences(first.data, cfg.data, built, progress)
        if apart:
            values = "; ".join(f"{key}={a!r} at {first_name}, {key}={b!r} at {name}" for key, a, b in differences)
            what, a, b = apart[0]
            raise UserError(f"The grid's points differ in data settings that decide their classes or val and test "
                            f"images, so their runs cannot be souped together (the soups are chosen on one val "
                            f"split and scored on one test split, which another point's run could have trained on): "
                            f"pass --no-soup to train them without soups, or sweep each on its own. Received: "
                            f"{values}; their {what} differs: {a} at {first_name}, {b} at {name}")


def in_earlier_order(grid: dict, output: Path) -> dict:
    """`grid` with its keys in the order of the sweep already in `output` where it has the same keys: the point names
    follow the key order, and the same points under other names would all train again beside the first ones."""
    path = output / sweeps.SWEEP_FILE
    earlier = list(atomic.read_json(path).get("grid", {})) if path.is_file() else []
    if sorted(earlier) != sorted(grid) or earlier == list(grid):
        return grid
    return {key: grid[key] for key in earlier}


def with_resolved_paths(base: dict) -> dict:
    """A config table (`read_toml`'s) with data.source and model.init resolved against the working directory, as fit
    resolves them: the same sweep continued from another directory is the same; for model.init the same spelling
    naming another file is not (data.source is not compared: `_without_data_source`)."""
    from ich_keras.data import absolute_source

    resolved = {section: dict(table) if isinstance(table, dict) else table for section, table in base.items()}
    source = resolved.get("data", {}).get("source")
    if isinstance(source, str) and source:
        resolved["data"]["source"] = absolute_source(source)
    init = resolved.get("model", {}).get("init")
    if isinstance(init, str) and init:
        resolved["model"]["init"] = str(Path(init).expanduser().resolve())
    return resolved


def write_sweep_file(output: Path, config: str, sets: list[str], grid: dict, points: list[sweeps.Point]) -> None:
    """Writes OUTPUT/sweep.json; a sweep.json of another base config (or --set) is a UserError naming it."""
    from ich_keras.config import read_toml

    typed = {k: v for k, v in read_toml(config, sets).items() if k not in UNTRAINED_SECTIONS}
    base = with_resolved_paths(typed)
    path = output / sweeps.SWEEP_FILE
    if path.is_file():
        previous = atomic.read_json(path)
        # A sweep.json written before paths were resolved holds them as typed then. Where the images are is not
        # compared (they moved: --set data.source=DIR, as for fit --resume); that they build the same classes and
        # val / test images is, unless --no-soup (`check_started_points`).
        if _without_data_source(previous.get("base")) not in map(_without_data_source, (base, typed)):
            raise UserError(f"The sweep directory holds a sweep of another config or --set; its runs would mix. "
                            f"Pick another --output. Received: {sweeps.SWEEP_FILE}={str(path)!r}")
        names = {p.name for p in points}
        dropped = [p["name"] for p in previous.get("points", []) if p.get("name") not in names]
        if dropped:  # another grid is the user's choice; its soups leave the earlier points out
            print(f"{sweeps.SWEEP_FILE} held another grid: {len(dropped)} earlier point(s) ({', '.join(dropped)}) stay "
                  f"in {output} and are left out of this grid's soups", flush=True)
    atomic.write_json(path, {
        # Resolved: `analyze SWEEP_DIR` gives the command that cooks the soups from any working directory.
        "config": str(Path(config).resolve()), "set": sets, "grid": grid, "base": base,
        "points": [{"index": p.index, "name": p.name, "directory": p.name, "values": p.values} for p in points],
    })


def _without_data_source(base: dict | None) -> dict | None:
    """A sweep.json's base config without data.source."""
    if base is None:
        return None
    return {**base, "data": {k: v for k, v in base.get("data", {}).items() if k != "source"}}


def check_started_points(configs: dict, output: Path, progress: bool = False) -> None:
    """Raises a UserError when the points still to start would build other classes or val / test images than those
    a point's run already holds (its split lists): the data folder changed since (a class folder added, images
    moved in or out), and their runs could not be souped with the earlier ones (found after they trained)."""
    from ich_keras import split_lists
    from ich_keras.soups import across_runs

    status = {name: sweeps.run_status(output / name) for name in configs}
    started = [name for name in configs if status[name] != "start"]
    to_start = [name for name in configs if status[name] == "start"]
    if not (started and to_start):
        return
    cfg = configs[to_start[0]].data
    built = across_runs.build_as_fit(cfg, progress)
    apart = across_runs.splits_apart(split_lists.read_splits(output / started[0]), built)
    if apart:
        what, a, b = apart[0]
        raise UserError(f"The data folder changed since point {started[0]} started: the points still to start would "
                        f"differ in their {what} ({b}; its run has {a}), so their runs could not be souped with it. "
                        f"Put the data back as it was, or pass --no-soup to train them without soups. Received: "
                        f"data.source={cfg.source!r}")


def run_point(cfg, directory: Path, quiet: bool = False) -> str:
    """Trains, resumes or skips one point's run (printing as `log.verbose = 0` if `quiet`); returns what it did
    ("skipped", "resumed", "trained")."""
    status = sweeps.run_status(directory)
    if status == "done":
        return "skipped"
    from ich_keras.train import run

    if status == "resume":
        _note_the_runs_own_log_settings(cfg, directory)
    run(cfg, directory, resume_run=status == "resume", quiet=quiet)
    return "resumed" if status == "resume" else "trained"


def _note_the_runs_own_log_settings(cfg, directory: Path) -> None:
    """Prints the log settings a resumed point keeps from its config.json where this command's --set asks for other
    ones (a resume takes only `ich_keras.run_start.RESUME_KEYS`: of the log, its verbosity)."""
    from ich_keras.run_start import RESUME_KEYS

    kept = atomic.read_json(directory / "config.json").get("log", {})
    resumable = {key.split(".", 1)[1] for key in RESUME_KEYS if key.startswith("log.")}
    asked = {key: value for key, value in dataclasses.asdict(cfg.log).items() if key not in resumable}
    differ = [f"log.{key}={kept[key]!r}" for key, value in asked.items() if key in kept and kept[key] != value]
    if differ:
        print(f"  resumes with its own {', '.join(differ)} (config.json); the sweep's log settings apply to the "
              f"points that start", flush=True)


def run_points(points, configs: dict, output: Path, quiet: bool = False) -> list[str]:
    """Runs the points one after another; a user error stops its point only.

    Returns:
        The failures, one line each ("name: message").
    """
    failures = []
    for number, point in enumerate(points, 1):
        directory = output / point.name
        print(f"[{number}/{len(points)}] point {point.index}: {directory}", flush=True)
        try:
            done = run_point(configs[point.name], directory, quiet)
        except UserError as error:
            failures.append(f"{point.name}: {error}")
            print(f"  failed: {error}", flush=True)
            continue
        print(f"  {done}", flush=True)
    return failures


def accelerators() -> list[str]:
    """The accelerator ids a --parallel sweep hands out ([] on CPU or with one device).

    Counted in a sub-process: JAX reserves most of each GPU's memory in the process that first touches it, and the
    runs' sub-processes need it.
    """
    code = "import jax; d = jax.devices(); print(0 if d[0].platform == 'cpu' else len(d))"
    count = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    if count < 2:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else [str(i) for i in range(count)]
    return ids[:count]


def run_parallel(argv: list[str], devices: list[str], output: Path) -> list[str]:
    """Runs one shard per device in sub-processes and waits for all; returns a line per failed shard. Stopped by
    Ctrl-C or SIGTERM, it stops the shards (`stop_shards`) and raises the interrupt again."""
    children = []
    try:
        for (env, args), device in zip(sweeps.shard_commands(argv, devices), devices):
            log = output / f"parallel_{len(children)}of{len(devices)}.log"
            print(f"device {device}: {' '.join(args[-3:-1])} -> {log}", flush=True)
            with open(log, "w") as stream:
                # A session of their own: a Ctrl-C at the terminal reaches them once, forwarded by this process,
                # not a second time straight from the terminal while they clean up after the first.
                children.append((log, subprocess.Popen([sys.executable, "-m", "ich_keras.sweep", *args],
                                                       env={**os.environ, **env}, stdout=stream,
                                                       stderr=subprocess.STDOUT, start_new_session=True)))
        return [f"{log}: exit status {code}" for log, child in children if (code := child.wait())]
    except KeyboardInterrupt as interrupt:
        stop_shards(children, signal.SIGTERM if isinstance(interrupt, interrupts.Terminated) else signal.SIGINT)
        raise


def stop_shards(children: list[tuple[Path, subprocess.Popen]], signum: int) -> None:
    """Sends `signum` to the shards still running and waits up to `SHARD_STOP_S` for them (each ends as a stopped
    sweep does, its run resumable); kills those still running then, or at once on another Ctrl-C or SIGTERM.

    Args:
        children: (log file, process) of each shard started.
        signum: the signal that stopped this process (SIGINT or SIGTERM).
    """
    for _, child in children:
        if child.poll() is None:
            child.send_signal(signum)
    deadline = time.monotonic() + SHARD_STOP_S
    try:
        for _, child in children:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        pass
    for log, child in children:
        if child.poll() is None:
            child.kill()  # its run loses the epoch under way; the state of the last finished one is whole
            child.wait()
            print(f"{log}: the shard did not stop within {SHARD_STOP_S:g} s of the signal; killed", file=sys.stderr)
