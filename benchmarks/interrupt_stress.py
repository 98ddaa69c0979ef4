"""How often a Ctrl-C or SIGTERM sent to `fit` just as an epoch starts ends it cleanly, against the signal handling
(`ich_keras/interrupts.py`) of another commit.

    python benchmarks/interrupt_stress.py --runs 150 --against af70d1b

Each run starts a tiny `fit` (coatnet_tiny on 16 generated 32 px images of 2 classes, 3 epochs of 40 steps: the kind
of run the crash was first caught in) and sends SIGINT or
SIGTERM (alternately) a random 0-0.15 s after Keras prints "Epoch 2/": the moment a `tf.data` iterator is asked for
the epoch's first batch. A run ends "clean" with status 130 or 143, "died" on a native fault (a negative status: the
process was killed by SIGABRT or SIGSEGV), "finished" when the signal was lost and the fit ran to its end. Runs
alternate between this checkout and the other commit (its package copied, with that commit's interrupts.py), two at a
time. glibc's per-thread cache is off in every run (`glibc.malloc.tcache_count=0`), so that a corrupted heap is
caught at the next free rather than much later or never.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """
[data]
source = "{source}"
image_size = 32
val_fraction = 0.25
[model]
name = "coatnet_tiny"
[train]
epochs = 3
batch_size = 4
steps_per_epoch = 40
[checkpoint]
keep = [{{ metric = "loss", mode = "min", k = 1 }}]
[log]
verbose = 2
[augment]
mixup_alpha = 0.0
cutmix_alpha = 0.0
"""


def image_folder(root: Path, per_class: int = 8, size: int = 32) -> Path:
    """An ImageFolder of two classes of random PNGs (`train/<class>/*.png`, `test/<class>/*.png`)."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in ("class_0", "class_1"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for index in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{index}.png")
    return root


def package_at(rev: str, folder: Path) -> Path:
    """A copy of this checkout's package with `ich_keras/interrupts.py` as it was at commit `rev`; its parent."""
    shutil.copytree(ROOT / "ich_keras", folder / "ich_keras", ignore=shutil.ignore_patterns("__pycache__"))
    source = subprocess.run(["git", "show", f"{rev}:ich_keras/interrupts.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    (folder / "ich_keras" / "interrupts.py").write_text(source)
    return folder


def one_run(package_root: Path, config: Path, workdir: Path, signum: int, delay_s: float) -> tuple[str, str]:
    """Starts fit, signals it `delay_s` after "Epoch 2/"; the outcome ("clean", "died", "finished", "other") and
    the output."""
    env = {**os.environ, "PYTHONPATH": str(package_root), "PYTHONFAULTHANDLER": "1",
           "GLIBC_TUNABLES": "glibc.malloc.tcache_count=0"}
    process = subprocess.Popen([sys.executable, "-m", "ich_keras.fit", "--config", str(config), "--workdir",
                                str(workdir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("Epoch 2/"):
            time.sleep(delay_s)
            os.kill(process.pid, signum)
            break
    try:
        rest = process.communicate(timeout=120)[0]
    except subprocess.TimeoutExpired:
        process.kill()
        rest = process.communicate()[0]
    shutil.rmtree(workdir, ignore_errors=True)
    status = process.returncode
    outcome = ("clean" if status in (130, 143) else "died" if status < 0 else "finished" if status == 0
               else "other")
    return outcome, "".join(lines) + rest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=150, help="runs of each code")
    parser.add_argument("--against", required=True, help="the commit whose interrupts.py is the reference")
    parser.add_argument("--window", type=float, nargs=2, default=(0.0, 0.15), metavar=("FROM_S", "TO_S"))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        config = folder / "stress.toml"
        config.write_text(CONFIG.format(source=image_folder(folder / "images").as_posix()))
        codes = {"this checkout": ROOT, f"at {args.against}": package_at(args.against, folder / "reference")}
        runs = [(name, root, folder / f"run{index}-{code}", (signal.SIGINT, signal.SIGTERM)[index % 2],
                 rng.uniform(*args.window))
                for index in range(args.runs) for code, (name, root) in enumerate(codes.items())]
        outcomes = {name: collections.Counter() for name in codes}
        with ThreadPoolExecutor(args.jobs) as pool:
            futures = [(name, pool.submit(one_run, root, config, workdir, signum, delay))
                       for name, root, workdir, signum, delay in runs]
            for name, future in futures:
                outcome, output = future.result()
                outcomes[name][outcome] += 1
                if outcome != "clean":
                    print(f"--- {name}: {outcome}\n{output[-3000:]}", file=sys.stderr)
    print("| interrupts.py | runs | clean | died | finished (signal lost) | other |\n|---|---:|---:|---:|---:|---:|")
    for name, counts in outcomes.items():
        print(f"| {name} | {sum(counts.values())} | {counts['clean']} | {counts['died']} | {counts['finished']} "
              f"| {counts['other']} |")


if __name__ == "__main__":
    main()
