"""An archive's scans: time and memory of decoding one, whole against made smaller, and of a folder's data check.

    python benchmarks/scan_decode.py --side 10000 --scans 8

Heritage collections are digitised as TIFFs of 50 to 500 megapixels. This writes one uncompressed TIFF of
`--side` x `--side` pixels per PIL mode a scanner writes (RGB, RGBA, palette, 16-bit and float gray; a smooth
picture with noise) to a temporary folder, then measures, each in a fresh process so that its peak memory is its
own:

- per scan, decode + resize to `--size` as the pipeline and `predict` run it: whole (`size=None`, then TensorFlow's
  resize, as before but for an RGB copy it also made) against made smaller (the size passed: averaged over boxes in
  PIL before the resize); milliseconds and the peak memory it added per pixel of the scan;
- the data check of a folder of `--scans` copies of the RGB scan in `DECODE_THREADS` threads, as `fit` runs it:
  whole and with no memory budget (as before) against now; wall time and the process's peak memory.

Then the pixels: the difference after the resize between the two ways, on the RGB scan and on PNG copies of the
real photographs that ship with matplotlib and scikit-learn (`photo_decode.py`'s rows).

With `--image-folder DIR` it only writes an ImageFolder of two classes of RGB scans, for `fit` on the real path.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

import ich_keras  # noqa: F401  (selects the JAX backend)
from ich_keras import image_files
from ich_keras.memory_budget import MemoryBudget
from ich_keras.pipeline import resize_uint8
from photo_decode import difference_row, sample_photographs
from soup_scaling import current_rss, peak_rss

MODES = ("RGB", "RGBA", "P", "I;16", "F")


def scan_picture(side: int, seed: int = 0) -> np.ndarray:
    """(side, side, 3) uint8: gradients, a pattern and noise, so that no filter is exact."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    rgb = np.stack([x, y, 0.5 + 0.3 * np.sin(40 * x + seed) * np.cos(30 * y)], -1) * 255
    return np.clip(rgb + rng.normal(0, 6, rgb.shape).astype(np.float32), 0, 255).astype(np.uint8)


def write_scans(folder: Path, side: int) -> dict[str, Path]:
    """One uncompressed TIFF per mode in `MODES`."""
    rgb = scan_picture(side)
    gray = rgb.mean(axis=-1, dtype=np.float32)
    images = {"RGB": Image.fromarray(rgb), "RGBA": Image.fromarray(np.dstack([rgb, np.full_like(rgb[..., 0], 255)])),
              "P": Image.fromarray(rgb).quantize(64), "I;16": Image.fromarray((gray * 257).astype(np.uint16)),
              "F": Image.fromarray(gray / 255)}
    paths = {}
    for mode in MODES:
        paths[mode] = folder / f"scan_{mode.replace(';', '')}.tif"
        images[mode].save(paths[mode])
        assert Image.open(paths[mode]).mode == mode
    return paths


def write_image_folder(folder: Path, side: int, per_class: int) -> None:
    """An ImageFolder of RGB scans to run `fit` on: train/{a,b}/, class b's pictures turned on their side."""
    for label, name in enumerate("ab"):
        (folder / "train" / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            picture = scan_picture(side, seed=per_class * label + i)
            Image.fromarray(picture if label == 0 else picture.transpose(1, 0, 2)).save(
                folder / "train" / name / f"scan_{i:03d}.tif")


def measure_decode(path: str, size: int, whole: bool) -> dict:
    """In this (fresh) process: one decode + resize; its milliseconds and the bytes per pixel its peak added to the
    memory in use before (Linux: /proc)."""
    before = current_rss()
    start = time.perf_counter()
    resize_uint8(image_files.decode_image_file(path, None if whole else size), size).numpy()
    seconds = time.perf_counter() - start
    peak = peak_rss() - before
    with Image.open(path) as image:
        pixels = image.width * image.height
    return {"ms": seconds * 1000, "bytes_per_pixel": peak / pixels}


def measure_check(paths: list[str], size: int, whole: bool) -> dict:
    """In this (fresh) process: the data check's decodes of `paths` in threads; wall seconds and peak bytes."""
    if whole:
        image_files.DECODE_MEMORY = MemoryBudget(1 << 62)  # no budget, as before
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=image_files.DECODE_THREADS) as pool:
        reasons = list(pool.map(lambda path: image_files.check_image(path, None if whole else size)[0], paths))
    assert reasons == [None] * len(paths), reasons
    return {"s": time.perf_counter() - start, "peak_gb": peak_rss() / 2**30}


def in_fresh_process(task: str, *args) -> dict:
    # Scans above PIL's 179-megapixel limit are the user's own: raised as the README says.
    env = {**os.environ, image_files.MAX_PIXELS_ENV: str(10**10)}
    out = subprocess.run([sys.executable, __file__, "--measure", json.dumps([task, *args])], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=10000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--scans", type=int, default=8)
    parser.add_argument("--image-folder", type=Path, metavar="DIR",
                        help="only write --per-class RGB scans of two classes to DIR/train/{a,b} (to run fit on)")
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # a child process's task, as JSON
    args = parser.parse_args()
    if args.image_folder:
        write_image_folder(args.image_folder, args.side, args.per_class)
        return
    if args.measure:
        task, *task_args = json.loads(args.measure)
        print(json.dumps({"decode": measure_decode, "check": measure_check}[task](*task_args)))
        return
    with tempfile.TemporaryDirectory() as folder:
        scans = write_scans(Path(folder), args.side)
        megapixels = args.side**2 / 1e6
        print(f"{os.cpu_count()} CPUs; scans of {args.side} x {args.side} ({megapixels:.0f} megapixels), uncompressed "
              f"TIFF; size {args.size}; each figure from its own process\n")
        print("| mode | MB | whole ms | smaller ms | whole / smaller | whole peak B/px | smaller peak B/px |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for mode, path in scans.items():
            whole = in_fresh_process("decode", str(path), args.size, True)
            smaller = in_fresh_process("decode", str(path), args.size, False)
            print(f"| {mode} | {path.stat().st_size / 1e6:.0f} | {whole['ms']:.0f} | {smaller['ms']:.0f} | "
                  f"{whole['ms'] / smaller['ms']:.2f} | {whole['bytes_per_pixel']:.1f} | "
                  f"{smaller['bytes_per_pixel']:.1f} |", flush=True)

        copies = []
        for i in range(args.scans):
            copies.append(Path(folder) / f"copy_{i}.tif")
            os.link(scans["RGB"], copies[-1])  # the same bytes: no extra disk, each file decoded on its own
        print(f"\nThe data check of {args.scans} RGB scans, {image_files.DECODE_THREADS} threads:\n")
        print("| way | seconds | peak memory GB |")
        print("|---|---:|---:|")
        for name, whole in (("whole, no memory budget (before)", True), ("made smaller, memory budget (now)", False)):
            result = in_fresh_process("check", [str(p) for p in copies], args.size, whole)
            print(f"| {name} | {result['s']:.1f} | {result['peak_gb']:.2f} |", flush=True)

        print("\n| image | pixels | size | decoded at | mean abs difference | 99th percentile | max |")
        print("|---|---|---:|---|---:|---:|---:|")
        print(difference_row(scans["RGB"], args.size))
        for photograph in sample_photographs():
            png = Path(folder) / f"{photograph.stem}.png"
            Image.open(photograph).save(png)
            for size in (32, 64):
                print(difference_row(png, size))


if __name__ == "__main__":
    main()
