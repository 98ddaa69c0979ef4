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
import shlex
import sys
from pathlib import Path

from ich_keras import cli, sweep_runs, sweeps
from ich_keras.errors import UserError


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
    grid = sweep_runs.in_earlier_order(given, output)
    points = sweeps.expand(grid)
    chosen = sweeps.select(points, args.only, sweeps.parse_shard(args.shard) if args.shard else None)
    _check_methods(args.soup)
    configs = sweep_runs.check_points(args.config, sets, points)
    from ich_keras import soup

    directories = [output / p.name for p in points]
    soup_argv = sweeps.cook_argv(args.config, args.set, args.soup, directories, output, args.quiet)
    if not args.no_soup:
        sweep_runs.check_soupable(configs, progress=not args.quiet)
        sweep_runs.check_started_points(configs, output, progress=not args.quiet)
        soup.check_cook(soup_argv, next(iter(configs.values())))  # W0, parameters: before any point trains
    output.mkdir(parents=True, exist_ok=True)
    sweep_runs.write_sweep_file(output, args.config, list(args.set), grid, points)  # refuses a sweep of another config
    if list(grid) != list(given):
        print(f"Grid keys in the order of the sweep in {output}: {', '.join(grid)}", flush=True)
    print(f"Sweep of {len(points)} points in {output} ({len(chosen)} here)", flush=True)

    from ich_keras import compile_cache

    compile_cache.enable()
    devices = sweep_runs.accelerators() if args.parallel else []
    if args.parallel and not devices:
        print("--parallel: fewer than 2 accelerators visible; running the points one after another", flush=True)
    with _says_how_to_continue(argv):
        if devices:
            failures = sweep_runs.run_parallel(argv, devices, output)
        else:
            failures = sweep_runs.run_points(chosen, configs, output, args.quiet)
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
