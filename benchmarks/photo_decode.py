"""Camera-size JPEGs: milliseconds per photo decoded at full size against a reduced scale, and what it changes.

    python benchmarks/photo_decode.py --photos 12 --sizes 224 64 --repeats 3

A user's photos are a camera's (12 megapixels and more), not AHE64's 64 px. This writes `--photos` camera-size
JPEGs made from AHE64 photos (upsized to `--resolution`, bicubic, with Gaussian noise for a sensor's fine detail,
quality 92) to a temporary folder, then times, per photo and single-threaded, what every command does with one:
the data check (`check_image`: decode, digest and thumbnail) and the decode + resize to the input size that the
pipeline and `predict` run, each with `size=None` (full decode, what ich_keras did before) and with the input size
(the reduced scale, keeping `--margin` times the input size). The two ways take turns in every round; the table
gives the median over rounds of each way's mean.

Then the pixels: the mean, 99th percentile and largest absolute difference (gray levels) between the reduced and
the full decode after the resize, on the generated photos and on the real photographs that ship with matplotlib
and scikit-learn (smaller ones, so at smaller input sizes to reach the same reductions).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import ich_keras  # noqa: F401  (selects the JAX backend)
from ich_keras import image_files
from ich_keras.image_files import check_image, decode_image_file
from ich_keras.pipeline import resize_uint8

# AHE64 where a checkout keeps it: ../shared beside the repository (--data for another place).
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ahe64"


def write_camera_photos(data: Path, folder: Path, count: int, resolution: tuple[int, int]) -> list[Path]:
    rng = np.random.default_rng(0)
    every = sorted((data / "train").glob("*/*"))
    paths = []
    for i, source in enumerate(every[:: max(1, len(every) // count)][:count]):  # spread over the classes
        with Image.open(source) as image:
            upsized = np.asarray(image.convert("RGB").resize(resolution, Image.BICUBIC), dtype=np.float32)
        noisy = upsized + rng.normal(0.0, 4.0, upsized.shape).astype(np.float32)
        paths.append(folder / f"photo_{i:03d}.jpg")
        Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8)).save(paths[-1], quality=92)
    return paths


def decode_and_resize(path: Path, size: int, reduced: bool) -> np.ndarray:
    return resize_uint8(decode_image_file(path, size if reduced else None), size).numpy()


def check(path: Path, size: int, reduced: bool) -> None:
    reason, _ = check_image(path, size if reduced else None)
    assert reason is None, reason


def mean_ms(task, paths: list[Path], size: int, reduced: bool) -> float:
    start = time.perf_counter()
    for path in paths:
        task(path, size, reduced)
    return (time.perf_counter() - start) / len(paths) * 1000


def sample_photographs() -> list[Path]:
    """Real photographs installed with the benchmark's dependencies (those present)."""
    import matplotlib
    import sklearn

    candidates = [Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg",
                  Path(sklearn.__file__).parent / "datasets" / "images" / "china.jpg",
                  Path(sklearn.__file__).parent / "datasets" / "images" / "flower.jpg"]
    return [path for path in candidates if path.exists()]


def difference_row(path: Path, size: int) -> str:
    reduced = decode_and_resize(path, size, reduced=True).astype(np.float64)
    full = decode_and_resize(path, size, reduced=False).astype(np.float64)
    difference = np.abs(reduced - full)
    with Image.open(path) as image:
        width, height = image.size
    decoded = decode_image_file(path, size).shape
    return (f"| {path.name} | {width} x {height} | {size} | {decoded[1]} x {decoded[0]} | {difference.mean():.2f} "
            f"| {np.percentile(difference, 99):.0f} | {difference.max():.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=12)
    parser.add_argument("--resolution", type=int, nargs=2, default=[4032, 3024], metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 64])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--margin", type=int, default=image_files.REDUCED_DECODE_MARGIN,
                        help="try another REDUCED_DECODE_MARGIN (the smallest decoded side over the input size)")
    parser.add_argument("--data", type=Path, default=DATA, help="an ImageFolder tree with train/ (default: AHE64 "
                        "in ../shared beside the repository)")
    args = parser.parse_args()
    if not any((args.data / "train").glob("*/*")):
        parser.error(f"no images under {args.data / 'train'}: pass --data, an ImageFolder tree with train/<class>/")
    image_files.REDUCED_DECODE_MARGIN = args.margin
    with tempfile.TemporaryDirectory() as folder:
        paths = write_camera_photos(args.data, Path(folder), args.photos, tuple(args.resolution))
        megabytes = statistics.mean(p.stat().st_size for p in paths) / 1e6
        print(f"{os.cpu_count()} CPUs; {len(paths)} photos of {args.resolution[0]} x {args.resolution[1]}, "
              f"{megabytes:.1f} MB each on average; medians of {args.repeats} rounds\n")
        print("| task | size | full decode ms/photo | reduced ms/photo | full / reduced |")
        print("|---|---:|---:|---:|---:|")
        for size in args.sizes:
            for name, task in (("data check", check), ("decode + resize", decode_and_resize)):
                times = {True: [], False: []}
                for _ in range(args.repeats):
                    for reduced in (False, True):
                        times[reduced].append(mean_ms(task, paths, size, reduced))
                full, reduced = statistics.median(times[False]), statistics.median(times[True])
                print(f"| {name} | {size} | {full:.1f} | {reduced:.1f} | {full / reduced:.2f} |", flush=True)
        print("\n| photo | pixels | size | decoded at | mean abs difference | 99th percentile | max |")
        print("|---|---|---:|---|---:|---:|---:|")
        for size in args.sizes:
            print(difference_row(paths[0], size))
        for path in sample_photographs():
            for size in (32, 64, 112):
                print(difference_row(path, size))


if __name__ == "__main__":
    main()
