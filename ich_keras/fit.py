"""Train one model into a run directory: `python -m ich_keras.fit`.

    python -m ich_keras.fit --config configs/demo.toml                 # -> runs/demo
    python -m ich_keras.fit --config configs/coatnet0.toml --set train.epochs=10 --workdir runs/c0_short
    python -m ich_keras.fit --resume runs/demo                          # after a crash or kill -9
    python -m ich_keras.fit --resume runs/demo --set train.epochs=80    # extend a finished (or killed) run's schedule
    python -m ich_keras.fit --resume runs/demo --set data.source=/mnt/photos/ahe   # its images moved there

`main()` parses arguments, reads the config (a resumed run's from `ich_keras.run_start.resume_config`) and
reports; `ich_keras.train.run(cfg, workdir)` does the work and is what tests call. The run directory layout is the
contract with `ich_keras.soup` / `ich_keras.analyze` (see `ich_keras.rundir`).
"""

from __future__ import annotations

import shlex
import sys
import time
import traceback
from pathlib import Path

from ich_keras import checkpoints, cli, compile_cache, distributed, resume, run_start, summaries
from ich_keras.config import load_config
from ich_keras.errors import UserError
from ich_keras.train import run

def _summary(results: dict) -> str:
    lines = []
    for metric, best in results["best"].items():
        test = best["test"]
        lines.append(
            f"best {metric}: epoch {best['epoch']} - val {metric} {best['val'][metric]:.4f} - "
            f"test accuracy {test['accuracy']:.4f}, macro F1 {test['f1']:.4f}"
        )
    return "\n".join(lines)


def _outputs(workdir: Path) -> list[Path]:
    """The files fit writes in the run directory (folders of loggers as folders)."""
    paths = [workdir / n for n in run_start.RUN_FILES] + sorted((workdir / "splits").glob("*.csv"))
    kept = workdir / checkpoints.CHECKPOINT_DIR
    paths += [kept / checkpoints.MANIFEST, *sorted(kept.glob("*.weights.h5"))]
    paths += [workdir / resume.STATE_FILE, workdir / "tensorboard", workdir / "wandb"]
    return [p for p in paths if p.exists()]


def _resume_command(workdir: Path) -> str:
    return shlex.join(["python", "-m", "ich_keras.fit", "--resume", str(workdir)])


def main(argv=None) -> int:
    """`python -m ich_keras.fit`: parses, loads the config, calls `run`; returns the exit status."""
    parser = cli.parser("python -m ich_keras.fit", __doc__)
    parser.add_argument("--config", help="TOML config file for a new run (its keys: docs/config.md)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="config override, repeatable (the value is TOML; a bare word is a string)")
    parser.add_argument("--workdir", help="run directory of a new run (default: runs/<config file stem>)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR with its config.json")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars (log.verbose = 0 for this command; config.json keeps the config's)")
    args = parser.parse_args(argv)
    if bool(args.config) == bool(args.resume):
        parser.error("give exactly one of --config FILE or --resume RUN_DIR")
    if args.resume:
        if args.workdir:
            parser.error("--resume continues the run in RUN_DIR; --workdir does not apply")
        config_path = Path(args.resume) / "config.json"
        if not config_path.is_file():
            raise UserError(f"No run to resume: {config_path} does not exist. Received: --resume {args.resume}")
        cfg = run_start.resume_config(Path(args.resume), args.set)
        workdir = Path(args.resume)
    else:
        cfg = load_config(args.config, args.set)
        workdir = Path(args.workdir or Path("runs") / Path(args.config).stem)
    compile_cache.enable()
    start, before = time.perf_counter(), summaries.file_stamps(workdir)
    try:
        results = run(cfg, workdir, resume_run=bool(args.resume), quiet=args.quiet)
    except KeyboardInterrupt:
        if distributed.is_writer() and (workdir / resume.STATE_FILE).is_file():  # an epoch finished: it continues
            print(f"continue with: {_resume_command(workdir)}", file=sys.stderr)
        raise
    except Exception as error:
        lost = distributed.lost_peer(error)
        if lost is None:
            raise
        if args.debug or cli.debug_env():
            traceback.print_exc()
        # The run directory exists once every process passed the start: from then on the run resumes.
        again = _resume_command(workdir) if (workdir / "config.json").is_file() else "the same command"
        distributed.end_after_lost_peer(f"error: {lost} of the job stopped (killed, out of memory, its host lost) "
                                        f"and this one ({distributed.process_index()}) stops with it; once none "
                                        f"is left, start every process again with: {again}")
    if distributed.is_writer():  # with several processes, the one that wrote the run directory reports it
        print(_summary(results))
        print(summaries.outputs_summary(summaries.written(_outputs(workdir), before)))
        print(f"Run directory: {workdir} ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    cli.run(main)
