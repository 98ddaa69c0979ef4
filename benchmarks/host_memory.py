"""A CoAtNet step's page faults and time with glibc's default malloc and with freed memory kept (`host_memory`).

    python benchmarks/host_memory.py --size 224 --batch 16
    python benchmarks/host_memory.py --size 64 --batch 16 32 --inference

Each measurement is a fresh process with ICH_KERAS_HOST_MEMORY=release or keep, taken in turn over `--repeats`
rounds: it compiles coatnet_0's forward + backward (as `profile_step.py` does; with `--inference` also the forward
in inference mode), runs it once, then reports the mean over `--steps` steps of the wall time, the minor page
faults and the system and user CPU time a step, and the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

SETTINGS = ("release", "keep")


def child(task: str, size: int, batch: int, steps: int) -> dict:
    import resource
    import time

    from ich_keras import host_memory

    applied = host_memory.keep_freed()  # before JAX starts its backend, as `cli.run` does
    import jax
    import jax.numpy as jnp
    import numpy as np
    from profile_step import inference_logits, training_loss

    from ich_keras import models

    model = models.build("coatnet_0_rw_224", 1000, size)
    trainable = [v.value for v in model.trainable_variables]
    frozen = [v.value for v in model.non_trainable_variables]
    images = jnp.asarray(np.random.default_rng(0).standard_normal((batch, size, size, 3)), "float32")
    labels = jax.nn.one_hot(jnp.arange(batch) % 1000, 1000)
    function = inference_logits(model) if task == "inference" else jax.value_and_grad(training_loss(model),
                                                                                         has_aux=True)
    step = jax.jit(function).lower(trainable, frozen, images, labels).compile()
    jax.block_until_ready(step(trainable, frozen, images, labels))
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
        jax.block_until_ready(step(trainable, frozen, images, labels))
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    per_step = {key: (getattr(after, field) - getattr(before, field)) / steps
                for key, field in (("faults", "ru_minflt"), ("system_s", "ru_stime"), ("user_s", "ru_utime"))}
    return {"applied": applied, "ms": seconds / steps * 1000, **per_step, "peak_gb": after.ru_maxrss / 2**20}


def run(setting: str, task: str, size: int, batch: int, steps: int) -> dict:
    env = {**os.environ, "ICH_KERAS_HOST_MEMORY": setting}
    out = subprocess.run([sys.executable, __file__, "--child", task, str(size), str(batch), str(steps)],
                         check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, nargs="+", default=[16])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="rounds over the two settings")
    parser.add_argument("--inference", action="store_true", help="also the forward pass in inference mode")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        task, size, batch, steps = args.child
        print(json.dumps(child(task, int(size), int(batch), int(steps))))
        return
    print("| task | px | batch | host memory | ms a step | page faults a step | system s a step | user s a step "
          "| peak GB |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|")
    tasks = ("training", "inference") if args.inference else ("training",)
    for task in tasks:
        for batch in args.batch:
            for _ in range(args.repeats):
                for setting in SETTINGS:
                    r = run(setting, task, args.size, batch, args.steps)
                    if r["applied"] != (setting == "keep"):
                        sys.exit(f"ICH_KERAS_HOST_MEMORY={setting} did not take effect here (glibc only)")
                    print(f"| {task} | {args.size} | {batch} | {setting} | {r['ms']:.0f} | {r['faults']:.0f} | "
                          f"{r['system_s']:.2f} | {r['user_s']:.2f} | {r['peak_gb']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
