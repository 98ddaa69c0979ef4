"""How long a command's process takes to end once its work is done, with and without `ich_keras.cli`'s exit hook.

    python benchmarks/process_exit.py --repeats 5

Each round starts two fresh processes in turn that import what a command imports (keras on JAX, TensorFlow for
tf.data, torch for the converter), print the time and return: one as any script would, one with the exit handler
that `ich_keras.cli.run` registers for every command (it spares shutdown its garbage collections). The measure is
from that printed time to the process's end, as the parent sees it; medians over the rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

IMPORTS = "import keras, tensorflow, torch"
# `cli.run` registers the handler as a command starts; importing `ich_keras.cli` alone does not.
HOOK = "import atexit, ich_keras.cli\natexit.register(ich_keras.cli._skip_shutdown_collections)"
VARIANTS = {"plain (keras, TensorFlow, torch imported)": IMPORTS, "with cli.run's exit handler": f"{HOOK}\n{IMPORTS}"}


def exit_seconds(code: str) -> float:
    """Seconds from the end of `code` (the last thing the process prints) to the end of the process."""
    script = f"{code}\nimport sys, time\nsys.stdout.write(repr(time.time()))\nsys.stdout.flush()"
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True, env=env)
    ended = time.time()
    return ended - float(out.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="rounds, the variants alternating")
    args = parser.parse_args()
    times = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name, code in VARIANTS.items():
            times[name].append(exit_seconds(code))
    print(f"| process | exit s (median of {args.repeats}) | min | max |")
    print("|---|---:|---:|---:|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |")


if __name__ == "__main__":
    main()
