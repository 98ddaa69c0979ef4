"""Images/s of the training input pipeline (decode, resize, flip, MixUp/CutMix, normalise, batch) on real photos.

    python benchmarks/input_pipeline.py --image-size 224 --workers 1 2 --batches 40

Reads ../shared/data/ahe64 (64 px JPEGs, upsized to `--image-size` as training would), without the in-memory
cache so every image is decoded each epoch: the worst case. Compare the images/s per worker with the model's
training images/s from `train_throughput.py` at the same size: the pipeline must never be the bottleneck.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import ich_keras  # noqa: F401  (selects the JAX backend)
from ich_keras.config import AugmentConfig, DataConfig
from ich_keras.data import build_splits
from ich_keras.pipeline import train_dataset

# AHE64 where a checkout keeps it: ../shared beside the repository (--data for another place).
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ahe64"


def images_per_second(data: Path, image_size: int, workers: int, batch_size: int, batches: int, cache: bool) -> float:
    """Steady-state images/s of `ich_keras.pipeline.train_dataset` over `data` after one warm-up batch."""
    splits = build_splits(DataConfig(source=str(data), image_size=image_size, val_fraction=0.1))
    train = splits.splits["train"]
    dataset = train_dataset(
        str(data), train, len(splits.class_names), image_size, (0.5,) * 3, (0.5,) * 3,
        AugmentConfig(flip=True, mixup_alpha=0.2, cutmix_alpha=1.0, mix_prob=1.0),
        batch_size, steps_per_epoch=batches + 1, seed=0, initial_epoch=0, epochs=1, cache=cache, workers=workers,
    )
    iterator = iter(dataset)
    next(iterator)  # builds the pipeline and fills the prefetch buffer
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2], help="parallel map calls")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--cache", action="store_true", help="decode once (as training does by default)")
    parser.add_argument("--data", type=Path, default=DATA, help="an ImageFolder tree with train/ (default: AHE64 "
                        "in ../shared beside the repository)")
    args = parser.parse_args()
    if not any((args.data / "train").glob("*/*")):
        parser.error(f"no images under {args.data / 'train'}: pass --data, an ImageFolder tree with train/<class>/")
    print(f"{os.cpu_count()} CPUs, {args.image_size} px, batch {args.batch_size}, cache={args.cache}")
    print("| workers | images/s | images/s per worker |")
    print("|---:|---:|---:|")
    for workers in args.workers:
        rate = images_per_second(args.data, args.image_size, workers, args.batch_size, args.batches, args.cache)
        print(f"| {workers} | {rate:.0f} | {rate / workers:.0f} |", flush=True)


if __name__ == "__main__":
    main()
