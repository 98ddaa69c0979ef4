"""Converts a timm checkpoint into ich_keras weights (`.weights.h5`), optionally proving the result equals timm.

    python tools/convert_timm.py --model coatnet_0_rw_224 --checkpoint model.safetensors \
        --out coatnet_0.weights.h5 [--num-classes 17] [--image-size 64] [--check]

Converting reads `.safetensors` with numpy (no torch) or `.pth`/`.bin` with `torch.load(weights_only=True)`.
`--check` needs torch + timm: it builds timm's model from the same checkpoint and prints max |Δlogit|, the relative
error and top-1 agreement on random images (pre-logits features instead when the head was replaced).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="ich_keras model name, e.g. coatnet_0_rw_224")
    parser.add_argument("--checkpoint", required=True, type=Path, help="timm .safetensors / .pth / .bin file")
    parser.add_argument("--out", required=True, type=Path, help="output file, must end in .weights.h5")
    parser.add_argument("--num-classes", type=int, help="new head width (the checkpoint's head is dropped)")
    parser.add_argument("--image-size", type=int, default=224, help="input side; a multiple of 32 for CoAtNet")
    parser.add_argument("--check", action="store_true", help="compare with timm on random images (torch+timm)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.out.name.endswith(".weights.h5"):
        raise SystemExit(f"--out must end in .weights.h5 (Keras' weights format). Received: {args.out}")
    if args.check:
        from ich_keras import parity  # imports torch before TensorFlow arrives with keras-hub

    from ich_keras.convert import checkpoint_num_classes, convert, head_layer_name, load_state_dict

    try:
        state_dict = load_state_dict(args.checkpoint)
        model, head_loaded = convert(args.model, state_dict, args.num_classes, args.image_size)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(f".{args.out.name[: -len('.weights.h5')]}.partial.weights.h5")
    model.save_weights(partial)
    os.replace(partial, args.out)  # atomic: a crash never leaves half a weights file under the real name
    print(f"wrote {args.out}: {args.model}, {model.count_params():,} weights, "
          f"{model.output_shape[-1]} classes, {args.image_size} px")
    if not head_loaded:
        print(f"note: the checkpoint's head was dropped; the new {args.num_classes}-class head is freshly initialised")

    if args.check:
        source_classes = checkpoint_num_classes(args.model, state_dict)
        reference = parity.timm_model(args.model, source_classes, args.image_size, state_dict)
        features = None if head_loaded else head_layer_name(args.model)
        result = parity.compare(model, reference, args.image_size, batch=4, keras_output=features)
        print(json.dumps({"compared": "logits" if head_loaded else "pre-logits features", **result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
