"""`python -m ich_keras.soup`: cook soups from a run's kept checkpoints, score them, MonoSoup, or check a pair.

    python -m ich_keras.soup runs/demo                      # = soup cook runs/demo: uniform, greedy, soft voting
    python -m ich_keras.soup cook runs/demo --uniform --greedy --pruned --learned --soft-voting --recalibrate-bn
    python -m ich_keras.soup cook runs/demo --config recipe.toml --set soup.greedy_metric=f1
    python -m ich_keras.soup cook runs/ft --model-stock --ties --dare --task-arithmetic --pretrained W0.weights.h5
    python -m ich_keras.soup cook --runs "sweep/run_*" --uniform --greedy --model-stock   # soups across runs
    python -m ich_keras.soup cook --checkpoints a.weights.h5 b.weights.h5 --config configs/demo.toml --uniform \\
        --output soups/
    python -m ich_keras.soup evaluate runs/demo --split val
    python -m ich_keras.soup runs/demo --set data.source=/mnt/photos/ahe   # the run's images moved there
    python -m ich_keras.soup monosoup runs/demo --pretrained W0.weights.h5 --finetuned W1.weights.h5 --rule variance
    python -m ich_keras.soup check runs/demo/checkpoints/epoch_004.weights.h5   # val along the line to the uniform soup

A recipe can be saved instead of flags: the [soup] table of the TOML file given with --config, its keys the cook
options without dashes (`ich_keras.soups.runner.SoupOptions`), e.g. methods = ["uniform", "greedy"],
greedy_metric = "f1", recalibrate_bn = true. --set soup.KEY=VALUE and flags override it; an unknown key is an error
naming it. With a run directory the model and data come from the run; without one, from the same --config file, and
the run the --checkpoints were kept in (RUN/checkpoints/) stands for the run directory: its soups/ gets the outputs
(without --output) and stored paths are relative to it (loose files: to the folder holding the output folder), so
`analyze RUN` finds them. Outputs go to RUN_DIR/soups/ (--output; see `ich_keras.soups.runner`); cook prints a
Table IV of every method there.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from pathlib import Path

from ich_keras import cli, compile_cache, folder_lock, summaries
from ich_keras.config import override_section
from ich_keras.errors import UserError

COMMANDS = ("cook", "evaluate", "monosoup", "check")


def _config_overrides(args) -> list[str]:
    """The --set overrides meant for the training config (not for the [soup] recipe)."""
    return [o for o in args.set if override_section(o) != "soup"]


def _load(args, run_dir: str | None, home: Path):
    """The run of a command's arguments (`ich_keras.soups.inputs.run_or_config`); without a run directory, `home` stands
    for it."""
    from ich_keras.soups import inputs

    return inputs.run_or_config(run_dir, args.config, _config_overrides(args), not args.quiet, home)


def _output_dir(args) -> Path:
    from ich_keras.soups import inputs

    if args.output:
        return Path(args.output)
    weights = getattr(args, "checkpoints", None)
    return inputs.soups_dir(args.run_dir, weights[0] if weights else None)


def _common(parser: argparse.ArgumentParser, output_help: str = "output folder (default: RUN_DIR/soups)"):
    cli.add_debug(parser)
    parser.add_argument("--config", help="TOML file: the [soup] recipe, and the model and data without RUN_DIR")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override, repeatable: soup.KEY for the recipe; with a run directory also "
                             "data.source=DIR (where its images are now), without one any section as for fit")
    parser.add_argument("--output", help=output_help)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_cook(commands) -> None:
    from ich_keras.soups import registry, runner
    from ich_keras.soups.methods import ACCEPT_RULES

    parser = commands.add_parser("cook", help="soups from the kept checkpoints (the default command)",
                                 description="Soups from a run's kept checkpoints (or --checkpoints, or --runs).")
    parser.add_argument("run_dir", nargs="?", metavar="RUN_DIR",
                        help="run directory written by python -m ich_keras.fit")
    parser.add_argument("--checkpoints", nargs="+", help="ingredients instead of the run's kept checkpoints")
    parser.add_argument("--runs", nargs="+", metavar="RUN_DIR",
                        help="ingredients from several run directories (or quoted globs), labelled run/epoch_NNN")
    parser.add_argument("--wandb", action="store_true",
                        help="also log the soups' numbers to the run's W&B run (log.wandb_mode: offline by default)")
    methods = parser.add_argument_group("methods (default: uniform, greedy and soft voting; [soup] methods = [...])")
    for method in registry.METHODS:  # a new method in registry.METHODS gets its flag here
        methods.add_argument(cli.flag(method), dest="methods", action="append_const", const=method,
                             help=registry.LABELS[method])
    group = parser.add_argument_group("options (each also a [soup] key: the long flag with underscores; "
                                      "--lambda is lam)")
    option = lambda *flags, **kwargs: cli.add_option(group, runner.SoupOptions(), *flags, **kwargs)  # noqa: E731
    option("--greedy-metric", choices=("accuracy", "f1", "loss"),
           help="val metric greedy and pruned soups rank and accept by, and the best single checkpoint's")
    option("--accept", choices=ACCEPT_RULES,
           help="greedy: keep a candidate if val does not drop (ge, the paper) or rises (gt)")
    option("--prune-accept", choices=ACCEPT_RULES,
           help="pruned: drop an ingredient if val rises (gt) or does not drop (ge) without it")
    option("--recalibrate-bn", action=argparse.BooleanOptionalAction, help="re-estimate BatchNorm statistics")
    option("--bn-batches", type=cli.positive_int, help="training batches for BN recalibration (default all)")
    option("--interpolate", action=argparse.BooleanOptionalAction, help="WiSE-FT curve from the pretrained init")
    option("--pretrained", help="W0 for --interpolate, --model-stock, --task-arithmetic, --ties, --dare; "
           "default: the config's model.init")
    option("--alphas", type=float, nargs="+", help="WiSE-FT mixing coefficients")
    option("--learned-epochs", type=int, help="passes over val the learned soup's mixing weights train for")
    option("--learned-learning-rate", "--learned-lr", type=float, help="Adam's rate for those weights")
    option("--lambda", dest="lam", type=float, help="task arithmetic / TIES / DARE scale; default 1/N (TIES 1)")
    option("--ties-density", type=float, help="fraction of each task vector TIES keeps")
    option("--dare-rate", type=float, help="DARE drop probability")
    option("--dare-seed", type=int, help="seed of DARE's random drops")
    option("--slerp-t", type=float, help="SLERP point between the two best (0 = best)")
    option("--bootstrap-resamples", type=int, help="for the test intervals")
    option("--bootstrap-seed", type=int, help="seed of the bootstrap's resamples")
    option("--batch-size", type=cli.positive_int,
           help="for scoring, the learned soup's steps and BN recalibration; default: the run's")
    _common(parser)
    parser.set_defaults(handler=cook)


def cook(args) -> None:
    """`soup cook`: every requested soup, then the summary table of all methods in the output folder."""
    from ich_keras.soups import inputs, runner, summary

    if args.wandb:
        from ich_keras import wandb_reports

        wandb_reports.check_wandb_flag(args.run_dir or args.runs)
    given = cli.recipe(runner.SoupOptions, "soup", args)  # before the run is read: a bad recipe fails at once
    names = root = None
    if args.runs and (args.run_dir or args.checkpoints):  # --runs chooses the ingredients: the others went unused
        given_too = "RUN_DIR" if args.run_dir else "--checkpoints"
        raise UserError(f"--runs takes every kept checkpoint of the runs it names, so {given_too} would go unused: "
                        f"pass --runs alone, or RUN_DIR with --checkpoints. Received: --runs {' '.join(args.runs)} "
                        f"with {args.run_dir or ' '.join(map(str, args.checkpoints))}")
    if args.runs:  # soups across runs: the first run gives the model and the data
        from ich_keras.soups import across_runs

        runs, args.checkpoints, names, root = across_runs.collect(args.runs, inputs.run_source(_config_overrides(args)))
        run = runs[0]
        output = Path(args.output) if args.output else root / "soups"
    else:
        output = _output_dir(args)
        run = _load(args, args.run_dir, inputs.home_of(args.checkpoints, output))
    if args.output:
        inputs.check_output(output, None if args.runs else run.path)
    options = _options(given, run.config, args.quiet)
    paths = inputs.ingredients(run, args.checkpoints)
    runner.check_recipe(options, len(paths))  # a recipe that cannot run says so alone, not under a "cooking" line
    of_runs = f" of {len(runs)} runs" if args.runs else ""
    summaries.announce("soup", args.run_dir or root, f"cooking {', '.join(options.methods)} from {len(paths)} "
                       f"checkpoints{of_runs} into {output}/", run.config.model.name if args.runs else None)
    cooked = runner.run_soups(run, paths, options, output, names=names, root=root)
    print()
    print(summary.write(output))
    print(summaries.outputs_summary([*_files([output / r["method"] for r in cooked]), output / "results.md"]))
    if args.wandb:  # soups across runs get a W&B run of their own, for the folder holding the runs
        wandb_reports.log_soups(args.run_dir or root, output, run.config)


def _options(given: dict, config, quiet: bool):
    """The `SoupOptions` of a recipe (`cli.recipe`'s values), the rest from the run's config: W0 its model.init, the
    batch size its training batch size."""
    from ich_keras.soups import registry, runner

    given = dict(given)
    if "methods" in given:  # in the order of registry.METHODS, as the table lists them
        given["methods"] = registry.known(given["methods"], "methods")
    given.setdefault("pretrained", config.model.init)
    given.setdefault("batch_size", config.train.batch_size)
    given["progress"] = given.get("progress", True) and not quiet
    return runner.SoupOptions(**given)


def check_cook(argv: list[str], config) -> None:
    """Checks the recipe of `soup cook ARGV` for runs trained with `config` without reading any run: what a sweep
    does before its points train, so a recipe that cannot run fails before hours of training, not after."""
    from ich_keras.soups import runner

    args = parse(argv)
    runner.check_recipe(_options(cli.recipe(runner.SoupOptions, "soup", args), config, args.quiet))


def _add_evaluate(commands) -> None:
    parser = commands.add_parser("evaluate", help="every kept checkpoint's numbers on one split",
                                 description="Every kept checkpoint's numbers on one split.")
    parser.add_argument("run_dir", nargs="?", metavar="RUN_DIR",
                        help="run directory written by python -m ich_keras.fit")
    parser.add_argument("--split", choices=("val", "test"), default="val", help="(default: val)")
    parser.add_argument("--checkpoints", nargs="+", help="checkpoints instead of the run's kept ones")
    parser.add_argument("--batch-size", type=cli.positive_int, help="evaluation batch size (default: the run's)")
    _common(parser)
    parser.set_defaults(handler=evaluate)


def evaluate(args) -> None:
    """`soup evaluate`: each checkpoint's metrics on one split, as a table."""
    from ich_keras.soups import inputs, report, runner

    output = _output_dir(args)
    run = _load(args, args.run_dir, inputs.home_of(args.checkpoints, output))
    paths = inputs.ingredients(run, args.checkpoints, "evaluate")
    summaries.announce("soup", args.run_dir, f"evaluating {len(paths)} checkpoints on {args.split}")
    entries = runner.evaluate_checkpoints(run, paths, args.split, output,
                                          args.batch_size or run.config.train.batch_size, not args.quiet)
    print(report.checkpoint_table(entries, args.split))
    print(summaries.outputs_summary(output / "evaluate" / f"{args.split}{suffix}" for suffix in (".json", ".md")))


def _add_monosoup(commands) -> None:
    parser = commands.add_parser("monosoup", help="MonoSoup of one fine-tuned model against its pretrained weights",
                                 description="MonoSoup of one fine-tuned model against its pretrained weights.")
    parser.add_argument("run_dir", nargs="?", metavar="RUN_DIR",
                        help="the run for the model and data (default: the run W1's checkpoints/ folder is in, "
                             "else --config)")
    parser.add_argument("--pretrained", required=True, help="W0 .weights.h5")
    parser.add_argument("--finetuned", required=True, help="W1 .weights.h5")
    parser.add_argument("--rule", choices=("variance", "vetterli"), default="variance",
                        help="rank kept per layer: variance, the fewest singular values holding --energy of "
                             "the energy; vetterli, the effective rank (entropy of the spectrum) (default: variance)")
    parser.add_argument("--energy", "--R", dest="R", type=float, default=0.9,
                        help="energy fraction for --rule variance, R in the paper (default: 0.9)")
    parser.add_argument("--no-eval", action="store_true", help="only write the soup, do not score it")
    parser.add_argument("--batch-size", type=cli.positive_int, help="evaluation batch size (default: the run's)")
    _common(parser)
    parser.set_defaults(handler=monosoup)


def monosoup(args) -> None:
    """`soup monosoup`: the soup, its per-layer numbers and, unless --no-eval, its scores."""
    from ich_keras import weights_origin
    from ich_keras.soups import inputs, monosoup_run
    from ich_keras.soups.monosoup import check_options

    check_options(args.rule, args.R)  # before the run's data is read or the output folder is made
    # Without RUN_DIR or --config, the run W1 was kept in (RUN/checkpoints/) gives the model and data, as for check.
    run_dir = args.run_dir or (None if args.config else weights_origin.run_of(args.finetuned))
    # --output is the soups folder, as for the other commands; the soup goes into its monosoup_<rule>/ folder.
    output = (Path(args.output) if args.output else inputs.soups_dir(run_dir, args.finetuned)) / f"monosoup_{args.rule}"
    # With --no-eval a run directory still gives the model, to resize W0 to its image size; its images are not read.
    home = inputs.home_of([args.finetuned], output.parent)
    run = None if args.no_eval and not run_dir else _load(args, run_dir, home)
    if run is not None:
        weights_origin.check_classes(args.finetuned, run)
    summaries.announce("soup", run_dir, f"MonoSoup ({args.rule}) of {args.finetuned} into {output}/")
    batch_size = args.batch_size or (run.config.train.batch_size if run else 32)
    results = monosoup_run.run_monosoup(args.pretrained, args.finetuned, args.rule, args.R, output, run,
                                        batch_size, not args.quiet, score=not args.no_eval)
    if "test" in results:
        print((output / "results.md").read_text(encoding="utf-8"))
    print(summaries.outputs_summary(_files([output])))


def _files(folders) -> list[Path]:
    """The files in each folder (recursively, sorted), for the outputs summary."""
    return [p for folder in folders for p in sorted(Path(folder).rglob("*")) if p.is_file()]


def _add_check(commands) -> None:
    from ich_keras.soups.check import POINTS

    parser = commands.add_parser("check", help="will two ingredients soup? val along the line between them",
                                 description="Val loss and accuracy along the straight line between two ingredients "
                                             "(or one and the run's uniform soup); a warning when the midpoint is "
                                             "much worse than both ends.")
    parser.add_argument("first", metavar="A", help="weights at a = 0 (.weights.h5)")
    parser.add_argument("second", metavar="B", nargs="?",
                        help="weights at a = 1 (default: the uniform soup of the run's kept checkpoints)")
    parser.add_argument("--run", dest="run_dir", metavar="RUN_DIR",
                        help="the run for the model and data (default: the run A's checkpoints/ folder is in)")
    parser.add_argument("--points", type=float, nargs="+", default=list(POINTS), help="coefficients a to score")
    parser.add_argument("--tolerance", type=float, default=0.05,
                        help="warn when the midpoint's val accuracy is this far below the worse end (0.05 = 5 points)")
    parser.add_argument("--batch-size", type=cli.positive_int, help="evaluation batch size (default: the run's)")
    _common(parser, output_help="also write check.json into this folder (default: nothing is written)")
    parser.set_defaults(handler=check)


def check(args) -> None:
    """`soup check`: the line scan's table, loss barrier and warning; with --output, also check.json there."""
    from ich_keras import atomic, weights_origin
    from ich_keras.soups.check import check_options, run_check

    if args.output and Path(args.output).exists() and not Path(args.output).is_dir():  # not after the scan
        raise UserError(f"--output is a file; check writes check.json into a folder. Received: output={args.output!r}")
    check_options(args.points, args.tolerance)  # before the run's data is read
    run_dir = args.run_dir
    if not run_dir and not args.config:
        run_dir = weights_origin.run_of(args.first)  # A is a checkpoint of a run: score on that run's val split
    # check.json holds no paths: without a run, the config's folder stands for it (in messages only).
    run = _load(args, run_dir, Path(args.config or ".").parent)
    for weights in filter(None, (args.first, args.second)):  # B defaults to the run's uniform soup
        weights_origin.check_classes(weights, run)
    scan, result, text = run_check(run, args.first, args.second, tuple(args.points), args.tolerance,
                                   args.batch_size or run.config.train.batch_size, not args.quiet)
    print(text)
    if args.output:
        atomic.write_json(Path(args.output) / "check.json", {"points": scan, **result})
        print(summaries.outputs_summary([Path(args.output) / "check.json"]))


def parser() -> argparse.ArgumentParser:
    """The soup command's parser, with its sub-commands."""
    result = cli.parser("python -m ich_keras.soup", __doc__)
    commands = result.add_subparsers(title="commands", metavar="COMMAND", required=True,
                                     description="(a RUN_DIR or an option first means cook)")
    for add in (_add_cook, _add_evaluate, _add_monosoup, _add_check):
        add(commands)
    for command in commands.choices.values():
        command.set_defaults(command_parser=command)
    return result


def parse(argv: list[str]) -> argparse.Namespace:
    """`argv` (a command first) parsed; an unknown option is answered with its command's usage, not the top level's
    (`soup RUN_DIR --bogus` named no command)."""
    args, unknown = parser().parse_known_args(argv)
    if unknown:
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def _check_not_a_misspelt_command(first: str) -> None:
    """`soup cok RUN` stops naming the command it resembles; else it read as `soup cook cok RUN`, whose error named
    RUN as an unrecognised argument. A folder of that name is still a run directory."""
    if first.startswith("-") or os.path.exists(first):
        return
    close = difflib.get_close_matches(first, COMMANDS, n=1, cutoff=0.6)
    if close:
        raise UserError(f"Unknown soup command {first!r}: did you mean {close[0]!r}? Commands: "
                        f"{', '.join(COMMANDS)}; a run directory alone means cook.")


def main(argv=None) -> int:
    """`python -m ich_keras.soup`; `soup RUN_DIR ...` (no command) is `soup cook RUN_DIR ...`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        _check_not_a_misspelt_command(argv[0] if argv else "-")
        argv = ["cook", *argv]
    args = parse(argv)
    compile_cache.enable()
    with folder_lock.reading():  # the runs it reads stay locked against a fit until it ends
        args.handler(args)
    return 0


if __name__ == "__main__":
    cli.run(main)
