"""Uniform-soup scaling: time and peak memory against N checkpoints of coatnet_0_rw_224 (random weights).

    python benchmarks/soup_scaling.py --workdir /tmp/soup_bench            # N = 2, 8, 24; writes the table
    python benchmarks/soup_scaling.py --workdir /tmp/soup_bench --counts 2  # a quick check

The checkpoints stay in --workdir for a rerun (each N reuses them): ~210 MB per checkpoint (its .weights.h5 and the
torch copy), ~5 GB at the default counts; delete the folder when done.

Each measurement runs in a fresh subprocess, so its peak RSS is its own; files are read once beforehand so every
method sees a warm page cache. Methods take turns within each round, and "x read" is the median over rounds of
a method's time over the read's time in the same round, so slow phases of a shared machine cancel out. Methods:
    read       the floor: only read the same N files, with h5py's low-level API into one reused buffer
    read_h5py  the same with h5py's high-level API into one flat buffer (how most code reads; for context)
    soup     `ich_keras.soups.uniform(paths)`: streaming, one jitted float32 update, its compilation included
    model_stock, task_arithmetic, ties, dare, slerp: `ich_keras.soups.merges`' methods with their defaults, W0 the
             unperturbed template (`--methods read soup model_stock ...`; not in the default set)
    numpy    load every file into memory, then np.mean over the stack, variable by variable
    torch    the seed's PyTorch loop: torch.load each state dict, accumulate sd[k] / N into a running dict
Peak RSS is reported absolute and as the increase over the process after its imports (and, for the reads and soup,
after JAX's CPU runtime started), in units of one checkpoint file.
Targets: soup time <= 1.2x read time; soup peak RSS increase <= 3x one checkpoint, for every N.
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
METHODS = ("read", "read_h5py", "soup", "numpy", "torch")
# The merges from a pretrained W0 (the unperturbed template), each with its default parameters; SLERP merges the
# first two files.
MERGES = ("model_stock", "task_arithmetic", "ties", "dare", "slerp")


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
    if method in ("soup", "read", "read_h5py", *MERGES):  # the reads import the soup's libraries too: the same RSS
        sys.path.insert(0, str(ROOT))
        import jax.numpy as jnp

        from ich_keras import soups

        jnp.zeros(1).block_until_ready()  # start JAX's CPU runtime, a fixed cost like the imports
    baseline = current_rss()
    start = time.perf_counter()
    if method == "read":
        read_floats_low_level(paths)
    elif method == "read_h5py":
        read_floats_high_level(paths)
    elif method == "soup":
        soups.uniform(paths)
    elif method in MERGES:
        merge(method, paths)
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


def merge(method: str, paths: list[Path]) -> None:
    from ich_keras import soups

    pretrained = paths[0].parent / "template.weights.h5"
    if method == "slerp":
        soups.slerp(paths[0], paths[1])
    else:
        getattr(soups, method)(paths, pretrained)


def read_floats_low_level(paths: list[Path]) -> None:
    """The floor: every float dataset of every file read whole, with h5py's low-level API (its cheapest per-call
    path), into one reused buffer the size of the largest dataset."""
    import h5py

    buffer = None
    for path in paths:
        with h5py.File(path, "r") as f:
            names = []
            h5py.h5o.visit(f.id, lambda name, info, found=names: found.append(name)
                           if info.type == h5py.h5o.TYPE_DATASET else None, info=True)
            datasets = [h5py.h5d.open(f.id, name) for name in names]
            datasets = [d for d in datasets if d.dtype.kind == "f" and d.get_storage_size()]
            if buffer is None:
                buffer = np.empty(max(int(np.prod(d.shape)) for d in datasets), np.float32)
            for d in datasets:
                d.read(h5py.h5s.ALL, h5py.h5s.ALL, buffer[:int(np.prod(d.shape))].reshape(d.shape))


def read_floats_high_level(paths: list[Path]) -> None:
    """The same with the high-level API (`visititems`, `read_direct`) into one flat buffer, as most code reads."""
    import h5py

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


def run_child(method: str, paths: list[Path]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", method, *map(str, paths)], check=True,
                         capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(runs: list[dict], checkpoint_bytes: int) -> str:
    """One row per (N, method): best and median time, the per-round ratio to the read, and memory."""
    mib = 2**20
    lines = [
        f"One checkpoint: {checkpoint_bytes / mib:.1f} MiB (coatnet_0_rw_224, 1000 classes).",
        "",
        "| N | method | best (s) | median (s) | x read: median (min–max) | peak RSS (MiB) | RSS increase (MiB) "
        "| increase / checkpoint |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for n in sorted({r["n"] for r in runs}):
        reads = {r["round"]: r["seconds"] for r in runs if r["n"] == n and r["method"] == "read"}
        for method in (*METHODS, *MERGES):
            mine = [r for r in runs if r["n"] == n and r["method"] == method]
            if not mine:
                continue
            seconds = [r["seconds"] for r in mine]
            ratios = [r["seconds"] / reads[r["round"]] for r in mine if r["round"] in reads]
            ratio = f"{np.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})" if ratios else "-"
            increase = max(r["peak_rss"] - r["baseline_rss"] for r in mine)
            lines.append(f"| {n} | {method} | {min(seconds):.2f} | {np.median(seconds):.2f} | {ratio} | "
                         f"{max(r['peak_rss'] for r in mine) / mib:.0f} | {increase / mib:.0f} | "
                         f"{increase / checkpoint_bytes:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/soup_bench"),
                        help="where the checkpoints are written and kept (~210 MB each)")
    parser.add_argument("--counts", type=int, nargs="+", default=[2, 8, 24])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=(*METHODS, *MERGES))
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each runs every method once, in turn")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child[0], [Path(p) for p in args.child[1:]])))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    paths = make_checkpoints(args.workdir, max(args.counts))
    checkpoint_bytes = paths[0].stat().st_size
    run_child("read", paths)  # warm the page cache for everyone
    runs = []
    for n in args.counts:
        # Methods alternate within a round, so a ratio compares runs made seconds apart on the same machine state.
        for round_ in range(args.repeats):
            for method in args.methods:
                run = {**run_child(method, paths[:n]), "round": round_}
                runs.append(run)
                print(f"N={n:3d} round {round_} {method:9s} {run['seconds']:7.2f} s  peak RSS "
                      f"{run['peak_rss'] / 2**20:7.0f} MiB (+{(run['peak_rss'] - run['baseline_rss']) / 2**20:.0f})",
                      flush=True)
    print()
    print(table(runs, checkpoint_bytes))
    (args.workdir / "results.json").write_text(json.dumps({"checkpoint_bytes": checkpoint_bytes, "runs": runs},
                                                          indent=2))


if __name__ == "__main__":
    main()
