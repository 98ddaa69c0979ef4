"""CKA's block outputs for every architecture: the blocks it compares end where the model's own blocks end, and
the extractor shares the model's weights (ViT's blocks, which keras-hub runs inside one encoder layer, included)."""

import numpy as np
import pytest

from ich_keras import models
from ich_keras.analysis.features import block_extractor, block_layers, block_outputs


@pytest.mark.parametrize(("name", "count", "first", "last"), [
    ("coatnet_tiny", 5, "stem.conv2", "stages.3.blocks.0.add2"),
    pytest.param("resnet50", 17, "conv1_relu", "stack3_block2_out", marks=pytest.mark.slow),  # 7 s
    pytest.param("densenet121", 5, "conv1_relu", "relu", marks=pytest.mark.slow),  # 29 s: 120 layers to trace
    pytest.param("vit_base_patch16_224", 12, "transformer_block_1", "transformer_block_12",
                 marks=pytest.mark.slow),  # 9 s
])
def test_the_last_block_is_what_the_model_pools_and_loaded_weights_reach_the_extractor(name, count, first, last):
    model = models.build(name, 3, 32)
    extractor = block_extractor(model)
    names = block_layers(extractor)
    assert (len(names), names[0], names[-1]) == (count, first, last)
    images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    outputs = block_outputs(extractor, images, batch_size=2)
    assert list(outputs) == names

    body = model.get_layer("backbone") if name != "coatnet_tiny" else None
    if body is not None:  # the baselines pool their backbone's output; ViT's encoder closes with its LayerNorm
        expected = np.asarray(body(images))
        found = outputs[last]
        if name.startswith("vit"):
            found = np.asarray(body.get_layer("vit_encoder").layer_norm(found))
        np.testing.assert_allclose(found, expected, rtol=1e-4, atol=1e-4)

    # The extractor shares the model's layers: weights loaded into the model change what it returns.
    for variable in model.trainable_variables:
        variable.assign(variable.numpy() * 0.5)
    changed = block_outputs(extractor, images, batch_size=2)
    assert not np.allclose(changed[last], outputs[last])
