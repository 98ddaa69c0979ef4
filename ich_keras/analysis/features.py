"""Block outputs of a model, for CKA: one feature model over the layers that end each block.

CoAtNet's layer names are timm module paths, so a block ends at `stages.S.blocks.B.add` (MBConv) or
`stages.S.blocks.B.add2` (transformer); the stem's last conv opens the list. Other architectures have no
such names yet, and `block_layers` says so.
"""

from __future__ import annotations

import re

import numpy as np

from ich_keras.evaluation import pad_batch

BLOCK_END = re.compile(r"^(stem\.conv2|stages\.\d+\.blocks\.\d+\.(add|add2))$")


def block_layers(model) -> list[str]:
    """Names of the layers whose outputs end a block, in graph order.

    Args:
        model: a functional keras.Model.

    Returns:
        Layer names; raises if the model names none (an architecture without timm-style block names).
    """
    names = [layer.name for layer in model.layers if BLOCK_END.match(layer.name)]
    if not names:
        raise ValueError(f"Model {model.name!r} has no layers named like timm blocks (stages.S.blocks.B.add); "
                         f"CKA needs block outputs. Received: model={model.name!r}")
    return names


def block_extractor(model):
    """A keras.Model sharing `model`'s layers that returns every block output (`block_layers` order).

    Build it once and load each model's weights into `model` before calling `block_outputs`: the extractor
    then compiles once for all of them.
    """
    import keras

    return keras.Model(model.inputs, [model.get_layer(n).output for n in block_layers(model)])


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
        batch, n = pad_batch(images[start:start + batch_size], batch_size if start else 0)
        for store, out in zip(outputs, extractor.predict_on_batch(batch)):
            store.append(np.asarray(out, np.float32)[:n])
    return {name: np.concatenate(store) for name, store in zip(names, outputs)}
