"""Train one model into a run directory: `python -m ich_keras.fit`.

    python -m ich_keras.fit --config configs/demo.toml                 # -> runs/demo
    python -m ich_keras.fit --config configs/coatnet0.toml --set train.epochs=10 --workdir runs/c0_short
    python -m ich_keras.fit --resume runs/demo                          # after a crash or kill -9

`main()` only parses arguments; `run(cfg, workdir)` does the work and is what tests call. The run directory layout
is the contract with `ich_keras.soup` / `ich_keras.analyze` (see ../shared/DESIGN.md and `ich_keras.rundir`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path

import keras
import numpy as np

import ich_keras  # noqa: F401  (sets the JAX backend before keras is imported)
from ich_keras import atomic, checkpoints, cli, compile_cache, data, resume
from ich_keras.config import Config, config_from_dict, config_to_dict, load_config
from ich_keras.evaluation import evaluate, forward
from ich_keras.init_weights import load_weights
from ich_keras.rundir import Run, load_run
from ich_keras.schedules import WarmupCosineRestarts

PRECISION_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


@contextlib.contextmanager
def global_settings(cfg: Config):
    """Sets keras' global dtype policy and distribution for the run and restores them afterwards."""
    previous_policy = keras.config.dtype_policy()
    previous_distribution = keras.distribution.distribution()
    keras.config.set_dtype_policy(PRECISION_POLICIES[cfg.train.precision])
    if cfg.train.distribution == "data_parallel":
        devices = keras.distribution.list_devices()
        if cfg.train.batch_size % len(devices):
            raise ValueError(
                f"train.batch_size must be divisible by the {len(devices)} devices data_parallel splits it over. "
                f"Received: train.batch_size={cfg.train.batch_size}"
            )
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous_policy)
        keras.distribution.set_distribution(previous_distribution)


def steps_and_updates(cfg: Config, num_train: int) -> tuple[int, int]:
    """(batches per epoch, optimizer updates per epoch); batches are a whole number of accumulation groups."""
    t = cfg.train
    if t.steps_per_epoch:
        steps = t.steps_per_epoch
        if steps % t.grad_accum_steps:
            raise ValueError(
                f"train.steps_per_epoch must be a multiple of train.grad_accum_steps={t.grad_accum_steps}. "
                f"Received: train.steps_per_epoch={steps}"
            )
    else:
        steps = num_train // (t.batch_size * t.grad_accum_steps) * t.grad_accum_steps
        if steps == 0:
            raise ValueError(
                f"The train split ({num_train} images) is smaller than one effective batch "
                f"(train.batch_size * train.grad_accum_steps = {t.batch_size * t.grad_accum_steps}). "
                f"Received: train.batch_size={t.batch_size}"
            )
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
    """AdamW with the config's clipping, accumulation and EMA; cross-entropy on (soft) one-hot labels."""
    t = cfg.train
    optimizer = keras.optimizers.AdamW(
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


class WandbLogger(keras.callbacks.Callback):
    """Logs each epoch's logs to Weights & Biases (offline by default: `wandb sync` uploads later)."""

    def __init__(self, cfg: Config, run_dir: Path):
        super().__init__()
        try:
            import wandb
        except ImportError:
            raise ValueError(
                "log.wandb = true needs the wandb package (pip install wandb). Received: log.wandb=True"
            ) from None
        self.wandb = wandb
        self.run = wandb.init(
            project=cfg.log.wandb_project,
            mode=cfg.log.wandb_mode,
            dir=str(run_dir),
            name=run_dir.name,
            config=config_to_dict(cfg),
            resume="allow",
            id=run_dir.name,
        )

    def on_epoch_end(self, epoch, logs=None):
        self.run.log({k: float(v) for k, v in (logs or {}).items() if np.ndim(v) == 0}, step=epoch + 1)

    def on_train_end(self, logs=None):
        self.run.finish()


def start_run(cfg: Config, workdir: str | Path) -> Config:
    """Creates the run directory: resolved config.json, classes.json, split lists (and bad_images.txt)."""
    workdir = Path(workdir)
    if (workdir / "config.json").exists():
        raise ValueError(
            f"The run directory already holds a run; continue it with --resume or pick another --workdir. "
            f"Received: workdir={str(workdir)!r}"
        )
    cfg = dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, source=data.resolve_source(cfg.data.source))
    )
    from ich_keras import models  # the registry imports every architecture; only now is it needed

    models.entry(cfg.model.name)  # an unknown model fails before the data scan
    workdir.mkdir(parents=True, exist_ok=True)
    data.prepare_splits(cfg.data, workdir)
    # config.json last: its presence marks a complete run start (a crash before it leaves a restartable dir).
    atomic.write_json(workdir / "config.json", config_to_dict(cfg))
    return cfg


def evaluate_test(run: Run, model: keras.Model, batch_size: int) -> dict:
    """Test-split metrics of the best checkpoint of each ranked metric (the test split never selects anything)."""
    test = run.dataset("test", batch_size)
    scored = {}
    results = {}
    for metric, epochs in run.manifest["ranked"].items():
        if not epochs:
            continue
        best = epochs[0]
        if best not in scored:
            load_weights(model, run.checkpoint_path(best), new_head=False)
            labels, logits = forward(model, test)
            scored[best] = evaluate(labels, logits, list(run.class_names))
        results[metric] = {"epoch": best, "val": run.manifest["epochs"][str(best)], "test": scored[best]}
    return results


def run(cfg: Config, workdir: str | Path, resume_run: bool = False) -> dict:
    """Trains `cfg` into `workdir` (or continues the run there) and evaluates the test split.

    Args:
        cfg: the config (for a resume, the run's own `config.json`).
        workdir: the run directory.
        resume_run: continue from `workdir/state/state.npz` (from scratch if no epoch completed).

    Returns:
        The dict written to `workdir/results.json`.
    """
    workdir = Path(workdir)
    # Seed first: importing the model registry may already draw random numbers (initializer seeds), and a fresh
    # process should reproduce a fresh run exactly.
    keras.utils.set_random_seed(cfg.train.seed)
    if not resume_run:
        cfg = start_run(cfg, workdir)
    run_info = load_run(workdir)
    t = cfg.train
    state = resume.load_state(workdir) if resume_run else None
    initial_epoch = state.epoch if state else 0
    keras.utils.set_random_seed(t.seed)

    with global_settings(cfg):
        model = run_info.build_model()
        if cfg.model.init and state is None:
            load_weights(model, cfg.model.init)
        steps, updates = steps_and_updates(cfg, len(run_info.splits.splits["train"]))
        schedule = make_schedule(cfg, updates)
        compile_model(model, cfg, schedule)

        if state is not None:
            resume.restore_state(model, state)
            manifest, rows = state.record["manifest"], state.record["history"]
            elapsed = state.record["wall_time_s"]
            print(f"Resuming {workdir} after epoch {initial_epoch} of {t.epochs}")
        else:
            manifest, rows, elapsed = checkpoints.empty_manifest(cfg.checkpoint.keep), [], 0.0
        # A kill between an epoch's manifest write and its state write leaves a newer manifest and files behind:
        # the state's copy is the truth.
        checkpoints.write_manifest(workdir, manifest)
        checkpoints.delete_unreferenced(workdir, manifest)
        resume.write_history(workdir, rows)

        topk = checkpoints.TopKCheckpoints(
            workdir,
            run_info.dataset("val", t.batch_size),
            run_info.class_names,
            manifest,
            ema=t.ema,
            verbose=cfg.log.verbose,
        )
        saver = resume.SaveRunState(workdir, topk, rows, t.seed, elapsed, schedule)
        callbacks = [topk, saver]
        if cfg.log.tensorboard:
            callbacks.append(keras.callbacks.TensorBoard(log_dir=str(workdir / "tensorboard")))
        if cfg.log.wandb:
            callbacks.append(WandbLogger(cfg, workdir))

        if initial_epoch < t.epochs:
            train = run_info.train_dataset(steps, initial_epoch)
            model.fit(
                train,
                epochs=t.epochs,
                initial_epoch=initial_epoch,
                steps_per_epoch=steps,
                callbacks=callbacks,
                verbose=cfg.log.verbose,
                shuffle=False,  # the dataset shuffles itself, per epoch and resumably
            )
        final = load_run(workdir)
        results = {
            "epochs": t.epochs,
            "train_wall_time_s": saver.wall_time,
            "best": evaluate_test(final, model, t.batch_size),
        }
    atomic.write_json(workdir / "results.json", results)
    return results


def _summary(results: dict) -> str:
    lines = []
    for metric, best in results["best"].items():
        test = best["test"]
        lines.append(
            f"best {metric}: epoch {best['epoch']} - val {metric} {best['val'][metric]:.4f} - "
            f"test accuracy {test['accuracy']:.4f}, macro F1 {test['f1']:.4f}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    """`python -m ich_keras.fit`: parses, loads the config, calls `run`; returns the exit status."""
    parser = cli.parser("python -m ich_keras.fit", __doc__)
    parser.add_argument("--config", help="TOML config file for a new run")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="config override, repeatable (the value is TOML; a bare word is a string)")
    parser.add_argument("--workdir", help="run directory of a new run (default: runs/<config file stem>)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR with its config.json")
    parser.add_argument("--quiet", action="store_true", help="no progress bars (log.verbose = 0)")
    args = parser.parse_args(argv)
    if bool(args.config) == bool(args.resume):
        parser.error("give exactly one of --config FILE or --resume RUN_DIR")
    if args.resume:
        if args.set or args.workdir:
            parser.error("--resume takes the run's own config.json; --set and --workdir do not apply")
        config_path = Path(args.resume) / "config.json"
        if not config_path.is_file():
            parser.error(f"no run to resume: {config_path} does not exist")
        cfg = config_from_dict(json.loads(config_path.read_text()))
        workdir = Path(args.resume)
    else:
        cfg = load_config(args.config, args.set)
        workdir = Path(args.workdir or Path("runs") / Path(args.config).stem)
    if args.quiet:
        cfg = dataclasses.replace(cfg, log=dataclasses.replace(cfg.log, verbose=0))
    compile_cache.enable()
    start = time.perf_counter()
    results = run(cfg, workdir, resume_run=bool(args.resume))
    print(_summary(results))
    print(f"Run directory: {workdir} ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    cli.run(main)
