"""log.tensorboard: a real fit writes event files, read back with TensorBoard's own EventAccumulator; every epoch's
train and val numbers, learning rate and kept-checkpoint marker agree with history.csv and the manifest. A fit killed
before an epoch's events gets them on resume, and no step is written twice."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader  # noqa: E402
from tensorboard.util.tensor_util import make_ndarray  # noqa: E402

from ich_keras import checkpoints  # noqa: E402
from ich_keras.train import run  # noqa: E402
from logging_fixtures import tiny_config  # noqa: E402

pytestmark = pytest.mark.tensorboard


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


@pytest.mark.slow  # a 3-epoch fit
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


def kept_table(manifest: dict) -> str:
    rows = [f"| {metric} | {', '.join(map(str, ranked))} |" for metric, ranked in manifest["ranked"].items()]
    return "\n".join(["| metric | kept epochs, best first |", "|---|---|", *rows])


def tables_when_written(manifest: dict) -> dict[int, str]:
    """Replays the manifest epoch by epoch: the "kept_checkpoints" table right after each epoch."""
    replay = {**checkpoints.empty_manifest(()), "rules": manifest["rules"]}
    tables = {}
    for epoch in sorted(map(int, manifest["epochs"])):
        replay = checkpoints.update_manifest(replay, epoch, manifest["epochs"][str(epoch)])
        tables[epoch] = kept_table(replay)
    return tables


def every_event(folder) -> dict[str, list[tuple[int, object]]]:
    """{tag: [(step, value), ...]} of every summary in every event file of a folder, duplicates kept (the
    EventAccumulator would hide a step written twice)."""
    events = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                events.setdefault(value.tag, []).append((event.step, make_ndarray(value.tensor)))
    return events


def test_a_cut_short_last_record_counts_as_not_written(tmp_path):
    """A writer killed mid-write leaves its last record cut short: reading the steps stops before it."""
    import tensorflow as tf

    from ich_keras.run_logging import event_steps

    writer = tf.summary.create_file_writer(str(tmp_path))
    (path,) = tmp_path.glob("events.out.tfevents.*")
    sizes = []
    for step in (1, 2, 3):
        with writer.as_default(step=step):
            tf.summary.scalar("epoch_loss", 1.0 / step)
        writer.flush()
        sizes.append(path.stat().st_size)
    writer.close()
    whole = path.read_bytes()
    assert len(whole) == sizes[-1]
    assert event_steps(tmp_path) == {"epoch_loss": {1, 2, 3}}
    # A record: 8-byte length, its 4-byte CRC, the data, the data's 4-byte CRC. Cut in each part of step 3's.
    for kept in (5, 10, 14, sizes[2] - sizes[1] - 2):
        path.write_bytes(whole[:sizes[1] + kept])
        assert event_steps(tmp_path) == {"epoch_loss": {1, 2}}, kept
    assert event_steps(tmp_path / "absent") == {}


KILLED_BEFORE_EPOCH_2_IS_WRITTEN = """
import os, signal, sys
from ich_keras import run_logging, train
from logging_fixtures import tiny_config
write = run_logging.TensorBoardLogger.on_epoch_end
def killed_in_epoch_2(self, epoch, logs=None):
    if epoch == 1:  # epoch 2's state is saved (SaveRunState comes first); its events are not written
        os.kill(os.getpid(), signal.SIGKILL)
    write(self, epoch, logs)
run_logging.TensorBoardLogger.on_epoch_end = killed_in_epoch_2
train.run(tiny_config(epochs=3, log={"tensorboard": True}), sys.argv[1])
"""


@pytest.mark.slow  # a killed fit and two resumes
def test_an_epoch_killed_before_its_events_is_written_on_resume(tmp_path):
    """A kill after epoch 2's state was saved and before its events: --resume does not train epoch 2 again, so it
    writes it from history.csv and the manifest (TensorBoard had steps 1 and 3 of epochs 1-3), with the last
    record the kill cut short; a resume after a finished run writes no step twice."""
    workdir = tmp_path / "run"
    tests = Path(__file__).parent
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(tests.parent), str(tests), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", KILLED_BEFORE_EPOCH_2_IS_WRITTEN, str(workdir)], env=env,
                          timeout=600)
    assert done.returncode == -9
    validation = workdir / "tensorboard" / "validation"
    (path,) = validation.glob("events.out.tfevents.*")
    path.write_bytes(path.read_bytes()[:-3])  # as if the kill came during the last write: epoch 1's table
    held = every_event(validation)
    assert "kept_checkpoints" not in held and [step for step, _ in held["checkpoint_kept"]] == [1]

    run(tiny_config(epochs=3, log={"tensorboard": True}), workdir, resume_run=True)
    run(tiny_config(epochs=4, log={"tensorboard": True}), workdir, resume_run=True)  # extends the finished run

    with open(workdir / "history.csv", newline="") as f:
        history = {int(row["epoch"]): row for row in csv.DictReader(f)}
    manifest = json.loads((workdir / "checkpoints" / "manifest.json").read_text())
    train = every_event(workdir / "tensorboard" / "train")
    val = every_event(validation)
    epochs = [1, 2, 3, 4]
    assert sorted(history) == epochs
    for events in (train, val):
        for tag, written in events.items():
            assert sorted(step for step, _ in written) == epochs, tag  # each once
    for tag, column in (("epoch_loss", "loss"), ("epoch_accuracy", "accuracy"), ("epoch_learning_rate", "lr")):
        np.testing.assert_allclose([v for _, v in sorted(train[tag])], [float(history[e][column]) for e in epochs],
                                   rtol=1e-6, err_msg=tag)
    for metric in ("loss", "accuracy", "f1", "precision", "recall"):
        np.testing.assert_allclose([v for _, v in sorted(val[f"epoch_{metric}"])],
                                   [float(history[e][f"val_{metric}"]) for e in epochs], rtol=1e-6, err_msg=metric)
    assert {e: float(v) for e, v in val["checkpoint_kept"]} == kept_when_written(manifest)
    assert {e: v.item().decode() for e, v in val["kept_checkpoints"]} == tables_when_written(manifest)
