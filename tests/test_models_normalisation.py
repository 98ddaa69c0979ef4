"""Each registry model normalises its input as its timm weights were trained (timm's `pretrained_cfg`): the
converter's parity check compares models on inputs already normalised, so it cannot see a wrong mean or std."""

import pytest

from ich_keras import models

timm = pytest.importorskip("timm")
pytestmark = pytest.mark.timm


def test_each_model_normalises_as_its_timm_weights_were_trained():
    # coatnet_bn_0_rw_224 used the 0.5 / 0.5 of timm's other CoAtNets; its weights were trained on ImageNet's
    # statistics, so a fine-tune from them saw inputs shifted and squeezed about 2.2x.
    ours = []
    for name in models.model_names():
        pretrained = timm.models.get_pretrained_cfg(name)
        if pretrained is None:  # a model of ours, with no timm weights
            ours.append(name)
            continue
        entry = models.entry(name)
        assert (entry.mean, entry.std) == (tuple(pretrained.mean), tuple(pretrained.std)), name
    assert ours == ["coatnet_tiny"]
