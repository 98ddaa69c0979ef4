"""`python -m ich_keras.convert`: a timm checkpoint as ich_keras weights (`.weights.h5`), optionally proven equal.

    python -m ich_keras.convert --model coatnet_0_rw_224 --checkpoint model.safetensors \\
        --output coatnet_0.weights.h5 [--num-classes 17] [--image-size 64] [--check]

Converting reads `.safetensors` with numpy (no torch) or `.pth`/`.bin` with `torch.load(weights_only=True)`; a
checkpoint of timm's train.py (`model_best.pth.tar`) gives its model's weights, or with `--ema` their EMA copy (one
that holds only the EMA copy gives that, and says so).
`--check` needs torch + timm: it builds timm's model from the same checkpoint and prints max |Δlogit|, the relative
error and top-1 agreement on random images (pre-logits features instead when the head was replaced or is all
zeros); a relative error above 1e-4 or a top-1 disagreement exits with status 1 and writes no file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ich_keras import cli
from ich_keras.errors import UserError

SUFFIX = ".weights.h5"
CHECK_FAILED_STATUS = 1  # not a user error (2): the command ran, and its weights do not equal timm's


def main(argv=None) -> int:
    """Parses, converts, writes the weights atomically and, with --check, prints the parity numbers."""
    parser = cli.parser("python -m ich_keras.convert", __doc__)
    parser.add_argument("--model", required=True, help="ich_keras model name, e.g. coatnet_0_rw_224")
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="timm .safetensors / .pth / .bin file, or a training checkpoint (.pth.tar)")
    parser.add_argument("--ema", action="store_true",
                        help="a training checkpoint's EMA weights (state_dict_ema) instead of its model's")
    parser.add_argument("--output", required=True, type=Path, help=f"output file, ending in {SUFFIX}")
    parser.add_argument("--num-classes", type=cli.positive_int,
                        help="new head width (the checkpoint's head is dropped; default: the checkpoint's head)")
    parser.add_argument("--image-size", type=cli.positive_int, default=224,
                        help="input side; a multiple of 32 for CoAtNet (default: 224)")
    parser.add_argument("--check", action="store_true", help="compare with timm on random images (torch+timm)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    args = parser.parse_args(argv)
    if not args.output.name.endswith(SUFFIX):
        raise UserError(f"--output must end in {SUFFIX} (Keras' weights format). Received: output={str(args.output)!r}")
    cli.check_replaceable(args.output, args.overwrite)
    if args.check:
        try:  # torch before TensorFlow arrives with keras-hub (timm crashes otherwise)
            from ich_keras import parity
        except ImportError as error:
            raise UserError(f"--check needs torch and timm ({error}): pip install -e '.[convert]'") from None

    from ich_keras import models
    from ich_keras.convert import checkpoint_num_classes, convert, head_layer_name
    from ich_keras.convert.checkpoint import EMA_KEYS, read_checkpoint
    from ich_keras.init_weights import save_model_weights

    models.check(args.model, args.image_size, "--image-size")  # before the checkpoint is read (seconds)
    state_dict, held_by = read_checkpoint(args.checkpoint, args.ema)
    model, head_loaded = convert(args.model, state_dict, args.num_classes, args.image_size)
    if args.check:  # before writing: a check that cannot run (a timm without the model) leaves no file to --overwrite
        source_classes = checkpoint_num_classes(args.model, state_dict) or 0  # 0: timm's model without a head
        reference = parity.timm_model(args.model, source_classes, args.image_size, state_dict)
        # A head of zeros (timm's weight_init="jax", a checkpoint saved right after reset_classifier) gives every
        # image the same logits, its bias: they equal timm's whatever the body, so the body is compared instead.
        zero_head = head_loaded and not np.any(model.get_layer(head_layer_name(args.model)).kernel.numpy())
        features = head_layer_name(args.model) if zero_head or not head_loaded else None
        result = parity.compare(model, reference, args.image_size, batch=4, keras_output=features)
        compared = ("logits" if features is None else
                    "pre-logits features (the checkpoint's head is all zeros)" if zero_head else "pre-logits features")
        report = json.dumps({"compared": compared, **result}, indent=2)
        if failure := parity.disagreement(result):
            print(report)
            print(f"error: --check failed, ich_keras and timm disagree ({failure}); {args.output} was not written",
                  file=sys.stderr)
            return CHECK_FAILED_STATUS
    save_model_weights(model, args.output)  # atomically, and a full disk is an error, not a crash (HDF5 in memory)
    print(f"Wrote {args.output}: {args.model}, {model.count_params():,} weights, "
          f"{model.output_shape[-1]} classes, {args.image_size} px")
    if held_by in EMA_KEYS and not args.ema:  # the user may think these are the model's own weights
        print(f"Note: {args.checkpoint} holds only EMA weights ({held_by}), no model weights: those were converted")
    if not head_loaded:
        had = "the checkpoint's head was dropped" if checkpoint_num_classes(args.model, state_dict) else \
            "the checkpoint has no head"
        print(f"Note: {had}; the new {args.num_classes}-class head is freshly initialised")
    for note in _resize_notes(model, state_dict):
        print(f"Note: {note}, as timm resizes them: the checkpoint was made for another image size than "
              f"--image-size {args.image_size}")
    if args.check:
        print(report)
    return 0


def _resize_notes(model, state_dict) -> list[str]:
    """What the conversion resized because the checkpoint was made for another image size (timm's test_coatnet is
    made at 160 px), in the words fit uses for its `model.init`."""
    from ich_keras.init_weights import POS_EMBED, REL_POS_TABLE, Resize, resize_notes
    from ich_keras.models.baselines import VIT_B16
    from ich_keras.models.layers import RelPosAttention

    resizes = [Resize(REL_POS_TABLE, REL_POS_TABLE.side(table.shape), layer.feature_size)
               for layer in model.layers if isinstance(layer, RelPosAttention)
               and (table := state_dict.get(f"{layer.name}.relative_position_bias_table")) is not None]
    if (pos_embed := state_dict.get("pos_embed")) is not None and pos_embed.ndim == 3:  # ViT: (1, 1 + g*g, dim)
        grid = model.input_shape[1] // VIT_B16["patch_size"]
        resizes.append(Resize(POS_EMBED, POS_EMBED.side(pos_embed.shape[1:]), grid))
    return resize_notes(r for r in resizes if r.before and r.before != r.after)


if __name__ == "__main__":
    cli.run(main)
