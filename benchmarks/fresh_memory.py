"""What memory the machine has not handed out lately costs a process: the first touch of fresh pages against pages
another process freed a moment before.

    python benchmarks/fresh_memory.py --gb 2 --repeats 3

Some virtual machines back a page of the guest's memory with the host's only when the guest first writes it, and
take it back soon after the guest frees it (Linux' free page reporting, `page_reporting.*` in the kernel's
parameters). There a process pays, on top of the kernel's own work, for every page it touches that no process used
in the last few seconds: a command's first training step, which touches its whole working set, pays it once; its
later steps reuse their memory. On a machine without it both rows below cost about the same.

Each round waits `--idle` seconds (for what earlier processes freed to go back), then starts a process that writes
`--gb` GB ("fresh") and, as soon as it ends, a second one that writes as much again ("just freed": most of the pages
the first freed). Reported: wall and system CPU seconds per GB written, min / median / max over the rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

CHILD = """
import json, resource, time
import numpy as np
start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
block = np.ones({n} // 8)  # numpy asks for huge pages for an array this large, as XLA's runtime does
after = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({{"wall": time.perf_counter() - start, "system": after.ru_stime - before.ru_stime}}))
"""


def write_seconds(gb: float) -> dict:
    """{"wall", "system"}: seconds a fresh process takes to write `gb` GB."""
    code = CHILD.format(n=int(gb * 2**30))
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, default=2.0, help="memory each process writes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds to wait before each round")
    args = parser.parse_args()
    rows = {"fresh": [], "just freed": []}
    for _ in range(args.repeats):
        time.sleep(args.idle)
        for name in rows:
            rows[name].append(write_seconds(args.gb))
    print("| memory | GB | rounds | wall s per GB (min / median / max) | system s per GB (median) |")
    print("|---|---:|---:|---|---:|")
    for name, runs in rows.items():
        wall = sorted(run["wall"] / args.gb for run in runs)
        system = statistics.median(run["system"] / args.gb for run in runs)
        print(f"| {name} | {args.gb:g} | {len(runs)} | {wall[0]:.2f} / {statistics.median(wall):.2f} / {wall[-1]:.2f} "
              f"| {system:.2f} |")


if __name__ == "__main__":
    main()
