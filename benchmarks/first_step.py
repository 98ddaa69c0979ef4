"""First-step latency of a training step, without and with the commands' persistent XLA cache.

    python benchmarks/first_step.py --models coatnet_0_rw_224 --size 64 --batch 8
    python benchmarks/first_step.py --size 64 --repeats 3 --xla-flags=--xla_backend_optimization_level=2 \
        --xla-flags=--xla_backend_optimization_level=1
    python benchmarks/first_step.py --size 224 --repeats 2 --pretrained

Each measurement is a fresh process (as a user's rerun is): build the model (its initializers run op by op, each
compiled), compile it as `ich_keras.fit` does (`GroupedAdamW` with a warmup + cosine-restarts schedule), then time
the first `train_on_batch` (tracing + XLA compilation, or a cache load) and the mean of the next three (the step
itself). Three runs per model: the cache off, the cache on but empty (cold), and the cache filled by that run
(warm). With `--xla-flags`, one cache-off run per given `XLA_FLAGS` value instead, taken in turn over `--repeats`
rounds ("" gives the commands' settings, `-O1` and the memory-minimising scheduler: `compile_cache.set_cpu_flags`;
a value sets what it names and the commands' setting the rest, e.g.
`--xla-flags=--xla_cpu_enable_concurrency_optimized_scheduler=true` for XLA's default scheduler at -O1). With
`--pretrained`, the real path's start instead: the model (10 classes) starts from a 1000-class weights file of itself,
written beforehand, built the two ways in turn over `--repeats` rounds, the cache off: `plain` builds (every
initializer runs) and then loads the file, `deferred` is what the commands do
(`init_weights.build_with_weights`: only the new head is initialised). Each row also gives the system CPU time of
the first step and of a later one, and the process's peak resident memory: where the machine backs memory only when
it is first touched (`fresh_memory.py`), the first step's extra system time is that, its working set written for
the first time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


WAYS = ("random", "plain", "deferred")  # how the child's model gets its weights (see the module docstring)


def build(name: str, size: int, way: str, weights: str):
    from ich_keras import models
    from ich_keras.init_weights import build_with_weights, load_weights

    if way == "deferred":
        return build_with_weights(lambda: models.build(name, 10, size), weights, verbose=False)
    model = models.build(name, 10, size)
    if way == "plain":
        load_weights(model, weights, verbose=False)
    return model


def child(name: str, size: int, batch: int, way: str, weights: str) -> dict:
    from ich_keras import compile_cache, init_weights, models  # noqa: F401  (imported before the clock starts)
    from recipe import compile_as_fit, fit_like_schedule, random_batch

    compile_cache.enable()
    started = time.perf_counter()
    model = build(name, size, way, weights)
    built = time.perf_counter()
    compile_as_fit(model, learning_rate=fit_like_schedule())
    images, labels = random_batch(batch, size, 10)
    times, system = [], []
    for _ in range(4):
        start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_stime
        model.train_on_batch(images, labels)
        times.append(time.perf_counter() - start)
        system.append(resource.getrusage(resource.RUSAGE_SELF).ru_stime - before)
    return {"build_s": built - started, "first_s": times[0], "second_s": sum(times[1:]) / 3,
            "first_system_s": system[0], "second_system_s": sum(system[1:]) / 3,
            "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def run(name: str, size: int, batch: int, cache: str, xla_flags: str | None = None, way: str = "random",
        weights: str = "") -> dict:
    env = {**os.environ, "ICH_KERAS_XLA_CACHE": cache}
    if xla_flags is not None:
        env["XLA_FLAGS"] = xla_flags
    out = subprocess.run([sys.executable, __file__, "--child", name, str(size), str(batch), way, weights],
                         check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["coatnet_0_rw_224"])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--xla-flags", action="append", help="an XLA_FLAGS value to compare (repeat the option)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds over the --xla-flags values or --pretrained")
    parser.add_argument("--pretrained", action="store_true", help="start from a 1000-class file, built two ways")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeats != 1 and not (args.xla_flags or args.pretrained):
        parser.error("--repeats counts rounds over the --xla-flags values or --pretrained's two ways; the default "
                     "runs its three rows (cache off, cold, warm) once")
    if args.child:
        name, size, batch, way, weights = args.child
        print(json.dumps(child(name, int(size), int(batch), way, weights)))
        return
    print("| model | px | batch | cache | XLA_FLAGS | weights | build (s) | first step (s) | later steps (s) "
          "| system CPU s: first step / later ones | peak GB |")
    print("|---|---:|---:|---|---|---|---:|---:|---:|---|---:|")
    for name in args.models:
        if args.pretrained:
            runs = [("off", "off", None, way) for _ in range(args.repeats) for way in WAYS[1:]]
        elif args.xla_flags is not None:
            runs = [("off", "off", flags, "random") for _ in range(args.repeats) for flags in args.xla_flags]
        else:
            runs = [("off", "off", None, "random"), ("cold", None, None, "random"), ("warm", None, None, "random")]
        with tempfile.TemporaryDirectory() as cache:
            weights = str(Path(cache) / "pretrained.weights.h5")
            if args.pretrained:
                from ich_keras import models
                from ich_keras.init_weights import save_model_weights

                save_model_weights(models.build(name, 1000, args.size), weights)  # not timed; no cache written
            for label, setting, flags, way in runs:
                r = run(name, args.size, args.batch, setting or cache, flags, way, weights)
                shown = os.environ.get("XLA_FLAGS", "") if flags is None else flags
                print(f"| `{name}` | {args.size} | {args.batch} | {label} | `{shown}` | {way} | {r['build_s']:.1f} | "
                      f"{r['first_s']:.1f} | {r['second_s']:.2f} | "
                      f"{r['first_system_s']:.1f} / {r['second_system_s']:.2f} | {r['peak_gb']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
