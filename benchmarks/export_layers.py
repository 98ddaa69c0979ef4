"""The CPU layer rewrites in an export: inference speed of TFLite and ONNX exports built with the rewritten layers
(what `ICH_KERAS_CONV_IMPL=auto` gives on a CPU machine) and with the standard Keras layers.

    python benchmarks/export_layers.py --workdir /tmp/export_layers
    python benchmarks/export_layers.py --workdir /tmp/export_layers --model coatnet_0_rw_224 --size 224 --rounds 2

The rewrites (`ich_keras.models.rewrites`) were chosen for XLA's CPU kernels; an export runs in TensorFlow's,
TFLite's or onnxruntime's. Each export is built in a fresh process with `ICH_KERAS_CONV_IMPL` set (the same random
weights, seed 0; 10 classes), and each is timed in a fresh process: the best of 5 passes over `--batches` batches of
`--batch-size` random uint8 images after one warm-up batch, in `--rounds` rounds alternating the two layer sets. Both
exports compute the same probabilities (the largest difference is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

IMPLS = ("rewritten", "standard")
FORMATS = {"tflite": "model.tflite", "onnx": "model.onnx"}


def build_and_export(spec: dict) -> dict:
    """In the subprocess: the model with the layers `ICH_KERAS_CONV_IMPL` names, exported in each format."""
    from ich_keras import export, models  # before keras: it selects the JAX backend

    import keras

    keras.utils.set_random_seed(0)  # the same random weights in both builds
    entry = models.entry(spec["model"])
    model = export.with_preprocessing(models.build(spec["model"], 10, spec["size"]), entry.mean, entry.std,
                                      spec["size"])
    for fmt, name in FORMATS.items():
        export.export_model(model, fmt, Path(spec["folder"]) / name, overwrite=True)
    return {}


def measure(spec: dict) -> dict:
    """In the subprocess: seconds per batch of the export, and its probabilities on the first batch."""
    from ich_keras import export

    images = np.load(spec["images"])
    predict = export.load_exported(spec["path"], spec["format"])
    batches = np.split(images, len(images) // spec["batch_size"])
    first = predict(batches[0])  # warm-up: allocation, and the interpreter's tensors sized to the batch
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for batch in batches:
            predict(batch)
        best = min(best, (time.perf_counter() - start) / len(batches))
    np.save(spec["probabilities"], first)
    return {"seconds_per_batch": best}


def in_subprocess(mode: str, spec: dict, impl: str) -> dict:
    env = {**os.environ, "ICH_KERAS_CONV_IMPL": impl, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, __file__, f"--{mode}", json.dumps(spec)], capture_output=True, text=True,
                         check=False, env=env)
    if out.returncode:
        raise RuntimeError(f"{mode} with {impl} layers failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir")
    parser.add_argument("--model", default="coatnet_pico_rw_224")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--build", help=argparse.SUPPRESS)  # internal: one export, in a subprocess
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one measurement, in a subprocess
    args = parser.parse_args(argv)
    for mode in ("build", "measure"):
        if getattr(args, mode):
            print(json.dumps((build_and_export if mode == "build" else measure)(json.loads(getattr(args, mode)))))
            return
    if not args.workdir:
        parser.error("--workdir is required")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    images = np.random.default_rng(0).integers(0, 256, (args.batch_size * args.batches, args.size, args.size, 3),
                                               dtype=np.uint8)
    np.save(workdir / "images.npy", images)
    for impl in IMPLS:
        start = time.perf_counter()
        in_subprocess("build", {"model": args.model, "size": args.size, "folder": str(workdir / impl)}, impl)
        print(f"exported with {impl} layers in {time.perf_counter() - start:.0f} s", flush=True)

    seconds = {(fmt, impl): [] for fmt in FORMATS for impl in IMPLS}
    for round_ in range(args.rounds):
        for impl in IMPLS if round_ % 2 == 0 else IMPLS[::-1]:
            for fmt, name in FORMATS.items():
                spec = {"images": str(workdir / "images.npy"), "batch_size": args.batch_size, "format": fmt,
                        "path": str(workdir / impl / name), "probabilities": str(workdir / f"{impl}_{fmt}.npy")}
                seconds[fmt, impl].append(in_subprocess("measure", spec, "auto")["seconds_per_batch"])
                print(f"round {round_ + 1}, {fmt}, {impl}: {1000 * seconds[fmt, impl][-1]:.1f} ms a batch",
                      flush=True)
    lines = [f"{args.model} at {args.size} px, batch {args.batch_size}, {os.cpu_count()} CPU cores, best of 5 passes "
             f"per round, {args.rounds} alternating rounds.", "",
             "| Format | Rewritten layers (ms a batch) | Standard layers (ms a batch) | Standard ÷ rewritten time | "
             "max abs Δp |", "|---|---:|---:|---:|---:|"]
    for fmt in FORMATS:
        rewritten, standard = (seconds[fmt, impl] for impl in IMPLS)
        gap = np.abs(np.load(workdir / f"rewritten_{fmt}.npy") - np.load(workdir / f"standard_{fmt}.npy")).max()
        lines.append(f"| {fmt} | {' / '.join(f'{1000 * s:.1f}' for s in rewritten)} | "
                     f"{' / '.join(f'{1000 * s:.1f}' for s in standard)} | "
                     f"{' / '.join(f'{s / r:.2f}' for s, r in zip(standard, rewritten))} | {gap:.1e} |")
    table = "\n".join(lines)
    (workdir / "export_layers.md").write_text(table + "\n")
    print("\n" + table)


if __name__ == "__main__":
    main()
