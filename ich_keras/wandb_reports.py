"""What `soup --wandb` and `analyze --wandb` add to a run's W&B run (`ich_keras.run_logging.wandb_run` reopens
the one fit logged to): the soups' numbers as summary entries, the analysis' summary, report and plots."""

from __future__ import annotations

import shutil
from pathlib import Path

from ich_keras import atomic
from ich_keras.config import Config
from ich_keras.errors import UserError
from ich_keras.run_logging import require, wandb_run


def check_wandb_flag(run_dir: str | Path | None) -> None:
    """For `--wandb` on soup and analyze, before any work: wandb importable and a run directory to log to."""
    require("wandb", "--wandb")
    if not run_dir:
        raise UserError("--wandb logs to the W&B run of a run directory: give RUN_DIR (or --runs). "
                        "Received: no run directory")


def soup_summary(output_dir: str | Path) -> dict[str, float]:
    """Every soup's val and test numbers under `output_dir` (RUN_DIR/soups) as flat summary entries:
    "soup/<method>/<split>/<metric>", plus "soup/<method>/forward_passes"."""
    summary = {}
    for path in sorted(Path(output_dir).glob("*/results.json")):
        results = atomic.read_json(path)
        method = results.get("method", path.parent.name)
        for split in ("val", "test"):
            for metric, value in results.get(split, {}).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    summary[f"soup/{method}/{split}/{metric}"] = value
        if "forward_passes" in results:
            summary[f"soup/{method}/forward_passes"] = results["forward_passes"]
    return summary


def log_soups(run_dir: str | Path, output_dir: str | Path, cfg: Config | None = None) -> None:
    """Adds `soup_summary(output_dir)` to the W&B run of `run_dir` (`python -m ich_keras.soup --wandb`); `cfg`
    defaults to the run's config.json (soups across runs give the first run's)."""
    run = wandb_run(run_dir, cfg, job_type="soup", setting="--wandb")
    run.summary.update(soup_summary(output_dir))
    run.finish()


def log_analysis(run_dir: str | Path, summary: dict) -> None:
    """Adds the analysis summary to the run's W&B run and files its report and plots with the run
    (`python -m ich_keras.analyze --wandb`).

    Args:
        run_dir: the run directory, or a sweep's (whose W&B run the soups across its runs log to).
        summary: what `ich_keras.analysis.runner.analyze` returned (its output_dir holds report.md and the PNGs;
            its config, the run's or the sweep's first run's, is the W&B run's config).
    """
    run = wandb_run(run_dir, summary["config"], job_type="analyze", setting="--wandb")
    run.summary.update({
        f"analysis/{key}": value for key, value in summary.items()
        if key != "output_dir" and isinstance(value, (str, int, float))
    })
    # Copies, not wandb.save's symlinks: the run directory may be moved before `wandb sync`.
    files = Path(run.dir) / "analysis"
    files.mkdir(parents=True, exist_ok=True)
    out = Path(summary["output_dir"])
    for path in [out / "report.md", *sorted(out.glob("*.png"))]:
        if path.is_file():
            shutil.copy2(path, files / path.name)
            run.save(str(files / path.name), base_path=run.dir, policy="now")
    run.finish()
