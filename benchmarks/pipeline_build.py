"""How long `pipeline.train_dataset` takes to build a run's train pipeline, against the same function at another
commit, in one process: the build happens before a fit's first step, on every start and resume.

    python benchmarks/pipeline_build.py --epochs 20 200 --against 7d4a899

The reference is `ich_keras/pipeline.py` as `git show REV:ich_keras/pipeline.py` gives it, loaded beside the current
one; both build from the embedded digits (12 images, 16 px, batch 4, 3 steps an epoch, default augmentation), and
each round builds with each in turn; medians over the rounds. Before it prints times, it checks that both give the
same batches on a short run.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ich_keras import data, pipeline  # noqa: E402
from ich_keras.config import AugmentConfig  # noqa: E402


def pipeline_at(rev: str, folder: Path):
    """`ich_keras.pipeline` as it was at commit `rev`, as a module of its own."""
    path = folder / f"pipeline_{rev}.py"
    path.write_text(subprocess.run(["git", "show", f"{rev}:ich_keras/pipeline.py"], cwd=ROOT, check=True,
                                   capture_output=True, text=True).stdout)
    spec = importlib.util.spec_from_file_location(f"pipeline_{rev}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # autograph reads the module of the functions it converts
    spec.loader.exec_module(module)
    return module


def build(module, epochs: int):
    _, labels, _ = data.load_digits_images()
    examples = data.Examples(tuple(f"digits/{i}" for i in range(12)), labels[:12], ("array",) * 12)
    return module.train_dataset("digits", examples, 10, 16, (0.5,) * 3, (0.2,) * 3, AugmentConfig(), batch_size=4,
                                steps_per_epoch=3, seed=0, initial_epoch=0, epochs=epochs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, nargs="+", default=[20, 200])
    parser.add_argument("--against", required=True, help="the commit whose pipeline.py is the reference")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        modules = {f"at {args.against}": pipeline_at(args.against, Path(folder)), "this checkout": pipeline}
        a, b = (list(build(m, 3).as_numpy_iterator()) for m in modules.values())
        assert all(np.array_equal(x, y) for pa, pb in zip(a, b) for x, y in zip(pa, pb)) and len(a) == len(b)
        print("| epochs | pipeline.py | build (s), median | ratio |\n|---:|---|---:|---:|")
        for epochs in args.epochs:
            times = {name: [] for name in modules}
            for _ in range(args.repeats):
                for name, module in modules.items():
                    start = time.perf_counter()
                    build(module, epochs)
                    times[name].append(time.perf_counter() - start)
            reference = statistics.median(times[f"at {args.against}"])
            for name, seconds in times.items():
                median = statistics.median(seconds)
                print(f"| {epochs} | {name} | {median:.2f} | {reference / median:.1f}x |")


if __name__ == "__main__":
    main()
