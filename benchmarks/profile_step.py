"""Where a CoAtNet training step spends its time: XLA's kernels, attributed to the model's layers.

    python benchmarks/profile_step.py --model coatnet_0_rw_224 --size 64 --batch 8
    python benchmarks/profile_step.py --model coatnet_0_rw_224 --size 224 --batch 16 --inference
    python benchmarks/profile_step.py --size 224 --batch 8 --kernels 12
    python benchmarks/profile_step.py --model coatnet_2_rw_224 --size 224 --batch 64 --precision bfloat16   # a GPU

Compiles forward + backward (cross-entropy, no optimizer) once, or with `--inference` the forward pass alone in
inference mode (as `predict` runs it), runs it under `jax.profiler`, and sums each kernel's time in the trace by the
layer named in its HLO metadata (timm module paths with the indices replaced by #, so all blocks of a kind add up),
forward and backward apart; kernels without metadata add up as "other". Kernels run on up to all cores at once, so
the sums can exceed the wall time of a step. `--kernels N` also lists the N slowest single kernels with their output
shape and the operation they come from. It also counts the program's fused computations, and how many of them are
distinct (XLA compiles every one), and gives the size of its temporaries (XLA's one block for a step's intermediate
arrays). XLA's options are those of XLA_FLAGS, XLA's defaults without it (the commands' are
`ich_keras.compile_cache.set_cpu_flags`). On a GPU the kernels are the device's, each attributed through the
instruction it runs (a cuBLAS or cuDNN kernel has a name of its own); `--precision bfloat16` builds the model under
Keras' mixed_bfloat16 policy, as the paper's recipes train.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import tempfile
import time
from pathlib import Path

import ich_keras  # noqa: F401  (selects the JAX backend before keras is imported)
import jax
import jax.numpy as jnp
import keras
import numpy as np

from ich_keras import models
from recipe import KERAS_POLICIES


def training_loss(model):
    """loss(trainable, frozen, images, one-hot labels) -> (mean cross-entropy, updated frozen weights): `model` in
    training mode, for the forward + backward benchmarks to differentiate (no optimizer)."""
    def loss(trainable, frozen, images, labels):
        logits, frozen = model.stateless_call(trainable, frozen, images, training=True)
        return jnp.mean(-jnp.sum(labels * jax.nn.log_softmax(logits.astype("float32")), -1)), frozen

    return loss


def inference_logits(model):
    """logits(trainable, frozen, images, labels): `model` in inference mode; the labels are ignored, so that both
    passes take the same arguments."""
    def logits(trainable, frozen, images, labels):
        return model.stateless_call(trainable, frozen, images, training=False)[0]

    return logits


def kernel_shapes(hlo_text: str) -> dict[str, str]:
    """{kernel name: its output shape, e.g. f32[12,196,196]} for every instruction of the optimised HLO."""
    return dict(re.findall(r"^\s*(?:ROOT )?%?([\w.-]+) = (\w+\[[\d,]*\])", hlo_text, re.MULTILINE))


def kernel_origins(hlo_text: str) -> dict[str, str]:
    """{kernel name: op_name metadata} for every instruction of the optimised HLO that carries one."""
    origins = {}
    for line in hlo_text.splitlines():
        match = re.match(r"\s*(?:ROOT )?%?([\w.-]+) = .*?op_name=\"([^\"]+)\"", line)
        if match:
            origins[match.group(1)] = re.sub(r"^jit\(\w+\)/", "", match.group(2))
    return origins


def fused_computations(hlo_text: str) -> tuple[int, int]:
    """(fused computations, distinct ones): bodies that differ only in instruction names and metadata count once.
    XLA's CPU backend generates code for each fused computation, identical or not."""
    bodies = []
    for block in hlo_text.split("\n\n"):
        header, _, body = block.strip().partition("\n")
        if re.match(r"%?[\w-]*computation[\w.-]* ", header):
            body = re.sub(r", metadata=\{[^}]*\}", "", body)
            bodies.append(re.sub(r"%?[A-Za-z_][\w-]*\.\d+|%[\w-]+", "N", body))
    return len(bodies), len(set(bodies))


def kernel_times(events: list[dict]) -> list[tuple[str, float]]:
    """(HLO instruction, microseconds) of every kernel in a profiler trace: where the trace has a GPU, its device's
    kernels, by the instruction each runs (`hlo_op`: a library kernel's own name is not one); else the CPU's, by
    their name."""
    gpus = {e["pid"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
            and "/device:GPU" in e.get("args", {}).get("name", "")}
    return [(e.get("args", {}).get("hlo_op", e["name"]) if gpus else e["name"], e["dur"]) for e in events
            if e.get("ph") == "X" and (not gpus or e.get("pid") in gpus)]


def layer_of(op_name: str) -> tuple[str, str]:
    """(layer kind, "fwd" or "bwd") for an op_name such as transpose(jvp(stages.2.blocks.0.attn.qkv))/dot."""
    generic = re.sub(r"\.\d+(?=\.|\))", ".#", op_name)
    match = re.search(r"(stem[\w.#]*|stages\.#\.blocks\.#\.[a-z_]+\w*|head[\w.#]*)", generic)
    return (match.group(1) if match else "other"), ("bwd" if op_name.startswith("transpose(") else "fwd")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="coatnet_0_rw_224")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--inference", action="store_true", help="the forward pass in inference mode instead")
    parser.add_argument("--kernels", type=int, default=0, help="also list this many slowest single kernels")
    parser.add_argument("--precision", choices=tuple(KERAS_POLICIES), default="float32",
                        help="bfloat16: Keras' mixed_bfloat16 policy")
    args = parser.parse_args()

    keras.mixed_precision.set_global_policy(KERAS_POLICIES[args.precision])
    model = models.build(args.model, 1000, args.size)
    trainable = [v.value for v in model.trainable_variables]
    frozen = [v.value for v in model.non_trainable_variables]
    images = jnp.asarray(np.random.default_rng(0).standard_normal((args.batch, args.size, args.size, 3)), "float32")
    labels = jax.nn.one_hot(jnp.arange(args.batch) % 1000, 1000)

    if args.inference:
        function, what = inference_logits(model), "inference forward"
    else:
        function, what = jax.value_and_grad(training_loss(model), has_aux=True), "forward + backward"
    step = jax.jit(function).lower(trainable, frozen, images, labels).compile()
    origins = kernel_origins(step.as_text())
    # Kernels XLA made without an op_name (e.g. a convolution's kernel gradient) count too, as "(no metadata)".
    origins = {name: origins.get(name, "(no metadata)") for name in kernel_shapes(step.as_text())}
    jax.block_until_ready(step(trainable, frozen, images, labels))
    start = time.perf_counter()
    for _ in range(3):
        jax.block_until_ready(step(trainable, frozen, images, labels))
    print(f"{args.model} at {args.size} px, batch {args.batch}, {args.precision}: {what} "
          f"{(time.perf_counter() - start) / 3 * 1000:.0f} ms a step")
    print("{} fused computations compiled, {} distinct".format(*fused_computations(step.as_text())),
          f"temporaries {step.memory_analysis().temp_size_in_bytes / 2**30:.2f} GB", sep="; ")

    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
        for _ in range(2):
            jax.block_until_ready(step(trainable, frozen, images, labels))
        jax.profiler.stop_trace()
        with gzip.open(next(Path(trace_dir).rglob("*.json.gz"))) as f:
            trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    by_layer, by_kernel, by_name = collections.Counter(), collections.Counter(), collections.Counter()
    for name, microseconds in kernel_times(events):
        if name in origins:
            layer, direction = layer_of(origins[name])
            kind = re.sub(r"\.\d+$", "", name)
            by_layer[(layer, direction)] += microseconds / 2000  # over 2 steps -> ms a step
            by_kernel[(kind, layer, direction)] += microseconds / 2000
            by_name[name] += microseconds / 2000
    print("\n| layer | pass | ms a step |\n|---|---|---:|")
    for (layer, direction), ms in by_layer.most_common(args.top):
        print(f"| {layer} | {direction} | {ms:.1f} |")
    print("\n| kernel kind | layer | pass | ms a step |\n|---|---|---|---:|")
    for (kind, layer, direction), ms in by_kernel.most_common(args.top):
        print(f"| {kind} | {layer} | {direction} | {ms:.1f} |")
    if args.kernels:
        shapes = kernel_shapes(step.as_text())
        print("\n| kernel | output | operation | ms a step |\n|---|---|---|---:|")
        for name, ms in by_name.most_common(args.kernels):
            print(f"| {name} | {shapes.get(name, '?')} | {origins[name]} | {ms:.1f} |")


if __name__ == "__main__":
    main()
