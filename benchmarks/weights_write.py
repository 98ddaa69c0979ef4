"""Writing a .weights.h5 straight to disk (before) against building it in memory and writing the bytes (now).

    python benchmarks/weights_write.py --model coatnet_0_rw_224 --rounds 5 --workdir /tmp/weights_write

Why it changed: HDF5 writing to a disk that fills up crashed the process (a segmentation fault closing a file whose
flush had failed); built in memory, a full disk is the write's OSError. This measures what that costs: the time of
`weight_files.save` for a 1000-class model at 224 px both ways, alternating, each fsync'ed and renamed as
`atomic_path` does, and the peak memory each adds over the process before it (VmHWM, reset before each write
through /proc/self/clear_refs), in units of the file's size.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import ich_keras  # noqa: F401  (JAX backend)
import h5py

from ich_keras import models
from ich_keras.atomic import atomic_path
from ich_keras.weight_files import ModelSource, read, save


def _status_kib(field: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1])


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM back to the current RSS


def save_on_disk(weights, path: Path) -> None:
    """The previous `save`: HDF5 writing the temporary file itself."""
    with atomic_path(path, suffix=".weights.h5") as tmp, h5py.File(tmp, "w") as f:
        for v in weights.layout.variables:
            f.create_dataset(v.key, data=weights[v.key])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="coatnet_0_rw_224")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    weights = read(ModelSource(models.build(args.model, 1000, 224)))
    ways = {"on disk (before)": save_on_disk, "in memory, then written (now)": save}
    times, peaks = {name: [] for name in ways}, {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, write in ways.items():
            path = args.workdir / "m.weights.h5"
            _reset_peak()
            rss = _status_kib("VmRSS")
            start = time.perf_counter()
            write(weights, path)
            times[name].append(time.perf_counter() - start)
            peaks[name].append(_status_kib("VmHWM") - rss)
            size = path.stat().st_size
            path.unlink()
    before, now = (statistics.median(t) for t in times.values())
    print(f"{args.model}: {size / 2**20:.1f} MiB file; median of {args.rounds} rounds:")
    for name, t in times.items():
        rounds = ", ".join(f"{x * 1000:.0f}" for x in t)
        peak = statistics.median(peaks[name]) * 1024 / size
        print(f"  {name:<30} {statistics.median(t) * 1000:8.1f} ms  (rounds: {rounds}); peak memory +{peak:.2f} files")
    print(f"  now / before: {now / before:.2f}x the time")


if __name__ == "__main__":
    main()
