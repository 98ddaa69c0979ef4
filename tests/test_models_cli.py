"""`python -m ich_keras.models`: the table counts parameters from shapes, without running an initializer."""

import re

import pytest

from ich_keras import models
from ich_keras.models import __main__ as models_command


def test_the_table_counts_what_a_built_model_holds():
    names = ["coatnet_tiny", "densenet121"]
    rows = models_command.table(names, num_classes=7, image_size=64).splitlines()[2:]
    for name, row in zip(names, rows):
        model = models.build(name, 7, 64)  # initialised as usual, after the table's deferred builds
        trainable = sum(int(w.numpy().size) for w in model.trainable_weights)
        assert re.fullmatch(rf"\| `{name}` \| {trainable:,} \| {model.count_params():,} \| .+ \|", row), row


def test_list_prints_the_names(capsys):
    assert models_command.main(["--list"]) == 0
    assert capsys.readouterr().out.split() == models.model_names()


@pytest.mark.timm
def test_the_imagenet_weights_named_are_timms_and_the_others_have_none():
    # The table fit's "model.init does not exist" hint reads: it offers a conversion only where there is one.
    timm = pytest.importorskip("timm")
    for name in models.model_names():
        published = [f"timm/{tag}" for tag in timm.list_pretrained(f"{name}.*")]
        if name in models.IMAGENET_WEIGHTS:
            assert models.IMAGENET_WEIGHTS[name] in published, name
        else:
            assert published == [], name
