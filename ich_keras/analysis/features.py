"""Block outputs of a model, for CKA: a feature model over the layers that end each block.

CoAtNet's layer names are timm module paths, so a block ends at `stages.S.blocks.B.add` (MBConv) or
`stages.S.blocks.B.add2` (transformer); the stem's last conv opens the list. Other architectures have no
such names yet, and `block_layers` says so.
"""

from __future__ import annotations

import re

import numpy as np

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


def block_outputs(model, weights_path: str | None, images: np.ndarray, batch_size: int = 32,
                  load=None) -> dict[str, np.ndarray]:
    """Every block's output on `images` with the weights in `weights_path` loaded into `model`.

    Args:
        model: a built functional keras.Model (its weights are overwritten).
        weights_path: a `.weights.h5` file, or None when `load` loads the weights.
        images: (n, H, W, 3) normalised float32 images.
        batch_size: forward batch size.
        load: optional `model -> None` loader used instead of `model.load_weights(weights_path)` (the pretrained
            model, whose head may have another class count).

    Returns:
        {block name: (n, ...) float32 outputs}.
    """
    import keras

    if load is not None:
        load(model)
    else:
        model.load_weights(weights_path)
    names = block_layers(model)
    extractor = keras.Model(model.inputs, [model.get_layer(n).output for n in names])
    outputs = [[] for _ in names]
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        n = len(batch)
        if n < batch_size and start:  # pad to the compiled shape rather than compile another
            batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - n, axis=0)])
        for store, out in zip(outputs, extractor.predict_on_batch(batch)):
            store.append(np.asarray(out, np.float32)[:n])
    return {name: np.concatenate(store) for name, store in zip(names, outputs)}
