"""`python -m ich_keras.analyze`: why the soups of a run work, in one report.

    python -m ich_keras.fit --config configs/demo.toml && python -m ich_keras.soup runs/demo
    python -m ich_keras.analyze runs/demo                   # -> runs/demo/analysis/report.md
    python -m ich_keras.analyze runs/demo --split test --soup greedy
    python -m ich_keras.analyze runs/demo --config recipe.toml    # its [analysis] table: split = "test", ...
    python -m ich_keras.analyze runs/demo --set data.source=/mnt/photos/ahe    # the run's images moved there
    python -m ich_keras.analyze runs/sweep_c0     # a sweep: its runs' checkpoints and the soups across them

Outputs are listed in `ich_keras.analysis.runner`; predictions are cached in analysis/predictions.npz (or the
--output folder), so a second call only redraws.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ich_keras import cli, compile_cache, folder_lock, rundir, summaries
from ich_keras.config import override_section


def main(argv=None) -> dict:
    """`python -m ich_keras.analyze`; returns the summary dict of `ich_keras.analysis.runner.analyze`."""
    from ich_keras.analysis.runner import SPLITS, AnalysisOptions, analyze

    parser = cli.parser("python -m ich_keras.analyze", __doc__)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by python -m ich_keras.fit, or "
                        "a sweep directory written by python -m ich_keras.sweep (with its soups/)")
    parser.add_argument("--config", help="TOML file whose [analysis] table holds the options below")
    parser.add_argument("--set", action="append", default=[], metavar="analysis.KEY=VALUE",
                        help="override of the [analysis] table, repeatable; also data.source=DIR, where the run's "
                             "images are now")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--wandb", action="store_true",
                        help="also log the summary, report and plots to the run's W&B run (offline by default)")
    group = parser.add_argument_group("options (each also an [analysis] key: the long flag with underscores)")
    option = lambda *flags, **kwargs: cli.add_option(group, AnalysisOptions(), *flags, **kwargs)  # noqa: E731
    option("--split", choices=SPLITS,
           help="split for distances, MDS, per-class and bias-variance (accuracy plots show both)")
    option("--soup", help="soup for the per-class table; default: uniform, else the first soup found")
    option("--diagonal", choices=("subtract", "zero"),
           help="MDS input: subtract each model's self-distance 2H(p,p) (symmetrised KL), or zero the diagonal")
    option("--pretrained", help="pretrained .weights.h5 for CKA; default: the run's model.init")
    option("--cka-examples", type=int, help="images used for CKA (0 skips it)")
    option("--batch-size", type=cli.positive_int, help="images a forward pass")
    option("--recompute", action=argparse.BooleanOptionalAction, help="ignore the predictions cache")
    option("--output", help="output folder, the predictions cache included: nothing is written into the run (its own "
                            "cache is read); default: RUN_DIR/analysis")
    args = parser.parse_args(argv)
    source, rest = rundir.source_override(args.set)
    others = [o for o in rest if override_section(o) != "analysis"]
    if others:
        parser.error(f"--set takes analysis.KEY=VALUE, or data.source=DIR where the run's images are now (the model "
                     f"and data come from the run). Received: {others}")
    args.set = rest
    given = cli.recipe(AnalysisOptions, "analysis", args)
    given["progress"] = given.get("progress", True) and not args.quiet
    options = AnalysisOptions(**given)
    if args.wandb:
        from ich_keras import wandb_reports

        wandb_reports.check_wandb_flag(args.run_dir)
    compile_cache.enable()
    summaries.announce("analyze", args.run_dir, "predictions (cached when valid), metrics, distances and MDS, "
                       "per-class, bias-variance, figures, report")
    before = summaries.file_stamps(options.output or Path(args.run_dir) / "analysis")
    with folder_lock.reading():  # the runs it reads stay locked against a fit until it ends
        summary = analyze(args.run_dir, options, source)
    predictions = "read from the cache" if summary["cached"] else "computed"
    print(f"Analysis in {summary['seconds']:.1f} s, predictions {predictions} (best single {summary['best_single']}, "
          f"soup {summary['soup']}, MDS stress {summary['stress']:.3f})")
    out = Path(summary["output_dir"])
    files = sorted(p for p in out.iterdir() if p.is_file() and p.name != folder_lock.LOCK)
    print(summaries.outputs_summary(summaries.written(files, before)))
    if args.wandb:
        wandb_reports.log_analysis(args.run_dir, summary)
    return summary


def _command(argv) -> int:
    main(argv)
    return 0


if __name__ == "__main__":
    cli.run(_command)
