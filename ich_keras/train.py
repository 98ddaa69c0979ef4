"""Training one model into a run directory: what `python -m ich_keras.fit` runs.

    from ich_keras.train import run
    results = run(cfg, "runs/demo")                    # a new run
    results = run(cfg, "runs/demo", resume_run=True)   # continue it after a crash or kill -9

A new run is checked in full before anything is written (`run_start.prepare`: the directory, the model name, the
init file and the data scan; then `run`: the model build with its init weights, the batch against the train split,
the loggers); only then are the split lists and `config.json` written (`run_start`), under the run directory's lock
(`ich_keras.folder_lock`: one fit at a time). A directory whose run never finished an epoch may be started again;
one holding checkpoints of finished epochs but no run state is refused, since a start over would delete them.
Each epoch, `checkpoints.TopKCheckpoints` scores val and keeps the top-k, `resume.SaveRunState` saves the state and
only then deletes files no ranking names, and a non-finite loss stops training with an error before anything of
that epoch is kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
from pathlib import Path

import keras
import numpy as np

from ich_keras import (atomic, checkpoints, data, distributed, folder_lock, host_memory, models, resume,
                       run_logging, run_start, split_lists, summaries, weights_origin)
from ich_keras.config import PRECISION_POLICIES, Config, config_to_dict
from ich_keras.errors import UserError
from ich_keras.evaluation import evaluate, forward
from ich_keras.image_files import file_digest
from ich_keras.init_weights import build_with_weights, load_weights
from ich_keras.optimizers import GroupedAdamW
from ich_keras.rundir import Run, load_run
from ich_keras.schedules import WarmupCosineRestarts
from ich_keras.weight_files import ModelSource


@contextlib.contextmanager
def global_settings(cfg: Config):
    """Sets keras' global dtype policy and distribution for the run and restores them afterwards."""
    devices = keras.distribution.list_devices() if cfg.train.distribution == "data_parallel" else []
    # Checked before any global state changes: an error here must leave the process's policy as it was.
    if devices and cfg.train.batch_size % len(devices):
        raise UserError(
            f"train.batch_size must be divisible by the {len(devices)} devices data_parallel splits it over. "
            f"Received: train.batch_size={cfg.train.batch_size}"
        )
    previous_policy = keras.config.dtype_policy()
    previous_distribution = keras.distribution.distribution()
    try:
        keras.config.set_dtype_policy(PRECISION_POLICIES[cfg.train.precision])
        if devices:
            keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        yield
    finally:
        keras.config.set_dtype_policy(previous_policy)
        keras.distribution.set_distribution(previous_distribution)


def steps_and_updates(cfg: Config, num_train: int) -> tuple[int, int]:
    """(batches per epoch, optimizer updates per epoch); batches are a whole number of accumulation groups."""
    t = cfg.train
    effective_batch = t.batch_size * t.grad_accum_steps
    # Also with train.steps_per_epoch set: the repeated split would put images twice into one update.
    if num_train < effective_batch:
        raise UserError(
            f"The train split ({num_train} images) is smaller than one effective batch "
            f"(train.batch_size * train.grad_accum_steps = {effective_batch}). "
            f"Received: train.batch_size={t.batch_size}"
        )
    if t.steps_per_epoch:
        steps = t.steps_per_epoch
        if steps % t.grad_accum_steps:
            raise UserError(
                f"train.steps_per_epoch must be a multiple of train.grad_accum_steps={t.grad_accum_steps}. "
                f"Received: train.steps_per_epoch={steps}"
            )
    else:
        steps = num_train // effective_batch * t.grad_accum_steps
    return steps, steps // t.grad_accum_steps


def make_schedule(cfg: Config, updates_per_epoch: int) -> WarmupCosineRestarts:
    t = cfg.train
    return WarmupCosineRestarts(
        peak=t.learning_rate,
        first_decay_steps=max(1, round(t.restart_epochs * updates_per_epoch)),
        warmup_steps=round(t.warmup_epochs * updates_per_epoch),
        t_mul=t.restart_t_mul,
        m_mul=t.restart_m_mul,
        min_learning_rate=t.min_learning_rate,
    )


def compile_model(model: keras.Model, cfg: Config, schedule) -> None:
    """AdamW (`GroupedAdamW`: Keras' update, fewer kernels) with the config's clipping, accumulation and EMA;
    cross-entropy on (soft) one-hot labels."""
    t = cfg.train
    optimizer = GroupedAdamW(
        learning_rate=schedule,
        weight_decay=t.weight_decay,
        global_clipnorm=t.global_clipnorm or None,
        gradient_accumulation_steps=t.grad_accum_steps if t.grad_accum_steps > 1 else None,
        use_ema=t.ema,
        ema_momentum=t.ema_momentum,
    )
    loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=t.label_smoothing)
    model.compile(
        optimizer=optimizer, loss=loss, metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")]
    )


def evaluate_test(run: Run, model: keras.Model, batch_size: int) -> dict:
    """Test-split metrics of the best checkpoint by each ranked metric (`Run.best`; the test split never selects
    anything)."""
    test = run.dataset("test", batch_size)
    scored = {}
    results = {}
    for metric, epochs in run.manifest["ranked"].items():
        if not epochs:
            continue
        best = run.best(metric).epoch
        if best not in scored:
            load_weights(model, run.checkpoint_path(best), new_head=False)
            labels, logits = forward(model, test)
            scored[best] = evaluate(labels, logits, list(run.class_names))
        results[metric] = {"epoch": best, "val": run.manifest["epochs"][str(best)], "test": scored[best]}
    return results


def _keras_verbosity(setting: int, stream) -> int:
    """Keras' `verbose` for `log.verbose`. Its progress bar redraws one line with control characters even where
    nothing draws them: in a log file (a batch job, nohup, `2> fit.log`) it is one long line of escape codes. There,
    where `stream` is neither a terminal nor a notebook's, setting 1 prints one line per epoch instead (Keras' 2)."""
    redrawn = stream.isatty() or "ipykernel" in sys.modules
    return 2 if setting == 1 and not redrawn else setting


def _callbacks(cfg: Config, run_info: Run, manifest: dict, rows: list, elapsed: float, schedule,
               writer: bool) -> tuple[list, resume.SaveRunState]:
    """(top-k checkpoints, run state and loggers, the run state's saver, which times the training); with several
    processes only the writer's write files."""
    t = cfg.train
    topk = checkpoints.TopKCheckpoints(run_info.path, run_info.dataset("val", t.batch_size), run_info.class_names,
                                       manifest, ema=t.ema, verbose=cfg.log.verbose if writer else 0, writer=writer)
    saver = resume.SaveRunState(run_info.path, topk, rows, t.seed, elapsed, schedule, writer=writer)
    # After topk: it adds the val metrics to the epoch logs the loggers write.
    loggers = run_logging.logging_callbacks(cfg, run_info.path, schedule, rows) if writer else []
    return [topk, saver, *loggers], saver


def extended(run_info: Run, epochs: int, finished: int) -> Run:
    """The run with `train.epochs` set to `epochs` (nothing written).

    Extending is well defined: the schedule is a function of the update count alone (warmup, then cosine restarts
    every `restart_epochs`), not of the total epoch count, so more epochs continue the same curve.

    Raises:
        UserError when `epochs` is below the `finished` epochs (their checkpoints and state cannot be undone).
    """
    if epochs < finished:
        raise UserError(f"The run {str(run_info.path)!r} has already finished {finished} epochs; train.epochs can "
                        f"extend it but not go below that. Received: train.epochs={epochs}")
    if epochs == run_info.config.train.epochs:
        return run_info
    print(f"Schedule of {run_info.path}: {run_info.config.train.epochs} -> {epochs} epochs "
          f"({finished} finished)")
    train = dataclasses.replace(run_info.config.train, epochs=epochs)
    return dataclasses.replace(run_info, config=dataclasses.replace(run_info.config, train=train))


def _devices() -> tuple[str, ...]:
    import jax

    devices = jax.devices()
    kinds = {}
    for device in devices:
        kinds[device.device_kind] = kinds.get(device.device_kind, 0) + 1
    return tuple(f"{n} x {kind} ({devices[0].platform})" for kind, n in kinds.items())


def _host_memory() -> str:
    import jax

    # Only XLA's CPU runtime allocates a step's blocks in the host memory these settings are for.
    return host_memory.in_effect(dict(os.environ)) if jax.default_backend() == "cpu" else ""


def _logs(cfg: Config) -> tuple[str, ...]:
    logs = [resume.HISTORY_FILE]
    if cfg.log.tensorboard:
        logs.append("tensorboard/")
    if cfg.log.wandb:
        logs.append(f"{run_logging.WANDB_DIR}/ (W&B {cfg.log.wandb_mode})")
    return tuple(logs)


def fit_facts(run_info: Run, model: keras.Model, steps: int, updates: int, finished: int) -> summaries.FitFacts:
    """What the start-up summary shows, read from the run, the built (uncompiled) model and the jax devices."""
    cfg, t = run_info.config, run_info.config.train
    splits = run_info.splits.splits
    counts = {split: tuple(int(n) for n in np.bincount(splits[split].labels, minlength=run_info.num_classes))
              for split in ("train", "val", "test") if split in splits}
    source = cfg.data.source
    carved = source == data.DIGITS or not (Path(source) / "val").is_dir()
    return summaries.FitFacts(
        run_dir=str(run_info.path), model=cfg.model.name,
        parameters=models.parameter_count(model),  # as timm and the models table count
        devices=_devices(),
        precision=t.precision, class_names=run_info.class_names, split_counts=counts, val_carved=carved,
        batch_size=t.batch_size, grad_accum_steps=t.grad_accum_steps, steps_per_epoch=steps,
        updates_per_epoch=updates, epochs=t.epochs, first_epoch=finished,
        keep=tuple((r.metric, r.mode, r.k) for r in cfg.checkpoint.keep), logs=_logs(cfg),
        host_memory=_host_memory())


def _note_a_head_of_other_classes(init: str, run_info: Run) -> None:
    """Says when model.init came from a run of other classes at this class count: its head fits and is kept, its
    rows starting as that run's classes (at another class count the loader draws a new head and says so)."""
    origin = weights_origin.other_classes(init, run_info.class_names)
    if origin is not None and len(origin[1]) == run_info.num_classes:
        other, classes = origin
        print(f"Note: model.init comes from a run of other classes ({other}: {classes}); its head has this run's "
              f"class count and is kept, each row starting as that run's class in its place, for training to "
              f"retrain.", flush=True)


def _checked_start(cfg: Config, workdir: Path, resume_run: bool) -> tuple[Run, resume.RunState | None, tuple | None]:
    """Every check of the start, nothing written: (the run to train, its saved state for a resume, the state file's
    stamp, which process 0 compares again before it writes)."""
    run_logging.check_loggers(cfg, workdir)  # a missing logger package or folder it cannot write: before any write
    run_info = run_start.load_resumed(workdir, cfg.data.source) if resume_run else run_start.prepare(cfg, workdir)
    stamp = run_start.state_stamp(workdir)
    state = resume.load_state(workdir) if resume_run else None
    if resume_run and state is None:
        run_start.check_no_checkpoints_without_state(workdir)
        run_start.check_init(run_info.config)  # no epoch finished: it starts from model.init again
    if resume_run:
        run_info = extended(run_info, cfg.train.epochs, state.epoch if state else 0)
        # What it prints is this command's (--quiet, --set log.verbose); config.json keeps the run's.
        log = dataclasses.replace(run_info.config.log, verbose=cfg.log.verbose)
        run_info = dataclasses.replace(run_info, config=dataclasses.replace(run_info.config, log=log))
    return run_info, state, stamp


def _settings_text(cfg: Config) -> str:
    """The config every process must share, as text: all but where each host finds its files (data.source,
    model.init: their contents are compared instead), how fast it reads them (data.workers, data.cache) and what it
    prints (log)."""
    settings = config_to_dict(cfg)
    settings.pop("log")
    for own in ("source", "workers", "cache"):
        settings["data"].pop(own)
    settings["model"].pop("init")
    return json.dumps(settings, sort_keys=True)


def _what_hosts_read(run_info: Run, init: str) -> dict[str, str]:
    """{what differing means: text every process must hold alike}, the same keys on every process. Each host reads
    its own data folder and model.init: copies that differ would train on other images without a word, or start the
    replicas from other weights."""
    return {
        "built different split lists": split_lists.splits_text(run_info.splits),
        "read other pictures under the same names": data.files_text(run_info.config.data.source, run_info.splits),
        "read different model.init files": file_digest(init) if init else "",
    }


def _checked_on_every_process(cfg: Config, workdir: Path, resume_run: bool):
    """`_checked_start` on every process of the job, and the settings and files they read compared:
    (run_info, state, stamp, the init file to load or "")."""
    # With several processes, one whose checks fail (its host lacks the images, say) stops the others here instead
    # of leaving them in the model build's collectives. Nothing in this block computes under the distribution.
    with distributed.all_or_none("checking the run"):
        run_info, state, stamp = _checked_start(cfg, workdir, resume_run)
        init = run_info.config.model.init if state is None else ""  # a resume restores every weight from its state
        shared = _what_hosts_read(run_info, init) if distributed.process_count() > 1 else {}
    # Processes of other settings would train one mixture of runs, or fail apart later (another epoch count).
    distributed.check_same("were started with different settings", _settings_text(run_info.config),
                           "Start every process with the same --config and --set; only data.source, model.init "
                           "(their files are compared), data.workers, data.cache and log.* may differ.")
    for difference, text in shared.items():
        distributed.check_same(difference, text)
    return run_info, state, stamp, init


@contextlib.contextmanager
def _locked_run_directory(workdir: Path, stamp):
    """Holds the run directory's lock: one fit at a time (a second would delete checkpoints the first one's manifest
    names). Raises a UserError where another fit finished epochs here since `stamp` was taken, as this one started."""
    with folder_lock.held(workdir, "fit", "pick another --workdir"):
        # A soup of this run reads the checkpoints this fit deletes as better epochs arrive (the soup checks ours
        # once it holds its folder's lock: whichever comes second stops).
        folder_lock.check_not_held(workdir / "soups", "training it further",
                                   "it reads the run's kept checkpoints, which a fit deletes as better epochs arrive")
        if run_start.state_stamp(workdir) != stamp:
            raise UserError(f"Another fit wrote the run state while this one started; start it again (with "
                            f"--resume to continue that run). Received: workdir={str(workdir)!r}")
        yield


def run(cfg: Config, workdir: str | Path, resume_run: bool = False, quiet: bool = False) -> dict:
    """Trains `cfg` into `workdir` (or continues the run there) and evaluates the test split. Python's, NumPy's and
    Keras' global generators are seeded with `train.seed` and left so, as in a fresh process.

    Args:
        cfg: the config (for a resume, the run's own `config.json`; a different `train.epochs` extends or
            shortens the schedule, down to the finished epochs: see `extended`; a different `data.source` is where
            the run's images are now, `Run.images_at`; `log.verbose` is what this command prints).
        workdir: the run directory.
        resume_run: continue from `workdir/state/state.npz` (from scratch if no epoch completed).
        quiet: print as `log.verbose = 0` (the command's --quiet); config.json keeps the config's log settings, so a
            later --resume prints as the run was configured to.

    Returns:
        The dict written to `workdir/results.json`.
    """
    workdir = Path(workdir)
    configured_log = cfg.log
    if quiet:
        cfg = dataclasses.replace(cfg, log=dataclasses.replace(cfg.log, verbose=0))
    # Seed first: importing the model registry may already draw random numbers (initializer seeds), and a fresh
    # process should reproduce a fresh run exactly.
    keras.utils.set_random_seed(cfg.train.seed)
    if cfg.train.distribution == "data_parallel":
        distributed.initialize()  # before the first JAX computation
    writer = distributed.is_writer()
    run_info, state, stamp, init = _checked_on_every_process(cfg, workdir, resume_run)
    finished = state.epoch if state else 0
    cfg, t = run_info.config, run_info.config.train
    keras.utils.set_random_seed(t.seed)

    with global_settings(cfg), contextlib.ExitStack() as held_until_the_end:
        model = (build_with_weights(run_info.build_model, init, head_seed=cfg.model.head_seed) if init
                 else run_info.build_model())
        if init and writer:
            _note_a_head_of_other_classes(init, run_info)
        steps, updates = steps_and_updates(cfg, len(run_info.splits.splits["train"]))
        if writer:
            print(summaries.fit_summary(fit_facts(run_info, model, steps, updates, finished)), flush=True)
        schedule = make_schedule(cfg, updates)
        compile_model(model, cfg, schedule)
        if state is not None:
            resume.restore_state(model, state)
            manifest, rows, elapsed = state.record["manifest"], state.record["history"], state.record["wall_time_s"]
            if writer:
                print(f"Resuming {workdir} after epoch {state.epoch} of {t.epochs}")
        else:
            manifest, rows, elapsed = checkpoints.empty_manifest(cfg.checkpoint.keep), [], 0.0
        # What the kept checkpoints must hold, read on every process: a model's variables are read with collectives.
        expected = None if state is None else ModelSource(model).layout()
        # Also the barrier after which the other processes read process 0's files; a lock held by another fit stops
        # every process of this one.
        with distributed.all_or_none("starting the run directory"):
            if writer:  # every check above passed: only now is anything written
                held_until_the_end.enter_context(_locked_run_directory(workdir, stamp))
                if state is not None:  # under the lock: no other fit is changing checkpoints/
                    resume.check_checkpoints(workdir, state, expected)
                as_configured = dataclasses.replace(run_info.config, log=configured_log)
                run_start.start_run_directory(dataclasses.replace(run_info, config=as_configured), resume_run,
                                              manifest, rows, finished < t.epochs)

        callbacks, saver = _callbacks(cfg, run_info, manifest, rows, elapsed, schedule, writer)
        if finished < t.epochs:
            # Keras writes its progress bar to stdout; the project's progress goes to stderr, so stdout keeps
            # the start-up lines (summary, notes, resuming) and the results, never a bar (a redirect or a pipe).
            with contextlib.redirect_stdout(sys.stderr):
                model.fit(
                    run_info.train_dataset(steps, finished),
                    epochs=t.epochs,
                    initial_epoch=finished,
                    steps_per_epoch=steps,
                    callbacks=callbacks,
                    verbose=_keras_verbosity(cfg.log.verbose, sys.stderr) if writer else 0,
                    shuffle=False,  # the dataset shuffles itself, per epoch and resumably
                )
        results = {
            "epochs": t.epochs,
            "train_wall_time_s": saver.wall_time,
            "best": evaluate_test(load_run(workdir, cfg.data.source), model, t.batch_size),
        }
        if writer:
            atomic.write_json(workdir / "results.json", results)
    return results
