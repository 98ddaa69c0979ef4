"""Fine-tune one config over a grid of overrides, one run directory per point, then soup across the runs.

    python -m ich_keras.sweep --config configs/x.toml --grid train.learning_rate=[1e-4,3e-5] --grid train.seed=[0,1]
    python -m ich_keras.sweep --config configs/x.toml --grid train.seed=[0,1,2] --soup uniform greedy model_stock
    python -m ich_keras.sweep --config configs/x.toml --grid train.seed=[0,1,2,3] --shard 1/4   # one machine's share
    python -m ich_keras.sweep --config configs/x.toml --grid train.seed=[0,1,2,3] --parallel    # one run per GPU

The grid is the cartesian product of the --grid lists (TOML lists; bare words are strings). Each point runs in
OUTPUT/<name> (default OUTPUT: runs/sweep_<config stem>), named by its values, e.g. learning_rate=0.0001,seed=0;
OUTPUT/sweep.json lists the points and their directories. Every point's config is checked before anything trains,
and unless --no-soup that the runs could be souped together (one model, image size, init and new head; one
class list and the same val and test images).
Started again, a sweep skips finished runs (results.json), resumes killed ones (state/) and restarts failed starts.
A point that fails with a user error (e.g. a diverged learning rate) is reported and the others still run.

Runs go one after another in this process. --parallel, when several accelerators are visible (jax.devices() longer
than 1, not CPU), starts one sub-process per device with CUDA_VISIBLE_DEVICES set, each running every N-th point,
its output in OUTPUT/parallel_<I>of<N>.log; Ctrl-C or SIGTERM to this process stops them too. --only I or
--shard I/N runs one point or every N-th point, so any job scheduler can spread the grid over machines (each run
directory is independent); they cook no soup: run the same command without them once every point is done (all are
skipped, then the soups are cooked).

The soups across the runs (`python -m ich_keras.soup cook --runs ...`) go to OUTPUT/soups, their ingredients
labelled <point name>/epoch_NNN; --soup METHOD ... picks the methods (default: the [soup] table of the config, else
uniform, greedy and soft voting); --no-soup skips them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from ich_keras import atomic, cli, interrupts, sweeps
from ich_keras.errors import UserError

# Sections that do not change what a run trains: a sweep started again with other values there keeps its runs.
UNTRAINED_SECTIONS = ("soup", "analysis", "log")
# How long a stopped --parallel sweep waits for its shards to stop (a fit ends its epoch's files and its W&B run)
# before it kills them; under the 30 s a scheduler (Slurm, Kubernetes) leaves between SIGTERM and SIGKILL.
SHARD_STOP_S = 20.0


def _parser():
    parser = cli.parser("python -m ich_keras.sweep", __doc__)
    parser.add_argument("--config", required=True, help="TOML config file every point starts from")
    parser.add_argument("--grid", action="append", default=[], required=True, metavar="SECTION.KEY=[V1,V2]",
                        help="values to sweep, repeatable: the grid is the product of all lists")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override for every point, repeatable (soup.KEY for the soups' recipe)")
    parser.add_argument("--output", help="sweep directory (default: runs/sweep_<config file stem>)")
    parser.add_argument("--soup", nargs="+", metavar="METHOD", help="soup methods, e.g. uniform greedy model_stock")
    parser.add_argument("--no-soup", action="store_true", help="train only; cook no soup (whatever --soup says)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--only", type=int, metavar="I", help="run only point I (0-based, in sweep.json order)")
    where.add_argument("--shard", metavar="I/N", help="run points I, I+N, I+2N, ... (0 <= I < N)")
    where.add_argument("--parallel", action="store_true", help="one sub-process per visible accelerator")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars (log.verbose = 0 for this command; the points' config.json keep the "
                             "config's)")
    return parser


def _check_methods(methods) -> None:
    from ich_keras.soups import registry

    registry.known(methods or (), "--soup")


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


@contextlib.contextmanager
def _says_how_to_continue(argv: list[str]):
    """On Ctrl-C or SIGTERM, prints the command that continues the sweep: the same one (finished runs are skipped,
    a killed run resumes from its last finished epoch)."""
    try:
        yield
    except KeyboardInterrupt:
        print(f"continue with: {shlex.join(['python', '-m', 'ich_keras.sweep', *argv])}", file=sys.stderr)
        raise


def main(argv=None) -> int:
    """`python -m ich_keras.sweep`: checks the grid and every point's config, runs the points, cooks the soups."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    sets = list(args.set)
    output = Path(args.output or Path("runs") / f"sweep_{Path(args.config).stem}")
    if (output / "config.json").is_file():  # a run's own soups/ would be replaced by soups of the sweep's points
        raise UserError(f"--output is a run directory written by fit (it holds config.json): the sweep would train its "
                        f"points inside it and replace the run's soups/. Choose a new folder for the sweep. "
                        f"Received: output={str(output)!r}")
    given = sweeps.parse_grids(args.grid)
    grid = in_earlier_order(given, output)
    points = sweeps.expand(grid)
    chosen = sweeps.select(points, args.only, sweeps.parse_shard(args.shard) if args.shard else None)
    _check_methods(args.soup)
    configs = check_points(args.config, sets, points)
    from ich_keras import soup

    directories = [output / p.name for p in points]
    soup_argv = sweeps.cook_argv(args.config, args.set, args.soup, directories, output, args.quiet)
    if not args.no_soup:
        check_soupable(configs, progress=not args.quiet)
        check_started_points(configs, output, progress=not args.quiet)
        soup.check_cook(soup_argv, next(iter(configs.values())))  # W0, parameters: before any point trains
    output.mkdir(parents=True, exist_ok=True)
    write_sweep_file(output, args.config, list(args.set), grid, points)  # refuses a sweep of another config
    if list(grid) != list(given):
        print(f"Grid keys in the order of the sweep in {output}: {', '.join(grid)}", flush=True)
    print(f"Sweep of {len(points)} points in {output} ({len(chosen)} here)", flush=True)

    from ich_keras import compile_cache

    compile_cache.enable()
    devices = accelerators() if args.parallel else []
    if args.parallel and not devices:
        print("--parallel: fewer than 2 accelerators visible; running the points one after another", flush=True)
    with _says_how_to_continue(argv):
        failures = run_parallel(argv, devices, output) if devices else run_points(chosen, configs, output,
                                                                                             args.quiet)
    if failures:
        finished = [output / p.name for p in points if sweeps.run_status(output / p.name) == "done"]
        cook = sweeps.cook_argv(args.config, args.set, args.soup, finished, output, args.quiet)
        instead = (f"\nOr cook the soups across the {len(finished)} finished point(s) alone: "
                   f"{shlex.join(['python', '-m', 'ich_keras.soup', *cook])}" if finished and not args.no_soup else "")
        raise UserError(f"{len(failures)} point(s) or shard(s) failed; fix the cause and run the same command again "
                        f"(finished runs are skipped; a point that diverged diverges again as it is):\n  "
                        + "\n  ".join(failures) + instead)
    if args.no_soup or args.only is not None or args.shard:
        print("No soup cooked" + ("" if args.no_soup else ": run the same command without --only/--shard once "
                                  "every point is done"))
        return 0
    with _says_how_to_continue(argv):
        soup.main(soup_argv)
    return 0


if __name__ == "__main__":
    cli.run(main)
