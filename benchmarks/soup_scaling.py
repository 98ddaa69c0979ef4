"""Uniform-soup scaling: time and peak memory against N checkpoints of coatnet_0_rw_224 (random weights).

    python benchmarks/soup_scaling.py --workdir /tmp/soup_bench            # N = 2, 8, 24; writes the table
    python benchmarks/soup_scaling.py --workdir /tmp/soup_bench --counts 2  # a quick check

Each measurement runs in a fresh subprocess, so its peak RSS is its own; files are read once beforehand so every
method sees a warm page cache. Methods:
    read     the floor: only read the same N files (h5py, every dataset into one reused buffer)
    soup     `ich_keras.soups.uniform(paths)`: streaming, one jitted float32 update, its compilation included
    numpy    load every file into memory, then np.mean over the stack, variable by variable
    torch    the seed's PyTorch loop: torch.load each state dict, accumulate sd[k] / N into a running dict
Peak RSS is reported absolute and as the increase over the process after its imports (and, for read and soup, after
JAX's CPU runtime started), in units of one checkpoint file.
Targets (issue 4): soup time <= 1.2x read time; soup peak RSS increase <= 3x one checkpoint, for every N.
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

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("read", "soup", "numpy", "torch")


def peak_rss() -> int:
    # VmHWM, not getrusage: Linux carries ru_maxrss over fork and exec, so a child would report its parent's peak.
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def make_checkpoints(workdir: Path, count: int) -> list[Path]:
    """`count` .weights.h5 files (and torch state dicts) of coatnet_0_rw_224 with different random weights."""
    import h5py

    template = workdir / "template.weights.h5"
    if not template.exists():
        sys.path.insert(0, str(ROOT))
        from ich_keras import models

        models.build("coatnet_0_rw_224", 1000, 224).save_weights(template)
    with h5py.File(template, "r") as f:
        keys = []
        f.visititems(lambda k, o: keys.append(k) if isinstance(o, h5py.Dataset) else None)
        base = {k: f[k][()] for k in keys}
    paths = []
    for i in range(count):
        path = workdir / f"epoch_{i:03d}.weights.h5"
        paths.append(path)
        if path.exists() and path.with_suffix(".pt").exists():
            continue
        rng = np.random.default_rng(i)
        values = {k: (v + rng.normal(0, 0.01, v.shape).astype(v.dtype)) if v.dtype.kind == "f" else v
                  for k, v in base.items()}
        with h5py.File(path, "w") as f:
            for k, v in values.items():
                f.create_dataset(k, data=v)
        import torch

        torch.save({k.replace("/", "."): torch.from_numpy(np.ascontiguousarray(v)) for k, v in values.items()},
                   path.with_suffix(".pt"))
    return paths


def measure(method: str, paths: list[Path]) -> dict:
    """Runs one method in this process; returns seconds and RSS numbers."""
    # Imports come before the baseline: each method pays for its libraries outside the measurement.
    if method == "torch":
        import torch
    else:
        import h5py
    if method in ("soup", "read"):  # read imports the soup's libraries too, so both start from the same RSS
        sys.path.insert(0, str(ROOT))
        import jax.numpy as jnp

        from ich_keras import soups

        jnp.zeros(1).block_until_ready()  # start JAX's CPU runtime, a fixed cost like the imports
    baseline = current_rss()
    start = time.perf_counter()
    if method == "read":
        buffer = None
        for path in paths:
            with h5py.File(path, "r") as f:
                datasets = []
                f.visititems(lambda k, o, found=datasets: found.append(o) if isinstance(o, h5py.Dataset) else None)
                if buffer is None:
                    buffer = np.empty(sum(d.size for d in datasets), np.float32)
                offset = 0
                for d in datasets:
                    if d.dtype.kind == "f" and d.size:
                        d.read_direct(buffer[offset:offset + d.size].reshape(d.shape))
                        offset += d.size
    elif method == "soup":
        soups.uniform(paths)
    elif method == "numpy":
        loaded = []
        for path in paths:
            with h5py.File(path, "r") as f:
                keys = []
                f.visititems(lambda k, o, found=keys: found.append(k) if isinstance(o, h5py.Dataset) else None)
                loaded.append({k: f[k][()] for k in keys})
        soup = {k: np.mean(np.stack([d[k] for d in loaded]), axis=0) if loaded[0][k].dtype.kind == "f"
                else loaded[0][k] for k in loaded[0]}
        assert soup
    elif method == "torch":
        soup = None
        for path in paths:
            state = torch.load(path.with_suffix(".pt"))
            if soup is None:
                soup = {k: v / len(paths) if v.is_floating_point() else v for k, v in state.items()}
            else:
                for k, v in state.items():
                    if v.is_floating_point():
                        soup[k] += v / len(paths)
    seconds = time.perf_counter() - start
    return {"method": method, "n": len(paths), "seconds": seconds, "peak_rss": peak_rss(), "baseline_rss": baseline}


def run_child(method: str, paths: list[Path]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", method, *map(str, paths)], check=True,
                         capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(results: list[dict], checkpoint_bytes: int) -> str:
    mib = 2**20
    by = {(r["method"], r["n"]): r for r in results}
    lines = [
        f"One checkpoint: {checkpoint_bytes / mib:.1f} MiB (coatnet_0_rw_224, 1000 classes).",
        "",
        "| N | method | time (s) | x read | peak RSS (MiB) | RSS increase (MiB) | increase / checkpoint |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for n in sorted({r["n"] for r in results}):
        read = by.get(("read", n))
        for method in METHODS:
            r = by.get((method, n))
            if r is None:
                continue
            increase = r["peak_rss"] - r["baseline_rss"]
            ratio = f"{r['seconds'] / read['seconds']:.2f}" if read else "-"
            lines.append(f"| {n} | {method} | {r['seconds']:.2f} | {ratio} | {r['peak_rss'] / mib:.0f} | "
                         f"{increase / mib:.0f} | {increase / checkpoint_bytes:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/soup_bench"))
    parser.add_argument("--counts", type=int, nargs="+", default=[2, 8, 24])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs per cell")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child[0], [Path(p) for p in args.child[1:]])))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    paths = make_checkpoints(args.workdir, max(args.counts))
    checkpoint_bytes = paths[0].stat().st_size
    run_child("read", paths)  # warm the page cache for everyone
    results = []
    for n in args.counts:
        for method in args.methods:
            runs = [run_child(method, paths[:n]) for _ in range(args.repeats)]
            best = min(runs, key=lambda r: r["seconds"])
            results.append(best)
            print(f"N={n:3d} {method:6s} {best['seconds']:7.2f} s  peak RSS {best['peak_rss'] / 2**20:7.0f} MiB "
                  f"(+{(best['peak_rss'] - best['baseline_rss']) / 2**20:.0f})", flush=True)
    print()
    print(table(results, checkpoint_bytes))
    (args.workdir / "results.json").write_text(json.dumps({"checkpoint_bytes": checkpoint_bytes,
                                                           "results": results}, indent=2))


if __name__ == "__main__":
    main()
