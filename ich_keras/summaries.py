"""What a command says before it starts and after it ends: pure text from plain values, printed by the CLIs.

    print(fit_summary(FitFacts(...)))               # ~10 lines before fit compiles anything
    print(start_line("soup", "runs/demo", "coatnet_tiny", "cook uniform, greedy, soft_voting from 8 checkpoints"))
    print(outputs_summary([run / "history.csv", run / "results.json"]))
"""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FitFacts:
    """Everything the start-up summary of `fit` shows, as plain values."""

    run_dir: str
    model: str
    parameters: int
    devices: tuple[str, ...]
    precision: str
    class_names: tuple[str, ...]
    split_counts: dict  # {split: (n per class, in class order)}
    val_carved: bool  # val was carved out of train
    batch_size: int
    grad_accum_steps: int
    steps_per_epoch: int
    updates_per_epoch: int
    epochs: int
    first_epoch: int  # epochs already done (resume)
    keep: tuple  # ((metric, mode, k), ...)
    logs: tuple[str, ...]  # where logs go, e.g. ("history.csv", "tensorboard/")
    host_memory: str = ""  # `host_memory.in_effect` on a CPU, e.g. "block cache, huge pages (...)"; "" to leave out


def _counts(class_names, counts) -> str:
    per_class = " ".join(f"{name}={n}" for name, n in zip(class_names, counts))
    shown = per_class if len(per_class) <= 70 else f"{min(counts)}-{max(counts)} per class"
    return f"{sum(counts)} ({shown})"


def _precision_hint(f: FitFacts) -> str:
    """A word where the paper's GPU precision runs on CPUs: coatnet_0 trained at 0.62-0.63x its float32 speed in
    bfloat16 on the 2-core development VM (`benchmarks/README.md`)."""
    if f.precision == "float32" or not all(device.endswith("(cpu)") for device in f.devices):
        return ""
    return " (slower than float32 on most CPUs: --set train.precision=float32)"


def fit_summary(facts: FitFacts) -> str:
    """The start-up summary of `fit`: about ten lines, one fact per line."""
    f = facts
    effective = f.batch_size * f.grad_accum_steps
    if f.first_epoch and f.first_epoch >= f.epochs:  # a finished run resumed: only the test evaluation is left
        epochs = f"all {f.epochs} epochs finished (resuming: test evaluation only)"
    elif f.first_epoch:
        epochs = f"epochs {f.first_epoch + 1}-{f.epochs} of {f.epochs} (resuming)"
    else:
        epochs = f"{f.epochs} epoch{'' if f.epochs == 1 else 's'}"
    lines = [
        f"run        {f.run_dir}",
        f"model      {f.model}, {f.parameters:,} parameters",
        f"devices    {', '.join(f.devices)}; precision {f.precision}{_precision_hint(f)}",
        *([f"memory     {f.host_memory}"] if f.host_memory else []),
        f"classes    {len(f.class_names)}",
    ]
    for split, counts in f.split_counts.items():
        carved = " (carved from train)" if split == "val" and f.val_carved else ""
        absent = [name for name, n in zip(f.class_names, counts) if n == 0]
        # Their precision, recall and F1 are 0 (no true positive; zero_division=0 as scikit-learn), which lowers every
        # macro average on the split.
        missing = f"; no image of {', '.join(absent)}: macro precision, recall and F1 count them as 0" if absent else ""
        lines.append(f"{split:<10} {_counts(f.class_names, counts)}{carved}{missing}")
    lines += [
        f"batch      {f.batch_size} x {f.grad_accum_steps} accumulation = {effective} effective",
        f"schedule   {epochs}; {f.steps_per_epoch} step{'s' * (f.steps_per_epoch != 1)} = {f.updates_per_epoch} "
        f"update{'s' * (f.updates_per_epoch != 1)} per epoch",
        "keep       " + "; ".join(f"top {k} by val {metric} ({mode})" for metric, mode, k in f.keep),
        f"logs       {', '.join(f.logs)}",
    ]
    return "\n".join(lines)


def run_model(run_dir) -> str | None:
    """The model name in RUN_DIR/config.json, or for a sweep's folder in its first point's that has one; None
    without a run or a readable config (the command says why)."""
    from ich_keras.sweeps import SWEEP_FILE

    folder = Path(run_dir)
    try:
        points = json.loads((folder / SWEEP_FILE).read_text(encoding="utf-8"))["points"]
        folders = [folder / point["directory"] for point in points]
    except (OSError, ValueError, KeyError, TypeError):
        folders = [folder]
    for run in folders:
        try:
            return json.loads((run / "config.json").read_text(encoding="utf-8"))["model"]["name"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def announce(command: str, run_dir, action: str, model: str | None = None) -> None:
    """Prints `start_line` on stderr (stdout stays for results), the model read from the run's config.json unless
    given (soups across runs: `run_dir` is the folder holding them).

    Nothing is printed for a RUN_DIR that holds no run: the command's own error says so, in two lines.
    """
    model = model or (run_model(run_dir) if run_dir else None)
    if run_dir and model is None:
        return
    print(start_line(command, run_dir or "(no run)", model, action), file=sys.stderr, flush=True)


def start_line(command: str, run_dir, model: str | None, action: str) -> str:
    """The one line a command other than fit prints first: `[soup] runs/demo (coatnet_tiny): cook ...`."""
    about = f" ({model})" if model else ""
    return f"[{command}] {run_dir}{about}: {action}"


def file_stamps(folder) -> dict[str, tuple[int, int, int]]:
    """{path: (inode, mtime in ns, size)} of every file under `folder`: taken before a command runs, for `written`."""
    return _stamps(Path(folder)) if Path(folder).is_dir() else {}


def written(paths, before: dict[str, tuple[int, int, int]]) -> list[Path]:
    """The `paths` a command wrote, against the `file_stamps` taken before it ran: a file new or changed (an atomic
    write is a new inode), a folder (a logger's) holding one. What a command that leaves earlier files in place (a
    resume, an analysis reading its cache) lists; compared by stamp, not by clock, which a network disk may not
    share."""
    return [Path(p) for p in paths if any(before.get(f) != stamp for f, stamp in _stamps(Path(p)).items())]


def _stamps(path: Path) -> dict[str, tuple[int, int, int]]:
    """The stamps of the file `path`, or of the files under the folder `path`; a file gone meanwhile (another
    command's temporary file, renamed) is left out."""
    stamps = {}
    for file in [path] if not path.is_dir() else path.rglob("*"):
        with contextlib.suppress(OSError):
            stat = file.stat()
            if not file.is_dir():
                stamps[str(file)] = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
    return stamps


def outputs_summary(paths) -> str:
    """'Wrote N files:' and each path on its own line (in the order given, each once)."""
    unique = list(dict.fromkeys(str(Path(p)) for p in paths))
    return "\n".join([f"Wrote {len(unique)} file{'s' if len(unique) != 1 else ''}:", *(f"  {p}" for p in unique)])
