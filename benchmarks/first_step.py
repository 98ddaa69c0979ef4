"""First-step latency of a training step, without and with the commands' persistent XLA cache.

    python benchmarks/first_step.py --models coatnet_0_rw_224 --size 64 --batch 8

Each measurement is a fresh process (as a user's rerun is): build the model, compile it as `ich_keras.fit` does,
then time the first `train_on_batch` (tracing + XLA compilation, or a cache load) and the second (the step
itself). Three runs per model: the cache off, the cache on but empty (cold), and the cache filled by that run (warm).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def child(name: str, size: int, batch: int) -> dict:
    import numpy as np

    from ich_keras import compile_cache, models

    compile_cache.enable()
    import keras

    model = models.build(name, 10, size)
    model.compile(optimizer=keras.optimizers.AdamW(1e-4, weight_decay=1e-3, global_clipnorm=1.0),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    images = np.random.default_rng(0).standard_normal((batch, size, size, 3)).astype(np.float32)
    labels = np.eye(10, dtype=np.float32)[np.arange(batch) % 10]
    times = []
    for _ in range(2):
        start = time.perf_counter()
        model.train_on_batch(images, labels)
        times.append(time.perf_counter() - start)
    return {"first_s": times[0], "second_s": times[1]}


def run(name: str, size: int, batch: int, cache: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", name, str(size), str(batch)], check=True,
                         capture_output=True, text=True, env={**os.environ, "ICH_KERAS_XLA_CACHE": cache})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["coatnet_0_rw_224"])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), int(args.child[2]))))
        return
    print("| model | px | batch | cache | first step (s) | second step (s) |")
    print("|---|---:|---:|---|---:|---:|")
    for name in args.models:
        with tempfile.TemporaryDirectory() as cache:
            for label, setting in (("off", "off"), ("cold", cache), ("warm", cache)):
                r = run(name, args.size, args.batch, setting)
                print(f"| `{name}` | {args.size} | {args.batch} | {label} | {r['first_s']:.1f} | {r['second_s']:.2f} |",
                      flush=True)


if __name__ == "__main__":
    main()
