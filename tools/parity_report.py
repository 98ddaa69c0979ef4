"""Prints the README's parity table: each model converted from a random timm model, logits compared on CPU.

    python tools/parity_report.py            # all models (several minutes on a 2-core CPU)
    python tools/parity_report.py test_coatnet:64

Each row: timm model with random weights (BatchNorm statistics, layer scales, position biases and every tensor timm
initialises to a constant randomised too), its state dict converted by ich_keras, both run in float32 on the same 4
random normalised images.
"""

from __future__ import annotations

import argparse
import sys
import time

from ich_keras import parity  # first: imports torch before TensorFlow
from ich_keras.convert import convert

# (model, image size, size of the timm checkpoint it is converted from)
CASES = [
    ("coatnet_0_rw_224", 224, 224),
    ("coatnet_2_rw_224", 224, 224),
    ("coatnet_0_rw_224", 64, 224),
    ("resnet50", 224, 224),
    ("densenet121", 224, 224),
    ("vit_base_patch16_224", 224, 224),
    ("coatnet_pico_rw_224", 64, 64),
    ("coatnet_nano_rw_224", 64, 64),
    ("coatnet_bn_0_rw_224", 64, 64),
    ("coatnet_tiny", 64, 64),
]


def parity_row(name: str, image_size: int, source_size: int) -> dict:
    """Converts a random timm `name` (at `source_size`) to ich_keras at `image_size` and compares logits."""
    state_dict = parity.random_state_dict(parity.timm_model(name, 1000, source_size))
    reference = parity.timm_model(name, 1000, image_size, state_dict)
    model, _ = convert(name, state_dict, image_size=image_size)
    return parity.compare(model, reference, image_size, batch=4)


def _case(text: str) -> tuple[str, int, int]:
    """MODEL:PX or MODEL:PX:CHECKPOINT_PX (the checkpoint's size defaults to PX)."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"expected MODEL:PX[:CHECKPOINT_PX], got {text!r}")
    return parts[0], int(parts[1]), int(parts[-1])


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", type=_case, metavar="MODEL:PX[:CHECKPOINT_PX]",
                        help="the rows to print (default: the README's table)")
    cases = parser.parse_args(argv).cases or CASES
    print("| model | input px (checkpoint px) | max abs Δlogit | max abs logit | relative | top-1 agree | s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, image_size, source_size in cases:
        start = time.perf_counter()
        row = parity_row(name, image_size, source_size)
        print(f"| `{name}` | {image_size} ({source_size}) | {row['max_abs_diff']:.2e} | "
              f"{row['max_abs_reference']:.3f} | {row['relative_error']:.2e} | {row['top1_agreement']:.0%} | "
              f"{time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
