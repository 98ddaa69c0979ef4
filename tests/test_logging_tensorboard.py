"""log.tensorboard: a real fit writes event files, read back with TensorBoard's own EventAccumulator; every epoch's
train and val numbers, learning rate and kept-checkpoint marker agree with history.csv and the manifest."""

import csv
import json

import numpy as np
import pytest

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.util.tensor_util import make_ndarray  # noqa: E402

from ich_keras import checkpoints  # noqa: E402
from ich_keras.train import run  # noqa: E402
from logging_fixtures import tiny_config  # noqa: E402

pytestmark = [pytest.mark.tensorboard, pytest.mark.slow]  # a 3-epoch fit


def read_events(folder) -> dict[str, dict[int, object]]:
    """{tag: {step: value}} of every summary in an event-file folder (tf.summary writes scalars as tensors)."""
    accumulator = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    accumulator.Reload()
    return {tag: {event.step: make_ndarray(event.tensor_proto) for event in accumulator.Tensors(tag)}
            for tag in accumulator.Tags()["tensors"]}


def kept_when_written(manifest: dict) -> dict[int, float]:
    """Replays the manifest epoch by epoch: 1.0 for each epoch that entered some top-k list when it finished."""
    replay = checkpoints.empty_manifest(())
    replay["rules"] = manifest["rules"]
    kept = {}
    for epoch in sorted(map(int, manifest["epochs"])):
        replay = checkpoints.update_manifest(replay, epoch, manifest["epochs"][str(epoch)])
        kept[epoch] = float(str(epoch) in replay["kept"])
    return kept


def test_fit_writes_each_epoch_to_tensorboard(tmp_path):
    workdir = tmp_path / "run"
    run(tiny_config(epochs=3, train={"restart_epochs": 2.0}, log={"tensorboard": True}), workdir)
    with open(workdir / "history.csv", newline="") as f:
        history = {int(row["epoch"]): row for row in csv.DictReader(f)}
    manifest = json.loads((workdir / "checkpoints" / "manifest.json").read_text())
    train = read_events(workdir / "tensorboard" / "train")
    val = read_events(workdir / "tensorboard" / "validation")

    epochs = [1, 2, 3]
    for tag, column in (("epoch_loss", "loss"), ("epoch_accuracy", "accuracy"), ("epoch_learning_rate", "lr")):
        assert sorted(train[tag]) == epochs, tag
        np.testing.assert_allclose([train[tag][e] for e in epochs], [float(history[e][column]) for e in epochs],
                                   rtol=1e-6, err_msg=tag)
    for metric in ("loss", "accuracy", "f1", "precision", "recall"):
        np.testing.assert_allclose([val[f"epoch_{metric}"][e] for e in epochs],
                                   [manifest["epochs"][str(e)][metric] for e in epochs], rtol=1e-6, err_msg=metric)
    # Cosine over 2 epochs: the rates logged differ between epochs.
    assert len({float(train["epoch_learning_rate"][e]) for e in epochs}) > 1

    assert {e: float(val["checkpoint_kept"][e]) for e in epochs} == kept_when_written(manifest)
    last_table = val["kept_checkpoints"][3].item().decode()
    for metric, ranked in manifest["ranked"].items():
        assert f"| {metric} | {', '.join(map(str, ranked))} |" in last_table
