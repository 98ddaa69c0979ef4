"""log.wandb offline: a real fit, then soup and analyze with --wandb, all into one W&B run of the run directory.

wandb 0.31 writes an offline run only as its binary run-ID.wandb file (no config.yaml or summary JSON) and ships no
Python reader for it; `read_records` decodes the file's framing (LevelDB log blocks after a 7-byte ":W&B" header)
into wandb's own protobuf `Record`s.
"""

import csv
import json
import struct
from pathlib import Path

import numpy as np
import pytest

wandb = pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2  # noqa: E402

from ich_keras import analyze, soup  # noqa: E402
from ich_keras.errors import UserError  # noqa: E402
from ich_keras.run_logging import wandb_run  # noqa: E402
from ich_keras.train import run  # noqa: E402
from logging_fixtures import tiny_config  # noqa: E402

pytestmark = [pytest.mark.wandb, pytest.mark.slow]  # a fit, a soup and an analysis

BLOCK = 32768  # LevelDB log block size; a record header is crc32 (4), length (2), type (1)
FULL, FIRST, LAST = 1, 2, 4


def read_records(path: Path) -> list:
    """Every `Record` in an offline run's .wandb file, in order."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    records, chunks, position = [], [], 7
    while position + 7 <= len(data):
        left = BLOCK - position % BLOCK
        if left < 7:  # block trailer: padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if kind == 0:  # zero padding after the last record
            break
        chunks.append(data[position + 7:position + 7 + length])
        position += 7 + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            records.append(record)
            chunks = []
    return records


def offline_run(run_dir: Path, run_id: str, job_type: str) -> tuple[dict, dict[int, dict], dict, Path]:
    """(config, {step: history values}, summary, files folder) of the run's offline part written by `job_type`."""
    # run.finish() returns before wandb's service process has flushed and closed the .wandb file (a CI run once
    # read it without its run record); teardown waits for the service to finish every file.
    wandb.teardown()
    for folder in sorted((run_dir / "wandb").glob(f"offline-run-*-{run_id}")):
        records = read_records(folder / f"run-{run_id}.wandb")
        run_record = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        if run_record.job_type == job_type:
            break
    else:
        raise AssertionError(f"no offline {job_type} part of run {run_id} in {run_dir / 'wandb'}")
    config = {item.key: json.loads(item.value_json) for item in run_record.config.update}
    history, summary = {}, {}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "history":
            values = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item}
            history[values["_step"]] = values
        elif kind == "summary":
            summary.update({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.summary.update})
    return config, history, summary, folder / "files"


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B in offline mode with its settings, cache and artifacts in the test's folder (nothing leaves it)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    for variable in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / "wandb_home"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def test_fit_soup_and_analysis_land_in_one_offline_wandb_run(tmp_path, offline_wandb):
    workdir = tmp_path / "run"
    cfg = tiny_config(epochs=2, log={"wandb": True})
    run(cfg, workdir)
    run_id = json.loads((workdir / "wandb" / "run.json").read_text())["id"]

    config, history, summary, _ = offline_run(workdir, run_id, "fit")
    saved = json.loads((workdir / "config.json").read_text())
    assert {key: config[key] for key in saved} == saved  # the resolved config fit ran with
    with open(workdir / "history.csv", newline="") as f:
        rows = {int(row["epoch"]): row for row in csv.DictReader(f)}
    assert sorted(history) == [1, 2]
    for epoch, row in rows.items():
        for key, column in (("loss", "loss"), ("accuracy", "accuracy"), ("val_loss", "val_loss"),
                            ("val_f1", "val_f1"), ("learning_rate", "lr")):
            np.testing.assert_allclose(history[epoch][key], float(row[column]), rtol=1e-6, err_msg=key)
    manifest = json.loads((workdir / "checkpoints" / "manifest.json").read_text())
    assert summary["kept_checkpoints"] == manifest["ranked"]

    soup.main([str(workdir), "--uniform", "--quiet", "--wandb"])
    _, _, soup_summary, _ = offline_run(workdir, run_id, "soup")
    results = json.loads((workdir / "soups" / "uniform" / "results.json").read_text())
    for split in ("val", "test"):
        for metric in ("accuracy", "f1", "loss"):
            assert soup_summary[f"soup/uniform/{split}/{metric}"] == pytest.approx(results[split][metric])

    analysis = analyze.main([str(workdir), "--quiet", "--wandb", "--batch-size", "8", "--cka-examples", "0"])
    _, _, analysis_summary, files = offline_run(workdir, run_id, "analyze")
    assert analysis_summary["analysis/best_single"] == analysis["best_single"]
    assert analysis_summary["analysis/soup"] == analysis["soup"]
    assert (files / "analysis" / "report.md").read_text() == (workdir / "analysis" / "report.md").read_text()
    assert not (files / "analysis" / "report.md").is_symlink()  # a copy: the run directory may move before sync


@pytest.mark.parametrize("text", ['{"id": "ab12cd34", "proj', '{"id": 7, "project": "ich_keras"}', '["ab12cd34"]'])
def test_a_damaged_wandb_record_is_named(tmp_path, offline_wandb, text):
    record = tmp_path / "wandb" / "run.json"
    record.parent.mkdir()
    record.write_text(text)
    with pytest.raises(UserError, match="run.json"):
        wandb_run(tmp_path, tiny_config(), job_type="fit")
    assert record.read_text() == text  # left for the user to restore


KILLED_FIT = """
import os, signal, sys, time
import keras
from ich_keras.run_logging import WandbLogger
from logging_fixtures import tiny_config
model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
model.compile(optimizer="sgd", loss="mse")
logger = WandbLogger(tiny_config(), __import__("pathlib").Path(sys.argv[1]), lambda updates: 0.1)
logger.set_model(model)
logger.on_train_begin()
for epoch in range(2):
    logger.on_epoch_end(epoch, {"loss": 1.0 / (epoch + 1), "val_loss": 2.0})
time.sleep(3)
os.kill(os.getpid(), signal.SIGKILL)  # kill -9 mid-run: no finish
"""


def test_epochs_logged_before_a_kill_reach_the_offline_file(tmp_path):
    """A fit killed with SIGKILL never finishes its W&B run; the epochs it logged (the last one too) must already be
    in the .wandb file, else they are missing from the W&B run after --resume."""
    import os
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    tests = Path(__file__).parent
    env = {**os.environ, "WANDB_SILENT": "true", "WANDB_MODE": "offline",
           "PYTHONPATH": os.pathsep.join([str(tests.parent), str(tests), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", KILLED_FIT, str(run_dir)], env=env, timeout=300)
    assert done.returncode == -9
    run_id = json.loads((run_dir / "wandb" / "run.json").read_text())["id"]
    (path,) = (run_dir / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    steps = []
    for record in read_records(path):
        if record.WhichOneof("record_type") == "history":
            steps.append(record.history.step.num)
    assert steps == [1, 2]


KILLED_BEFORE_EPOCH_2_IS_LOGGED = """
import os, signal, sys, time
from ich_keras import run_logging, train
from logging_fixtures import tiny_config
log = run_logging.WandbLogger.on_epoch_end
def killed_in_epoch_2(self, epoch, logs=None):
    if epoch == 1:  # epoch 2's state is saved (SaveRunState comes first); its W&B line is not logged
        time.sleep(3)  # epoch 1's line settles in the file and in logged.json
        os.kill(os.getpid(), signal.SIGKILL)
    log(self, epoch, logs)
run_logging.WandbLogger.on_epoch_end = killed_in_epoch_2
train.run(tiny_config(epochs=3, log={"wandb": True}), sys.argv[1])
"""


def fit_parts(run_dir: Path, run_id: str) -> list[dict[int, dict]]:
    """{step: history values} of each offline part of the run that a fit wrote, in the order of their steps."""
    wandb.teardown()  # as in offline_run: every file finished
    parts = []
    for folder in (run_dir / "wandb").glob(f"offline-run-*-{run_id}"):
        history = {}
        for record in read_records(folder / f"run-{run_id}.wandb"):
            if record.WhichOneof("record_type") == "history":
                values = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item}
                history[values["_step"]] = values
        parts.append(history)
    return sorted(parts, key=lambda history: min(history, default=0))


def test_an_epoch_killed_before_its_wandb_line_is_logged_on_resume(tmp_path, offline_wandb):
    """A kill after epoch 2's state was saved and before its W&B line: --resume does not train epoch 2 again, so it
    logs it from history.csv (W&B had steps [1, 3] for epochs 1-3); a resume after a finished run logs no epoch
    twice."""
    import os
    import subprocess
    import sys

    workdir = tmp_path / "run"
    tests = Path(__file__).parent
    env = {**os.environ, "WANDB_SILENT": "true",
           "PYTHONPATH": os.pathsep.join([str(tests.parent), str(tests), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", KILLED_BEFORE_EPOCH_2_IS_LOGGED, str(workdir)], env=env,
                          timeout=600)
    assert done.returncode == -9
    run_id = json.loads((workdir / "wandb" / "run.json").read_text())["id"]
    assert [sorted(part) for part in fit_parts(workdir, run_id)] == [[1]]

    run(tiny_config(epochs=3, log={"wandb": True}), workdir, resume_run=True)
    run(tiny_config(epochs=4, log={"wandb": True}), workdir, resume_run=True)  # extends the finished run

    parts = fit_parts(workdir, run_id)
    assert [sorted(part) for part in parts] == [[1], [2, 3], [4]]
    with open(workdir / "history.csv", newline="") as f:
        row = next(row for row in csv.DictReader(f) if row["epoch"] == "2")
    for key, column in (("loss", "loss"), ("val_loss", "val_loss"), ("val_f1", "val_f1"), ("learning_rate", "lr")):
        np.testing.assert_allclose(parts[1][2][key], float(row[column]), rtol=1e-6, err_msg=key)
    assert json.loads((workdir / "wandb" / "logged.json").read_text()) == {"id": run_id, "epoch": 4}


STOPPED_FIT = """
import sys
from ich_keras import cli, train
from logging_fixtures import tiny_config
cli.run(lambda argv: train.run(tiny_config(epochs=50, log={"wandb": True}), argv[0]), sys.argv[1:])
"""


def test_a_fit_stopped_right_after_an_epoch_logs_no_epoch_twice_on_resume(tmp_path, offline_wandb):
    """A Ctrl-C ends a command without waiting for logged.json's 2 s timer (cli.run leaves through os._exit): the
    stopped fit finishes its W&B run and records its last epoch on the way out, so the resume does not log it
    again."""
    import os
    import signal
    import subprocess
    import sys
    import time

    workdir = tmp_path / "run"
    tests = Path(__file__).parent
    env = {**os.environ, "WANDB_SILENT": "true",
           "PYTHONPATH": os.pathsep.join([str(tests.parent), str(tests), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-c", STOPPED_FIT, str(workdir)], env=env)
    history = workdir / "history.csv"
    deadline = time.monotonic() + 300
    while not (history.is_file() and len(history.read_text().splitlines()) >= 3):  # header + 2 epochs
        assert process.poll() is None and time.monotonic() < deadline, "the fit ended or stalled before epoch 2"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130
    run_id = json.loads((workdir / "wandb" / "run.json").read_text())["id"]
    [stopped] = fit_parts(workdir, run_id)
    assert json.loads((workdir / "wandb" / "logged.json").read_text())["epoch"] == max(stopped)

    finished = len(history.read_text().splitlines()) - 1
    run(tiny_config(epochs=finished + 1, log={"wandb": True}), workdir, resume_run=True)
    steps = [step for part in fit_parts(workdir, run_id) for step in sorted(part)]
    assert steps == list(range(1, finished + 2))
