"""Keras' AdamW against `ich_keras.optimizers.GroupedAdamW`: the training step's compilation, kernels and speed.

    python benchmarks/optimizer_update.py --size 64 --batch 16 --repeats 3
    python benchmarks/optimizer_update.py --size 224 --batch 8 --repeats 2
    python benchmarks/optimizer_update.py --size 224 --batch 8 --repeats 2 --schedule

Each measurement is a fresh process, the two optimizers in turn over `--repeats` rounds: coatnet_0 (10 classes)
compiled as `ich_keras.fit` compiles it (lr 1e-4, or with `--schedule` a warmup + cosine-restarts schedule as fit's;
wd 1e-3, global clipnorm 1.0, CE from logits), the optimizer built
(its moments created), then Keras' JAX training step (`model.train_step`) lowered and compiled by XLA ahead of time
(no persistent cache), timed apart: the lowering (Keras' tracing and StableHLO) and XLA's compilation; the number of
fusions (kernels XLA generates code for) in the optimised program; the mean of `--steps` steps after a first one.
The last column compares the weights after those steps with Keras' AdamW's of the same round (max |a - b| / max
|a|)."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

OPTIMIZERS = ("keras AdamW", "GroupedAdamW")


def child(optimizer: str, size: int, batch: int, steps: int, weights_file: str, schedule: bool) -> dict:
    import time

    import ich_keras  # noqa: F401  (selects the JAX backend before keras is imported)
    import jax
    import keras
    import numpy as np

    from ich_keras import models
    from ich_keras.optimizers import GroupedAdamW
    from recipe import LEARNING_RATE, compile_as_fit, fit_like_schedule, random_batch

    keras.utils.set_random_seed(0)
    model = models.build("coatnet_0_rw_224", 10, size)
    learning_rate = fit_like_schedule() if schedule else LEARNING_RATE
    compile_as_fit(model, keras.optimizers.AdamW if optimizer == OPTIMIZERS[0] else GroupedAdamW, learning_rate)
    data = (*random_batch(batch, size, 10), None)
    start = time.perf_counter()
    model.optimizer.build(model.trainable_variables)  # its moments: zeros of every variable's shape
    jax.block_until_ready([v.value for v in model.optimizer.variables])
    built = time.perf_counter() - start
    state = tuple([v.value for v in variables] for variables in (
        model.trainable_variables, model.non_trainable_variables, model.optimizer.variables, model.metrics_variables))

    start = time.perf_counter()
    lowered = jax.jit(model.train_step, donate_argnums=0).lower(state, data)
    lowered_at = time.perf_counter()
    step = lowered.compile()
    compiled_at = time.perf_counter()
    fusions = len(re.findall(r" fusion\(", step.as_text()))

    _, state = step(state, data)
    jax.block_until_ready(state)
    start_steps = time.perf_counter()
    for _ in range(steps):
        _, state = step(state, data)
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start_steps
    np.savez(weights_file, *[np.asarray(value) for value in state[0]])
    return {"build_s": built, "lower_s": lowered_at - start, "compile_s": compiled_at - lowered_at, "fusions": fusions,
            "ms": seconds / steps * 1000}


def run(optimizer: str, size: int, batch: int, steps: int, weights_file: str, schedule: bool) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", optimizer, str(size), str(batch), str(steps),
                          weights_file, str(int(schedule))], check=True, capture_output=True, text=True,
                         env=dict(os.environ))
    return json.loads(out.stdout.strip().splitlines()[-1])


def max_relative_difference(file_a: str, file_b: str) -> float:
    import numpy as np

    with np.load(file_a) as a, np.load(file_b) as b:
        return max(float(np.abs(a[k] - b[k]).max() / max(np.abs(a[k]).max(), 1e-30)) for k in a.files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--schedule", action="store_true", help="fit's learning-rate schedule, not a constant")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        optimizer, size, batch, steps, weights_file, schedule = args.child
        print(json.dumps(child(optimizer, int(size), int(batch), int(steps), weights_file, schedule == "1")))
        return
    print("| round | optimizer | px | batch | optimizer build (s) | lowering (s) | XLA compile (s) | fusions | "
          "ms a step | max rel diff |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        for round_index in range(1, args.repeats + 1):
            files = {name: str(Path(folder) / f"{round_index}-{index}.npz") for index, name in enumerate(OPTIMIZERS)}
            order = OPTIMIZERS if round_index % 2 else OPTIMIZERS[::-1]  # who goes first alternates
            results = {name: run(name, args.size, args.batch, args.steps, files[name], args.schedule) for name in order}
            for name in OPTIMIZERS:
                r = results[name]
                difference = max_relative_difference(files[OPTIMIZERS[0]], files[name])
                shown = "" if name == OPTIMIZERS[0] else f"{difference:.1e}"
                print(f"| {round_index} | {name} | {args.size} | {args.batch} | {r['build_s']:.2f} | "
                      f"{r['lower_s']:.1f} | {r['compile_s']:.1f} | {r['fusions']} | {r['ms']:.0f} | {shown} |",
                      flush=True)


if __name__ == "__main__":
    main()
