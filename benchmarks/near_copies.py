"""Near copies in the data check: how well the thumbnails' similarity tells copies from other photos, and its cost.

    python benchmarks/near_copies.py --data ../shared/data/ahe64 --samples 200 --montage pairs.png

On an ImageFolder tree with train/ and test/ (AHE64: its test set was cleaned of near copies of train images by
its curators), with the fingerprints of the data check (`image_files.check_image` at `--size`):

- copies: for `--samples` random images, the similarity of each with its copies as a collection gathered from the
  web holds them (re-encoded at JPEG quality 40, half and double size, 20 % brighter, lower contrast, gray, a mirror
  image, a brighter mirror image, and one not found by design: a 4 % crop); min, 1st percentile and median per kind.
- others: each test image's similarity with its nearest train image (quantiles), and the pairs of train images
  by band of similarity, how many of them under two classes. `--montage FILE` draws up to 24 pairs of each band
  side by side, to be looked at.
- cost: the check's time per image, the thumbnail's share of it, and `copies.components` + `copy_groups` over the
  dataset and over `--scale` random thumbnails (their time grows with the square of the count), with and without
  the comparison with mirror images.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

import ich_keras  # noqa: F401  (selects the JAX backend)
from ich_keras import copies, data
from ich_keras.config import DataConfig
from ich_keras.image_files import DECODE_THREADS, check_image, decode_image_file

BANDS = ((0.90, 0.93), (0.93, 0.95), (0.95, 0.98), (0.98, 1.01))


def copies_of(photo: Image.Image) -> dict[str, Image.Image]:
    jpeg = io.BytesIO()
    photo.save(jpeg, "JPEG", quality=40)
    width, height = photo.size
    crop = max(1, width // 25)
    return {"JPEG quality 40": Image.open(jpeg),
            "half size": photo.resize((width // 2, height // 2), Image.BICUBIC),
            "double size": photo.resize((width * 2, height * 2), Image.BICUBIC),
            "20 % brighter": ImageEnhance.Brightness(photo).enhance(1.2),
            "contrast x 0.8": ImageEnhance.Contrast(photo).enhance(0.8),
            "gray": photo.convert("L"),
            "4 % cropped (not found by design)": photo.crop((crop, crop, width - crop, height - crop)),
            "mirrored": ImageOps.mirror(photo),
            "mirrored, 20 % brighter": ImageOps.mirror(ImageEnhance.Brightness(photo).enhance(1.2))}


def copy_rows(paths: list[Path], thumbnails: np.ndarray, samples: int, size: int) -> list[str]:
    rng = np.random.default_rng(0)
    by_kind = {}
    with tempfile.TemporaryDirectory() as folder:
        copy_path = Path(folder) / "copy.png"  # lossless: the copy's pixels as made, read by the one decoder
        for i in rng.choice(len(paths), min(samples, len(paths)), replace=False):
            with Image.open(paths[i]) as photo:
                for kind, copy in copies_of(photo.convert("RGB")).items():
                    copy.save(copy_path)
                    pixels = decode_image_file(copy_path, size)
                    similarity = copies.similarity(copies.thumbnail(pixels)[None], thumbnails[i][None])
                    by_kind.setdefault(kind, []).append(float(similarity[0, 0]))
    rows = ["| copy | images | min | 1st percentile | median | found (>= threshold) |",
            "|---|---:|---:|---:|---:|---:|"]
    for kind, values in by_kind.items():
        found = np.mean(np.asarray(values) >= copies.NEAR_COPY_CORRELATION)
        rows.append(f"| {kind} | {len(values)} | {min(values):.4f} | {np.quantile(values, 0.01):.4f} | "
                    f"{np.median(values):.4f} | {found:.1%} |")
    return rows


def band_rows(paths, splits, labels, thumbnails, montage: Path | None) -> list[str]:
    test, train = np.flatnonzero(splits == "test"), np.flatnonzero(splits == "train")
    nearest = copies.similarity(thumbnails[test], thumbnails[train]).max(axis=1)
    above = int((nearest >= copies.NEAR_COPY_CORRELATION).sum())
    rows = ["| test images | nearest train image's similarity: median | 99th percentile | 99.9th | max | "
            f"at or above {copies.NEAR_COPY_CORRELATION} |", "|---:|---:|---:|---:|---:|---:|",
            f"| {len(test)} | {np.median(nearest):.4f} | {np.quantile(nearest, 0.99):.4f} | "
            f"{np.quantile(nearest, 0.999):.4f} | {nearest.max():.4f} | {above} |",
            "", "| train pairs: similarity | pairs | under two classes |", "|---|---:|---:|"]
    pairs = copies.near_copy_pairs(thumbnails[train], BANDS[0][0])
    # Each pair's similarity: the diagonal of the pairs' first images against their second ones (a few hundred).
    similarity = np.diagonal(copies.similarity(thumbnails[train][pairs[:, 0]], thumbnails[train][pairs[:, 1]]))
    drawn = []
    for low, high in BANDS:
        band = pairs[(similarity >= low) & (similarity < high)]
        two_classes = int((labels[train][band[:, 0]] != labels[train][band[:, 1]]).sum())
        rows.append(f"| [{low:.2f}, {min(high, 1):.2f}{')' if high < 1 else ']'} | {len(band)} | {two_classes} |")
        drawn.append([(paths[train[i]], paths[train[j]]) for i, j in band[:24]])
    if montage is not None:
        draw_montage(drawn, montage)
    return rows


def draw_montage(bands: list[list[tuple[Path, Path]]], output: Path, side: int = 64) -> None:
    """One block per band (lowest first), each pair side by side, four pairs a row, a gap between blocks."""
    rows = [pairs[k:k + 4] for pairs in bands for k in range(0, max(len(pairs), 1), 4)] + [[]] * len(bands)
    canvas = Image.new("RGB", (4 * (2 * side + 12), len(rows) * (side + 4)), "white")
    y = 0
    for pairs in bands:
        for k, (a, b) in enumerate(pairs):
            x, row_y = (k % 4) * (2 * side + 12), y + (k // 4) * (side + 4)
            for offset, path in ((0, a), (side + 2, b)):
                with Image.open(path) as image:
                    canvas.paste(image.convert("RGB").resize((side, side)), (x + offset, row_y))
        y += (max(len(pairs), 1) + 3) // 4 * (side + 4) + side // 2
    canvas.crop((0, 0, canvas.width, y)).save(output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="an ImageFolder tree with train/ and test/")
    parser.add_argument("--size", type=int, default=64, help="the input size the check decodes for")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--montage", type=Path, help="draw pairs of train images by band of similarity here")
    parser.add_argument("--scale", type=int, nargs="*", default=[10_000, 40_000])
    parser.add_argument("--mirrored-margin", type=float, default=copies.MIRRORED_MARGIN,
                        help="what a match with a mirror image needs more (to measure other margins)")
    args = parser.parse_args()
    copies.MIRRORED_MARGIN = args.mirrored_margin

    _, found, _ = data.scan_image_folder(args.data)
    keys = [key for split in ("train", "test") for key, _ in found[split]]
    paths = [args.data / key for key in keys]
    start = time.perf_counter()
    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        fingerprints = [fingerprint for _, fingerprint in pool.map(lambda path: check_image(path, args.size), paths)]
    check_s = time.perf_counter() - start
    sample = paths[:: max(1, len(paths) // 500)]
    decoded = [decode_image_file(path, args.size) for path in sample]
    start = time.perf_counter()
    for pixels in decoded:
        copies.thumbnail(pixels)
    thumbnail_ms = (time.perf_counter() - start) / len(decoded) * 1000
    splits = np.array([key.split("/")[0] for key in keys])
    labels = np.array([key.split("/")[1] for key in keys])
    start = time.perf_counter()
    groups = copies.copy_groups(keys, splits, labels, copies.components(dict(zip(keys, fingerprints))))
    group_s = time.perf_counter() - start
    thumbnails = np.stack([f.thumbnail for f in fingerprints])

    print(f"{len(keys)} images under {args.data.name} at {args.size} px; threshold {copies.NEAR_COPY_CORRELATION}, "
          f"mirrored margin {copies.MIRRORED_MARGIN}\n")
    print("\n".join(copy_rows(paths, thumbnails, args.samples, args.size)), "\n")
    print("\n".join(band_rows(paths, splits, labels, thumbnails, args.montage)), "\n")
    print(f"copy groups in two splits or under two classes: {len(groups)}, e.g. {groups[:3]}")
    start = time.perf_counter()
    carved = data.build_splits(DataConfig(source=str(args.data), image_size=args.size, val_fraction=0.1))
    build_s = time.perf_counter() - start
    per_class = np.unique(labels[splits == "train"], return_counts=True)[1]
    val = len(carved.splits["val"])
    kept = sum(max(1, round(0.1 * n)) for n in per_class) - val
    print(f"`data.build_splits` with val_fraction 0.1 (as fit): {val} val images; {kept} stayed in train with their "
          f"copies; copy groups in two splits or under two classes: {len(carved.same_images)}\n")
    rows = ["| what | images | seconds |", "|---|---:|---:|",
            f"| the data check ({DECODE_THREADS} threads) | {len(keys)} | {check_s:.2f} |",
            f"| of it, the thumbnails (one thread, {thumbnail_ms:.3f} ms an image) | {len(keys)} | "
            f"{thumbnail_ms * len(keys) / 1000:.2f} |",
            f"| `components` + `copy_groups` | {len(keys)} | {group_s:.2f} |",
            f"| `data.build_splits` (the check, the copies, the carve of val) | {len(keys)} | {build_s:.2f} |"]
    rng = np.random.default_rng(0)
    for count in args.scale:
        random = rng.standard_normal((count, copies.THUMBNAIL_SIDE ** 2)).astype(np.float32)
        random /= np.linalg.norm(random, axis=1, keepdims=True)
        fakes = {str(i): copies.Fingerprint(str(i), row) for i, row in enumerate(random)}
        for mirror in (True, False):
            # Without mirror images: the thumbnails' correlations alone, as the comparison was before them.
            plain = mock.patch.object(copies, "similarity", lambda queries, thumbnails: queries @ thumbnails.T)
            with contextlib.nullcontext() if mirror else plain:
                start = time.perf_counter()
                copies.copy_groups(list(fakes), ["train"] * count, [i % 10 for i in range(count)],
                                   copies.components(fakes))
                seconds = time.perf_counter() - start
            rows.append(f"| `components` + `copy_groups`, random thumbnails{'' if mirror else ', no mirror images'} | "
                        f"{count} | {seconds:.2f} |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
