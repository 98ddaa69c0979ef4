"""Bytes of a kept checkpoint against the model's weights, before and after checkpoints held weights only.

    python benchmarks/checkpoint_size.py --models coatnet_tiny coatnet_0_rw_224 [--keep 24]

For each model (compiled with the recipe's AdamW, optimizer built, as during training): the model's weights in
bytes, Keras' `save_weights` file (what fit kept before: weights + AdamW's moments), `save_model_weights` (what fit
keeps now) and a soup file of the same weights; then the checkpoints' share of a run directory keeping `--keep`.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import ich_keras  # noqa: F401  (JAX backend)
import keras

from ich_keras import models
from ich_keras.init_weights import save_model_weights
from ich_keras.weight_files import ModelSource, read, save


def measure(name: str, image_size: int, folder: Path) -> dict:
    model = models.build(name, 1000, image_size)
    model.compile(keras.optimizers.AdamW(1e-4, weight_decay=1e-3), "mse")
    model.optimizer.build(model.trainable_variables)
    keras_file, ours = folder / f"{name}_keras.weights.h5", folder / f"{name}_ours.weights.h5"
    model.save_weights(keras_file)
    save_model_weights(model, ours)
    soup_file = save(read(ModelSource(model)), folder / f"{name}_soup.weights.h5")
    return {"weights": sum(v.numpy().nbytes for v in model.variables), "keras": keras_file.stat().st_size,
            "ours": ours.stat().st_size, "soup": soup_file.stat().st_size}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["coatnet_tiny", "coatnet_0_rw_224"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--keep", type=int, default=24, help="kept checkpoints in the run directory")
    args = parser.parse_args(argv)
    print("| model | weights | checkpoint before (Keras save_weights) | checkpoint now | soup file | now / weights "
          f"| {args.keep} checkpoints before | now |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            m = measure(name, args.image_size, Path(folder))
            mb = lambda n: f"{n / 1e6:,.1f} MB"  # noqa: E731
            print(f"| `{name}` | {mb(m['weights'])} | {mb(m['keras'])} | {mb(m['ours'])} | {mb(m['soup'])} | "
                  f"{m['ours'] / m['weights']:.4f} | {mb(args.keep * m['keras'])} | {mb(args.keep * m['ours'])} |")


if __name__ == "__main__":
    main()
