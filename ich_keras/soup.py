"""`python -m ich_keras.soup`: evaluate a run's checkpoints, cook soups from them, or a MonoSoup.

    python -m ich_keras.soup evaluate runs/demo --split val
    python -m ich_keras.soup runs/demo --uniform --greedy --pruned --learned --soft-voting --recalibrate-bn
    python -m ich_keras.soup --checkpoints a.weights.h5 b.weights.h5 --config configs/demo.toml --uniform \
        --output-dir soups/
    python -m ich_keras.soup monosoup --pretrained W0.weights.h5 --finetuned W1.weights.h5 --config cfg.toml \
        --rule variance --R 0.9

Without a method flag the soup command cooks uniform, greedy and soft voting. Outputs go to RUN_DIR/soups/
(see `ich_keras.soups.runner`); a Table IV summary of every method found there is printed at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import ich_keras  # noqa: F401  (JAX backend)
from ich_keras import compile_cache


def _load(run_dir: str | None, config: str | None, overrides=()):
    """The `Run` for a run directory, or a run-like view of a config for weights that did not come from fit."""
    from ich_keras import checkpoints, data, rundir
    from ich_keras.config import load_config

    if run_dir:
        return rundir.load_run(run_dir)
    if not config:
        raise ValueError("Pass a run directory or --config to say which model and data the weights belong to. "
                         "Received: neither")
    cfg = load_config(config, list(overrides))
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, source=data.resolve_source(cfg.data.source)))
    # Same split rule as fit (seeded, stratified), rebuilt from the config since there is no run directory.
    return rundir.Run(Path(config).parent, cfg, data.build_splits(cfg.data),
                      checkpoints.empty_manifest(cfg.checkpoint.keep))


def _checkpoints(run, explicit) -> list[Path]:
    paths = [Path(p) for p in explicit] if explicit else [c.path for c in run.checkpoints]
    if not paths:
        raise ValueError(f"No checkpoints to use: the run kept none and --checkpoints was not given. "
                         f"Received: run_dir={str(run.path)!r}")
    return paths


def _output_dir(args, run) -> Path:
    if args.output_dir:
        return Path(args.output_dir)
    if args.run_dir:
        return Path(args.run_dir) / "soups"
    return Path(args.checkpoints[0]).parent / "soups" if getattr(args, "checkpoints", None) else Path("soups")


def _common(parser: argparse.ArgumentParser):
    parser.add_argument("--config", help="TOML config (for weights that did not come from fit)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="config override, as for fit")
    parser.add_argument("--output-dir", help="default: RUN_DIR/soups")
    parser.add_argument("--batch-size", type=int, help="evaluation batch size (default: the run's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def evaluate_main(argv):
    parser = argparse.ArgumentParser(prog="python -m ich_keras.soup evaluate",
                                     description="Every kept checkpoint's numbers on one split.")
    parser.add_argument("run_dir", nargs="?")
    parser.add_argument("--split", choices=("val", "test"), default="val")
    parser.add_argument("--checkpoints", nargs="+")
    _common(parser)
    args = parser.parse_args(argv)
    from ich_keras.soups import report, runner

    run = _load(args.run_dir, args.config, args.set)
    entries = runner.evaluate_checkpoints(run, _checkpoints(run, args.checkpoints), args.split,
                                          _output_dir(args, run), args.batch_size or run.config.train.batch_size,
                                          not args.quiet)
    print(report.checkpoint_table(entries, args.split))


def monosoup_main(argv):
    parser = argparse.ArgumentParser(prog="python -m ich_keras.soup monosoup",
                                     description="MonoSoup of one fine-tuned model against its pretrained weights.")
    parser.add_argument("run_dir", nargs="?", help="optional: a run directory for the model and data")
    parser.add_argument("--pretrained", required=True, help="W0 .weights.h5")
    parser.add_argument("--finetuned", required=True, help="W1 .weights.h5")
    parser.add_argument("--rule", choices=("variance", "vetterli"), default="variance")
    parser.add_argument("--R", type=float, default=0.9, help="energy fraction for --rule variance")
    parser.add_argument("--no-eval", action="store_true", help="only write the soup, do not score it")
    _common(parser)
    args = parser.parse_args(argv)
    from ich_keras.soups import runner

    run = None if args.no_eval else _load(args.run_dir, args.config, args.set)
    output = Path(args.output_dir) if args.output_dir else (
        Path(args.run_dir) / "soups" if args.run_dir else Path(args.finetuned).parent / "soups")
    output = output / f"monosoup_{args.rule}" if not args.output_dir else output
    batch_size = args.batch_size or (run.config.train.batch_size if run else 32)
    results = runner.run_monosoup(args.pretrained, args.finetuned, args.rule, args.R, output, run, batch_size,
                                  not args.quiet)
    print(f"Wrote {output}/soup.weights.h5 and layers.json")
    if "test" in results:
        print((output / "results.md").read_text())


def soup_main(argv):
    parser = argparse.ArgumentParser(prog="python -m ich_keras.soup",
                                     description="Soups from a run's kept checkpoints (or --checkpoints).")
    parser.add_argument("run_dir", nargs="?")
    parser.add_argument("--checkpoints", nargs="+", help="ingredients instead of the run's kept checkpoints")
    parser.add_argument("--runs", nargs="+", metavar="RUN_DIR",
                        help="ingredients from several run directories (or quoted globs), labelled run/epoch_NNN")
    for method in ("uniform", "greedy", "pruned", "learned", "model-stock", "task-arithmetic", "ties", "dare",
                   "slerp", "soft-voting"):
        parser.add_argument(f"--{method}", action="store_true")
    parser.add_argument("--greedy-metric", choices=("accuracy", "f1", "loss"), default="accuracy")
    parser.add_argument("--accept", choices=("ge", "gt"), default="ge",
                        help="greedy: keep a candidate if val does not drop (ge, the paper) or rises (gt)")
    parser.add_argument("--prune-accept", choices=("ge", "gt"), default="gt",
                        help="pruned: drop an ingredient if val rises (gt) or does not drop (ge) without it")
    parser.add_argument("--recalibrate-bn", action="store_true")
    parser.add_argument("--bn-batches", type=int, help="training batches for BN recalibration (default all)")
    parser.add_argument("--interpolate", action="store_true", help="WiSE-FT curve from the pretrained init")
    parser.add_argument("--pretrained", help="W0 for --interpolate, --model-stock, --task-arithmetic, --ties, --dare "
                        "(default: the config's model.init)")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--learned-epochs", type=int, default=3)
    parser.add_argument("--learned-lr", type=float, default=0.05)
    parser.add_argument("--lambda", dest="lam", type=float,
                        help="task arithmetic / TIES / DARE scale (default 1/N; TIES 1)")
    parser.add_argument("--ties-density", type=float, default=0.2, help="fraction of each task vector TIES keeps")
    parser.add_argument("--dare-rate", type=float, default=0.5, help="DARE drop probability")
    parser.add_argument("--dare-seed", type=int, default=0)
    parser.add_argument("--slerp-t", type=float, default=0.5, help="SLERP point between the two best (0 = best)")
    parser.add_argument("--bootstrap-resamples", type=int, default=2000, help="for the test intervals")
    parser.add_argument("--bootstrap-seed", type=int, default=0)
    _common(parser)
    args = parser.parse_args(argv)
    from ich_keras.soups import runner

    names = root = None
    if args.runs:  # soups across runs: the first run gives the model and the data
        from ich_keras.soups import across_runs

        runs, args.checkpoints, names, root = across_runs.collect(args.runs)
        run = runs[0]
    else:
        run = _load(args.run_dir, args.config, args.set)
    methods = tuple(m for m in runner.METHODS if getattr(args, m)) or ("uniform", "greedy", "soft_voting")
    options = runner.SoupOptions(
        methods=methods, greedy_metric=args.greedy_metric, accept=args.accept, prune_accept=args.prune_accept,
        recalibrate_bn=args.recalibrate_bn, bn_batches=args.bn_batches, interpolate=args.interpolate,
        pretrained=args.pretrained or run.config.model.init, alphas=tuple(args.alphas),
        learned_epochs=args.learned_epochs, learned_learning_rate=args.learned_lr, lam=args.lam,
        ties_density=args.ties_density, dare_rate=args.dare_rate, dare_seed=args.dare_seed, slerp_t=args.slerp_t,
        bootstrap_resamples=args.bootstrap_resamples, bootstrap_seed=args.bootstrap_seed,
        batch_size=args.batch_size or run.config.train.batch_size, progress=not args.quiet,
    )
    output = _output_dir(args, run) if not args.runs or args.output_dir else root / "soups"
    runner.run_soups(run, _checkpoints(run, args.checkpoints), options, output, names=names, root=root)
    print()
    print(runner.write_summary(output))
    print(f"\nResults under {output}/")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    compile_cache.enable()
    commands = {"evaluate": evaluate_main, "monosoup": monosoup_main}
    if argv and argv[0] in commands:
        return commands[argv[0]](argv[1:])
    return soup_main(argv)


if __name__ == "__main__":
    main()
