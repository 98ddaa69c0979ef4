"""Block outputs of a model, for CKA: one feature model over the layers that end each block.

The blocks, by architecture (`BLOCK_END` names their last layers):
- CoAtNet (layer names are timm module paths): the stem's last conv `stem.conv2`, then each block's residual add,
  `stages.S.blocks.B.add` (MBConv) or `stages.S.blocks.B.add2` (transformer).
- ResNet-50 (keras-hub names): the stem's `conv1_relu`, then each bottleneck block's `stackS_blockB_out`.
- DenseNet-121: the stem's `conv1_relu`, each dense block with its transition (`transitionN_pool`), the last
  dense block with the final norm (`relu`).
- ViT-B/16: each transformer block's output (`transformer_block_N`). keras-hub runs them inside one encoder layer,
  so `block_extractor` calls them one by one on the patch embedding (the same layers, the same weights).
The baselines' blocks live in their nested keras-hub backbone, which takes the model's own input.
"""

from __future__ import annotations

import re

import numpy as np

from ich_keras.evaluation import pad_batch

BLOCK_END = re.compile(r"^(stem\.conv2|stages\.\d+\.blocks\.\d+\.(add|add2)"  # CoAtNet
                       r"|conv1_relu|stack\d+_block\d+_out"  # ResNet-50, and DenseNet-121's stem
                       r"|transition\d+_pool|relu"  # DenseNet-121
                       r"|transformer_block_\d+)$")  # ViT-B/16
BACKBONE = "backbone"  # `ich_keras.models.baselines.BACKBONE_NAME`, without importing the model registry


def block_layers(model) -> list[str]:
    """Names of the layers whose outputs end a block, in graph order.

    Args:
        model: a functional keras.Model, e.g. a `block_extractor`.

    Returns:
        Layer names; raises if the model names none (an architecture without known block names).
    """
    names = [layer.name for layer in model.layers if BLOCK_END.match(layer.name)]
    if not names:
        raise ValueError(f"Model {model.name!r} has no layers named like the blocks of CoAtNet, ResNet, DenseNet or "
                         f"ViT; CKA needs block outputs. Received: model={model.name!r}")
    return names


def block_extractor(model):
    """A keras.Model sharing `model`'s layers that returns every block output (`block_layers` order).

    Build it once and load each model's weights into `model` before calling `block_outputs`: the extractor
    then compiles once for all of them.
    """
    import keras

    body = model.get_layer(BACKBONE) if any(layer.name == BACKBONE for layer in model.layers) else model
    encoder = next((layer for layer in body.layers if hasattr(layer, "encoder_layers")), None)
    if encoder is None:
        return keras.Model(body.inputs, [body.get_layer(n).output for n in block_layers(body)])
    # ViT: the patch embedding, then the encoder's blocks called one by one (its dropout is inactive at inference).
    x, outputs = body.layers[body.layers.index(encoder) - 1].output, []
    for block in encoder.encoder_layers:
        x = block(x)
        outputs.append(x)
    return keras.Model(body.inputs, outputs)


def block_outputs(extractor, images: np.ndarray, batch_size: int = 32) -> dict[str, np.ndarray]:
    """Every block's output on `images` with the weights its model holds now.

    Args:
        extractor: from `block_extractor`.
        images: (n, H, W, 3) normalised float32 images.
        batch_size: forward batch size.

    Returns:
        {block name: (n, ...) float32 outputs}.
    """
    names = block_layers(extractor)  # the extractor holds the same named layers, in the same order
    outputs = [[] for _ in names]
    for start in range(0, len(images), batch_size):
        # The first batch sets the one shape XLA compiles for (fewer images than batch_size: their own count); a
        # short last batch is padded to it.
        batch, n = pad_batch(images[start:start + batch_size], batch_size if start else 0)
        for store, out in zip(outputs, extractor.predict_on_batch(batch)):
            store.append(np.asarray(out, np.float32)[:n])
    return {name: np.concatenate(store) for name, store in zip(names, outputs)}
