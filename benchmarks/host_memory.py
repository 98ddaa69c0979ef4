"""A CoAtNet step's page faults and time with glibc's default malloc, with huge pages, and with huge pages and the
block cache as the commands run (`ich_keras.host_memory`).

    python benchmarks/host_memory.py --size 224 --batch 16
    python benchmarks/host_memory.py --size 64 --batch 16 32 --inference
    python benchmarks/host_memory.py --setting jemalloc "LD_PRELOAD=/path/to/libjemalloc.so.2"

Each measurement is a fresh process, without and with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (what the commands
set where the kernel's transparent huge pages are in "madvise" mode), with that and the block cache preloaded (the
commands' whole setting, where a C compiler builds the cache), and with each `--setting LABEL "VAR=value ..."`
(environment variables for the process: another malloc preloaded, say), taken in turn over `--repeats` rounds:
coatnet_0 compiled as `ich_keras.fit` compiles it (AdamW, global clipnorm) trains on one batch through `model.fit`
(the first step: tracing, XLA's compilation, the step), then on `--steps` more in one `fit` call; with
`--inference` also `predict_on_batch`, as `ich_keras.predict` runs. Reported: the first step, then the mean over
the `--steps` steps of the wall time, the minor page faults and the system and user CPU time, and the process's
peak resident memory. XLA's persistent cache is not used (nothing in this script turns it on).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys

from ich_keras import host_memory

# The environment of each setting the script always measures (GLIBC_TUNABLES are appended to any the caller has).
SETTINGS = {"default": {}, "huge pages": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}}


def child(task: str, size: int, batch: int, steps: int) -> dict:
    import resource
    import time

    import ich_keras  # noqa: F401  (selects the JAX backend before keras is imported)
    import numpy as np

    from ich_keras import models
    from recipe import compile_as_fit, random_batch

    model = models.build("coatnet_0_rw_224", 1000, size)
    compile_as_fit(model)
    images, labels = random_batch(batch, size, 1000)
    tiled = np.tile(images, (steps, 1, 1, 1)), np.tile(labels, (steps, 1))

    def work(count: int, inputs) -> None:  # as `ich_keras.fit` trains and `ich_keras.predict` predicts
        if task == "training":
            model.fit(*inputs, batch_size=batch, epochs=1, shuffle=False, verbose=0)
        else:
            for _ in range(count):
                np.asarray(model.predict_on_batch(inputs[0][:batch]))

    start = time.perf_counter()
    work(1, (images, labels))
    first = time.perf_counter() - start
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    work(steps, tiled)
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    per_step = {key: (getattr(after, field) - getattr(before, field)) / steps
                for key, field in (("faults", "ru_minflt"), ("system_s", "ru_stime"), ("user_s", "ru_utime"))}
    return {"first_s": first, "ms": seconds / steps * 1000, **per_step, "peak_gb": after.ru_maxrss / 2**20}


def environment(variables: str) -> dict[str, str]:
    """`--setting`'s "VAR=value VAR=value" (shell quoting) as a dict; names the word that is not VAR=value."""
    pairs = [word.partition("=") for word in shlex.split(variables)]
    for name, equals, _ in pairs:
        if not (equals and name):
            raise SystemExit(f"--setting: {name!r} in {variables!r} is not VAR=value")
    return {name: value for name, _, value in pairs}


def run(setting: dict[str, str], task: str, size: int, batch: int, steps: int) -> dict:
    env = {**os.environ, **setting}
    if "GLIBC_TUNABLES" in setting:
        env["GLIBC_TUNABLES"] = ":".join(filter(None, [os.environ.get("GLIBC_TUNABLES"), setting["GLIBC_TUNABLES"]]))
    out = subprocess.run([sys.executable, __file__, "--child", task, str(size), str(batch), str(steps)],
                         check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, nargs="+", default=[16])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="rounds over the settings")
    parser.add_argument("--inference", action="store_true", help="also the forward pass in inference mode")
    parser.add_argument("--setting", nargs=2, action="append", default=[], metavar=("LABEL", "VARIABLES"),
                        help='another setting to measure: a label and "VAR=value ..." for its processes')
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        task, size, batch, steps = args.child
        print(json.dumps(child(task, int(size), int(batch), int(steps))))
        return
    print("| task | px | batch | host memory | first step (s) | ms a step | page faults a step | system s a step "
          "| user s a step | peak GB |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    commands = host_memory.command_environment({}, thp_mode="always [madvise] never")
    settings = {**SETTINGS, "huge pages + block cache": commands} if "LD_PRELOAD" in commands else dict(SETTINGS)
    settings |= {label: environment(variables) for label, variables in args.setting}
    tasks = ("training", "inference") if args.inference else ("training",)
    for task in tasks:
        for batch in args.batch:
            for _ in range(args.repeats):
                for label, setting in settings.items():
                    r = run(setting, task, args.size, batch, args.steps)
                    print(f"| {task} | {args.size} | {batch} | {label} | {r['first_s']:.1f} | {r['ms']:.0f} | "
                          f"{r['faults']:.0f} | {r['system_s']:.2f} | {r['user_s']:.2f} | {r['peak_gb']:.1f} |",
                          flush=True)


if __name__ == "__main__":
    main()
