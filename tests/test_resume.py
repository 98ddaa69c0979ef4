"""Resume after a real SIGKILL mid-epoch: same epochs, continuous schedule, consistent manifest, same numbers."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ich_keras import cli, resume
from ich_keras.config import config_from_dict, config_to_dict

REPO = Path(__file__).parents[1]

EPOCHS, STEPS, RESTART_EPOCHS, PEAK, FLOOR = 4, 60, 2.0, 3e-3, 1e-4


def _config(source):
    return config_from_dict(
        {
            "data": {"source": str(source), "image_size": 64, "max_per_class": 6, "val_fraction": 0.34},
            "model": {"name": "coatnet_tiny"},
            "train": {
                "epochs": EPOCHS,
                "batch_size": 4,
                "steps_per_epoch": STEPS,
                "learning_rate": PEAK,
                "min_learning_rate": FLOOR,
                "restart_epochs": RESTART_EPOCHS,
            },
            "checkpoint": {
                "keep": [{"metric": "loss", "mode": "min", "k": 2}, {"metric": "f1", "mode": "max", "k": 2}]
            },
            "log": {"verbose": 0},
        }
    )


def _toml(cfg) -> str:
    """The config as TOML, through --set overrides of the CLI (values are JSON, which TOML reads for these)."""
    lines = []
    for section, values in config_to_dict(cfg).items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if section == "checkpoint":
                tables = ", ".join(
                    "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in rule.items()) + "}" for rule in value
                )
                lines.append(f"{key} = [{tables}]")
            else:
                lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def _fit_process(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "ich_keras.fit", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow  # three fit processes (killed, resumed, uninterrupted), each importing and compiling
def test_sigkill_mid_epoch_then_resume(tmp_path, image_folder):
    cfg = _config(image_folder)
    config_file = tmp_path / "c.toml"
    config_file.write_text(_toml(cfg))
    workdir = tmp_path / "killed"

    process = _fit_process("--config", str(config_file), "--workdir", str(workdir))
    state_file = workdir / resume.STATE_FILE
    deadline = time.monotonic() + 300
    while not state_file.exists():
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, "no epoch finished within 300 s"
        time.sleep(0.05)
    time.sleep(0.3)  # inside epoch 2 (an epoch takes about 2 s here)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert resume.load_state(workdir).epoch == 1, "the kill should land in epoch 2"
    assert len((workdir / "history.csv").read_text().splitlines()) == 2

    # Ctrl-C in the resumed run once epoch 2 is done: it says how to go on, and going on so finishes the run.
    resumed = _fit_process("--resume", str(workdir))
    while len((workdir / "history.csv").read_text().splitlines()) < 3:
        assert resumed.poll() is None, resumed.stdout.read()
        assert time.monotonic() < deadline + 300, "epoch 2 did not finish"
        time.sleep(0.05)
    for _ in range(3):  # a Ctrl-C landing in JAX's garbage-collection callback is lost there, as a user's would be
        resumed.send_signal(signal.SIGINT)
        try:
            output, _ = resumed.communicate(timeout=20)
            break
        except subprocess.TimeoutExpired:
            continue
    else:
        resumed.kill()
        pytest.fail(f"three Ctrl-C did not stop fit: {resumed.communicate()[0]}")
    assert resumed.returncode == cli.INTERRUPTED_STATUS, output
    assert "Resuming" in output and "after epoch 1 of 4" in output
    assert output.rstrip().endswith(f"continue with: python -m ich_keras.fit --resume {workdir}\ninterrupted"), output

    resumed = _fit_process("--resume", str(workdir))
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    assert "Resuming" in output

    # Same number of epochs, each once.
    with open(workdir / "history.csv") as f:
        header, *rows = [line.split(",") for line in f.read().splitlines()]
    history = [dict(zip(header, map(float, row))) for row in rows]
    assert [int(r["epoch"]) for r in history] == [1, 2, 3, 4]

    # Learning rate continuous: at the end of epoch e the schedule sits at update e * STEPS, on the SGDR curve.
    updates = np.array([r["updates"] for r in history])
    np.testing.assert_array_equal(updates, STEPS * np.arange(1, EPOCHS + 1))
    period = RESTART_EPOCHS * STEPS
    expected_lr = FLOOR + (PEAK - FLOOR) * 0.5 * (1 + np.cos(np.pi * (updates % period) / period))
    np.testing.assert_allclose([r["lr"] for r in history], expected_lr, rtol=1e-5)

    # Manifest consistent: every epoch scored once, files are exactly the referenced epochs.
    manifest = json.loads((workdir / "checkpoints/manifest.json").read_text())
    assert sorted(map(int, manifest["epochs"])) == [1, 2, 3, 4]
    referenced = {e for lst in manifest["ranked"].values() for e in lst}
    files = {p.name for p in (workdir / "checkpoints").glob("*.weights.h5")}
    assert files == {f"epoch_{e:03d}.weights.h5" for e in referenced}

    # Model, optimizer and data order all restored: the same numbers as a run that was never interrupted. In its
    # own process, as the killed run: a fresh process seeded alike initialises alike.
    reference = tmp_path / "uninterrupted"
    uninterrupted = _fit_process("--config", str(config_file), "--workdir", str(reference))
    output, _ = uninterrupted.communicate(timeout=600)
    assert uninterrupted.returncode == 0, output
    reference_manifest = json.loads((reference / "checkpoints/manifest.json").read_text())
    for epoch in ("1", "2", "3", "4"):
        for metric, value in reference_manifest["epochs"][epoch].items():
            assert manifest["epochs"][epoch][metric] == pytest.approx(value, abs=1e-4), (epoch, metric)
    assert manifest["ranked"] == reference_manifest["ranked"]
