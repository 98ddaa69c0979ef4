"""FLOPs of one training step's forward + backward pass (cross-entropy, no optimizer) by XLA's cost analysis of the
step as lowered, before any backend's optimisation, counted on the CPU.

    python benchmarks/step_flops.py coatnet_2_rw_224 --size 224 --batch 64 --precision bfloat16

Why lowered, and why on the CPU: on a GPU the compiled step calls cuBLAS and cuDNN for its matrix products and
convolutions, and XLA's cost analysis counts those calls as 0 FLOPs (343.7 GFLOP for coatnet_2's step at batch 64
on an H200, where the lowered step holds 5,863); and with the GPU as JAX's backend a lowered step answers no cost
analysis at all (JAX 0.11.2). The lowered step's count is the network's own arithmetic: 54.1 GFLOP for
coatnet_0_rw_224 at 224 px, batch 2, where the CPU's compiled step counts 56.2 and timm's 4.43 GMACs a forward pass
give 3 x 2 x 4.43 x 2 = 53.2.

`start` runs the count in a process of its own with JAX on the CPU, for a benchmark whose JAX runs on a GPU.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import ich_keras  # noqa: F401  (selects the JAX backend before keras is imported)
import jax
import keras
import numpy as np

import profile_step
from recipe import KERAS_POLICIES, random_batch

TIMEOUT_S = 300  # a count takes ~20 s on 2 cores; one that hangs must not hold the GPU check


def step_flops(model: keras.Model, images: np.ndarray, labels: np.ndarray) -> float:
    """FLOPs of `model`'s forward + backward pass on (`images`, one-hot `labels`), from the lowered step."""
    trainable = [v.value for v in model.trainable_variables]
    frozen = [v.value for v in model.non_trainable_variables]
    gradient = jax.value_and_grad(profile_step.training_loss(model), has_aux=True)
    cost = jax.jit(gradient).lower(trainable, frozen, images, labels).cost_analysis()
    if not cost:
        raise RuntimeError(f"XLA gave no cost analysis for the lowered step on JAX's {jax.default_backend()} backend; "
                           "count it on the CPU (JAX_PLATFORMS=cpu), as `start` does")
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


def model_step_flops(name: str, size: int, batch: int, precision: str) -> float:
    """`step_flops` of a freshly built `name` (1000 classes) under `precision`'s Keras policy (weights random)."""
    from ich_keras import models

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(KERAS_POLICIES[precision])
    try:
        model = models.build(name, 1000, size)
    finally:
        keras.config.set_dtype_policy(previous)
    return step_flops(model, *random_batch(batch, size, 1000))


def start(name: str, size: int, batch: int, precision: str) -> subprocess.Popen:
    """This script for one model in a process of its own, JAX on the CPU and no GPU visible; `result` reads it."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, str(Path(__file__)), name, "--size", str(size), "--batch", str(batch),
               "--precision", precision]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result(process: subprocess.Popen) -> float:
    """The FLOP count a `start`ed process printed; a RuntimeError with its last error line when it failed or took
    more than TIMEOUT_S (then it is stopped)."""
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise RuntimeError(f"step_flops.py gave no count within {TIMEOUT_S} s") from None
    if process.returncode != 0:
        raise RuntimeError(f"step_flops.py exited with status {process.returncode}: "
                           + (stderr.strip().splitlines() or [""])[-1])
    return float(stdout.split()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--precision", choices=sorted(KERAS_POLICIES), default="bfloat16")
    args = parser.parse_args(argv)
    print(f"{model_step_flops(args.model, args.size, args.batch, args.precision):.0f}")


if __name__ == "__main__":
    main()
