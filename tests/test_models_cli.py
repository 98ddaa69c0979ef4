"""`python -m ich_keras.models`: the table counts parameters from shapes, without running an initializer."""

import re

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
