"""Where a run's numbers go besides history.csv: TensorBoard event files and Weights & Biases (offline by default).

    [log]
    tensorboard = true   # RUN_DIR/tensorboard/{train,validation}/: tensorboard --logdir runs
    wandb = true         # RUN_DIR/wandb/offline-run-*/: wandb sync RUN_DIR/wandb/offline-run-*

`check_loggers(cfg, run_dir)` runs before fit writes anything, so a missing package or a folder it cannot write is one
clear error instead of a crash after the first epoch. `logging_callbacks(cfg, run_dir, schedule)` makes the callbacks;
they go after `checkpoints.TopKCheckpoints`, which adds the val metrics to the epoch logs. Steps are epochs counted
from 1, as in history.csv and the manifest. Each run directory has one W&B run, its id kept in RUN_DIR/wandb/run.json:
`wandb_run(run_dir, cfg, job_type)` reopens it, so soup and analysis results (`--wandb`: `ich_keras.wandb_reports`)
land beside the training curves. RUN_DIR/wandb/logged.json holds the last epoch known to be in W&B's file, so a
resumed fit logs again the epochs a kill took from W&B but not from history.csv; a resumed fit's TensorBoard logger
reads its event files back for the same purpose.
"""

from __future__ import annotations

import atexit
import importlib
import os
import secrets
import threading
from pathlib import Path

import keras
import numpy as np

from ich_keras import atomic, checkpoints
from ich_keras.config import Config, config_from_dict, config_to_dict
from ich_keras.errors import UserError

TENSORBOARD_DIR = "tensorboard"
TENSORBOARD_RUNS = ("train", "validation")  # folders inside TENSORBOARD_DIR
WANDB_DIR = "wandb"
WANDB_RECORD = "run.json"  # inside WANDB_DIR: {"id": ..., "project": ...}
WANDB_FLUSH_S = 0.5  # seconds between wandb-core's writes of the offline .wandb file (its default: 15)
WANDB_LOGGED = "logged.json"  # inside WANDB_DIR: {"id": ..., "epoch": the last epoch known to be in W&B's file}
# An epoch logged this long ago is in the file: four flush intervals (measured: 0.2-0.3 s from log() to the file).
WANDB_SETTLE_S = 4 * WANDB_FLUSH_S


def require(package: str, setting: str):
    """Imports `package` (also the name of its pyproject extra), or raises a `UserError` naming the setting that
    needs it (e.g. "log.wandb=True", "--wandb") and the install command."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise UserError(
            f"{setting} needs the {package} package: pip install -e '.[{package}]' in the ich_keras checkout "
            f"(or pip install {package}). Received: {setting}"
        ) from None


def check_loggers(cfg: Config, run_dir: str | Path) -> None:
    """Raises a `UserError` if a logger the config turns on cannot be imported, or cannot write its folder in
    `run_dir` (TensorFlow's summary writer failed there with a traceback, after the run's start was written);
    writes nothing."""
    run_dir = Path(run_dir)
    if cfg.log.tensorboard:
        require("tensorboard", "log.tensorboard=True")
        for subfolder in TENSORBOARD_RUNS:
            _check_writable(run_dir / TENSORBOARD_DIR / subfolder, "log.tensorboard")
    if cfg.log.wandb:
        require("wandb", "log.wandb=True")
        _check_writable(run_dir / WANDB_DIR, "log.wandb")


def _check_writable(folder: Path, key: str) -> None:
    """Raises a `UserError` naming `folder`, or the folder it would be made in, where it cannot be written."""
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK):
        return
    if not existing.is_dir():
        why, fix = "is a file, not a folder", "move that file away"
    elif os.statvfs(existing).f_flag & os.ST_RDONLY:
        why, fix = "is on a read-only file system", "make it writable"
    else:
        why, fix = "is not writable by this user", "make it writable"
    raise UserError(f"{key}=True writes into {folder}, but {existing} {why}; {fix}, or turn the logger off "
                    f"(--set {key}=false). Received: path={str(existing)!r}")


def logging_callbacks(cfg: Config, run_dir: str | Path, schedule,
                      rows: list[dict] = ()) -> list[keras.callbacks.Callback]:
    """The loggers `cfg.log` turns on, to be placed after the run's `TopKCheckpoints`.

    Args:
        cfg: the run's config.
        run_dir: the run directory.
        schedule: the learning-rate schedule, to log the rate reached at each epoch's end.
        rows: the history rows of the epochs already finished (a resume's), for the loggers to catch up on.
    """
    callbacks = []
    if cfg.log.tensorboard:
        callbacks.append(TensorBoardLogger(Path(run_dir), schedule, rows))
    if cfg.log.wandb:
        callbacks.append(WandbLogger(cfg, Path(run_dir), schedule, rows))
    return callbacks


def epoch_scalars(logs: dict | None, model: keras.Model, schedule) -> dict[str, float]:
    """The epoch's scalar logs as floats, plus "learning_rate": the schedule at the optimizer's update count."""
    scalars = {name: float(value) for name, value in (logs or {}).items() if np.ndim(value) == 0}
    updates = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    scalars["learning_rate"] = float(keras.ops.convert_to_numpy(schedule(updates)))
    return scalars


class TensorBoardLogger(keras.callbacks.Callback):
    """Writes each epoch's scalars as TensorBoard events in RUN_DIR/tensorboard/{train,validation}/.

    Tags are keras.callbacks.TensorBoard's, so train and val curves overlay: "epoch_loss" and "epoch_accuracy" in
    both runs, "epoch_f1", "epoch_precision", "epoch_recall" in validation, "epoch_learning_rate" in train. From
    the manifest, validation also gets "checkpoint_kept" (1 when the epoch entered a top-k list, else 0) and a text
    "kept_checkpoints" with each metric's ranked epochs after that epoch.

    A kill between the epoch's saved state and its events leaves the epoch in history.csv but not in TensorBoard,
    and `--resume` does not train it again. So a resume reads which steps each tag's event files hold
    (`event_steps`) and first writes the missing ones of the finished epochs from their history rows and the
    manifest as it stood after them, under their own steps.

    Args:
        run_dir: the run directory.
        schedule: the learning-rate schedule.
        rows: history rows of the epochs already finished (from the state on resume).
    """

    def __init__(self, run_dir: Path, schedule, rows: list[dict] = ()):
        super().__init__()
        self.run_dir = run_dir
        self.schedule = schedule
        self.rows = list(rows)
        self.writers = {}

    def on_train_begin(self, logs=None):
        import tensorflow as tf

        folder = self.run_dir / TENSORBOARD_DIR
        # Read before the writers open their new (empty) files.
        held = {run: event_steps(folder / run) for run in TENSORBOARD_RUNS} if self.rows else {}
        self.writers = {run: tf.summary.create_file_writer(str(folder / run)) for run in TENSORBOARD_RUNS}
        if not self.rows:
            return
        manifest = checkpoints.read_manifest(self.run_dir)
        # "checkpoint_kept" and "kept_checkpoints" say what the manifest was right after the epoch: replay it.
        replay = {**checkpoints.empty_manifest(()), "rules": manifest["rules"]}
        for row in self.rows:
            replay = checkpoints.update_manifest(replay, row["epoch"], manifest["epochs"][str(row["epoch"])])
            self._write(row["epoch"], history_scalars(row), replay, held)

    def on_epoch_end(self, epoch, logs=None):
        scalars = epoch_scalars(logs, self.model, self.schedule)
        self._write(epoch + 1, scalars, checkpoints.read_manifest(self.run_dir), {})

    def on_train_end(self, logs=None):
        for writer in self.writers.values():
            writer.close()

    def _write(self, epoch: int, scalars: dict[str, float], manifest: dict, held: dict[str, dict[str, set]]):
        """Writes the epoch's tags that `held` ({run: {tag: steps}}, what the event files hold) lacks."""
        import tensorflow as tf

        tags = {
            "train": {f"epoch_{name}": v for name, v in scalars.items() if not name.startswith("val_")},
            "validation": {f"epoch_{name[4:]}": v for name, v in scalars.items() if name.startswith("val_")},
        }
        tags["validation"]["checkpoint_kept"] = float(str(epoch) in manifest["kept"])
        rows = [f"| {metric} | {', '.join(map(str, ranked))} |" for metric, ranked in manifest["ranked"].items()]
        tags["validation"]["kept_checkpoints"] = "\n".join(["| metric | kept epochs, best first |", "|---|---|",
                                                            *rows])
        for run, values in tags.items():
            with self.writers[run].as_default(step=epoch):
                for tag, value in values.items():
                    if epoch not in held.get(run, {}).get(tag, ()):
                        (tf.summary.text if isinstance(value, str) else tf.summary.scalar)(tag, value)
            self.writers[run].flush()


def event_steps(folder: Path) -> dict[str, set[int]]:
    """{tag: steps} of the summaries in the event files of a TensorBoard run folder ({} when it has none).

    A killed writer can leave its last record cut short: TensorBoard's loader stops reading a file there (as
    TensorBoard itself does), so that record counts as not written.
    """
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    steps = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                steps.setdefault(value.tag, set()).add(event.step)
    return steps


def wandb_run(run_dir: str | Path, cfg: Config | None, job_type: str, setting: str = "log.wandb=True"):
    """Starts or resumes the W&B run of `run_dir` (mode and project from `cfg.log`); the caller finishes it.

    The first call draws an id and keeps it in RUN_DIR/wandb/run.json; later calls (a resumed fit, soup, analyze)
    reopen that id. Offline, each call writes its own RUN_DIR/wandb/offline-run-*-ID folder; `wandb sync` uploads
    them into the one run, in order.

    Args:
        run_dir: the run directory.
        cfg: its config (logged as the run's config); None reads RUN_DIR/config.json.
        job_type: what this process is ("fit", "soup", "analyze").
        setting: what asked for W&B, for the error when wandb is missing.
    """
    wandb = require("wandb", setting)
    run_dir = Path(run_dir)
    if cfg is None:
        cfg = config_from_dict(atomic.read_json(run_dir / "config.json"))
    record_path = run_dir / WANDB_DIR / WANDB_RECORD
    if record_path.is_file():
        record = atomic.read_json(record_path)
        if not (isinstance(record, dict) and isinstance(record.get("id"), str)
                and isinstance(record.get("project"), str)):
            raise UserError(f"{record_path} should hold {{\"id\": ..., \"project\": ...}} (the run's W&B run); "
                            f"received {record!r}. Restore it, or delete it to start a new W&B run.")
    else:
        record = {"id": secrets.token_hex(4), "project": cfg.log.wandb_project}  # 8 characters, like wandb's ids
        atomic.write_json(record_path, record)
    return wandb.init(
        project=record["project"],
        id=record["id"],
        resume="allow",
        name=run_dir.resolve().name,
        mode=cfg.log.wandb_mode,
        dir=str(run_dir),
        config=config_to_dict(cfg),
        job_type=job_type,
        settings=_durable_settings(wandb),
    )


def _durable_settings(wandb):
    """Settings that get each logged epoch into the offline .wandb file within about a second.

    wandb-core buffers the file and writes it every `x_transaction_log_flush_interval` (15 s by default) or when the
    run finishes; a fit killed with SIGKILL (or a node lost) never finishes, and every epoch logged in the last 15 s
    (all of them, with short epochs) was missing from the W&B run after `--resume`.
    """
    fields = getattr(wandb.Settings, "model_fields", {})
    if "x_transaction_log_flush_interval" in fields:
        return wandb.Settings(x_transaction_log_flush_interval=WANDB_FLUSH_S)
    return None


class WandbLogger(keras.callbacks.Callback):
    """Logs each epoch's scalars (val metrics and learning rate included) to the run's W&B run, step = epoch;
    at the end, each metric's kept checkpoints go to the run summary.

    A kill between the epoch's saved state and its W&B line (or within the moment before wandb writes the line to
    its file) leaves the epoch in history.csv but not in W&B, and `--resume` does not train it again. So each epoch
    is recorded in RUN_DIR/wandb/logged.json once it is surely in W&B's file, and a resume first logs the finished
    epochs after the recorded one from their history rows, under their own steps.

    Args:
        cfg: the run's config.
        run_dir: the run directory.
        schedule: the learning-rate schedule.
        rows: history rows of the epochs already finished (from the state on resume).
    """

    def __init__(self, cfg: Config, run_dir: Path, schedule, rows: list[dict] = ()):
        super().__init__()
        self.cfg, self.run_dir, self.schedule, self.rows = cfg, run_dir, schedule, list(rows)
        self.run = None
        self._logged = self._recorded = 0  # the last epoch handed to wandb; the last one recorded in logged.json
        self._lock = threading.Lock()
        self._timers: list[threading.Timer] = []

    def on_train_begin(self, logs=None):
        folder = self.run_dir / WANDB_DIR
        known = (folder / WANDB_RECORD).is_file()
        self.run = wandb_run(self.run_dir, self.cfg, job_type="fit")
        # A Ctrl-C or SIGTERM skips on_train_end; the commands' exit (cli.run) still runs exit handlers.
        atexit.register(self._finish)
        self._recorded = _logged_epoch(folder / WANDB_LOGGED, self.run.id, known, self.rows)
        if not known:  # a new W&B run: from now on, no logged.json means a run from before it existed
            atomic.write_json(folder / WANDB_LOGGED, {"id": self.run.id, "epoch": 0})
        for row in self.rows:
            if row["epoch"] > self._recorded:
                self._log(history_scalars(row), row["epoch"])

    def on_epoch_end(self, epoch, logs=None):
        self._log(epoch_scalars(logs, self.model, self.schedule), epoch + 1)

    def on_train_end(self, logs=None):
        self.run.summary["kept_checkpoints"] = checkpoints.read_manifest(self.run_dir)["ranked"]
        atexit.unregister(self._finish)
        self._finish()

    def _finish(self) -> None:
        """Finishes the W&B run and records its last epoch: finish() returns once wandb-core has every line (a
        kill -9 right after it left them all in the file)."""
        for timer in self._timers:
            timer.cancel()
        self.run.finish()
        self._record(self._logged)

    def _log(self, scalars: dict[str, float], epoch: int) -> None:
        # commit=True: with an explicit step wandb otherwise holds the row open until a later step or finish, so
        # the last epoch before a kill never reached the file.
        self.run.log(scalars, step=epoch, commit=True)
        self._logged = epoch
        # Against a kill -9; a stopped or finished fit records its last epoch in _finish.
        timer = threading.Timer(WANDB_SETTLE_S, self._record, args=(epoch,))
        timer.daemon = True
        timer.start()
        self._timers = [t for t in self._timers if t.is_alive()] + [timer]

    def _record(self, epoch: int) -> None:
        with self._lock:
            if epoch > self._recorded:
                atomic.write_json(self.run_dir / WANDB_DIR / WANDB_LOGGED, {"id": self.run.id, "epoch": epoch})
                self._recorded = epoch


def _logged_epoch(path: Path, run_id: str, known: bool, rows: list[dict]) -> int:
    """The last epoch W&B run `run_id` surely holds: logged.json's, 0 for a W&B run new to this fit or another
    run's record; for a run directory that W&B logged to before logged.json existed (`known`: run.json was there;
    no logged.json), every finished epoch, as before."""
    if not path.is_file():
        return rows[-1]["epoch"] if known and rows else 0
    record = atomic.read_json(path)
    if not (isinstance(record, dict) and isinstance(record.get("id"), str)
            and isinstance(record.get("epoch"), int) and not isinstance(record.get("epoch"), bool)):
        raise UserError(f"{path} should hold {{\"id\": ..., \"epoch\": ...}} (the last epoch in the W&B run); "
                        f"received {record!r}. Delete it to log every finished epoch to W&B again.")
    return record["epoch"] if record["id"] == run_id else 0


def history_scalars(row: dict) -> dict[str, float]:
    """What the loggers logged for the epoch of a history.csv row: its scalar logs, and "lr" as "learning_rate"."""
    scalars = {name: value for name, value in row.items() if name not in ("epoch", "updates", "lr", "wall_time_s")}
    scalars["learning_rate"] = row["lr"]
    return scalars
