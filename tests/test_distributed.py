"""train.distribution = "data_parallel" across two processes (JAX's distributed runtime, CPU collectives) trains
exactly as one process over the same two devices, writes the run directory once, and resumes; a process that fails
at the start stops the other at once."""

import csv
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ich_keras import distributed, folder_lock
from image_folder import make_image_folder

REPO = Path(__file__).resolve().parents[1]
CONFIG = """
[data]
source = "digits"
image_size = 32
max_per_class = 8
[model]
name = "coatnet_tiny"
[train]
batch_size = 8
steps_per_epoch = 3
epochs = 2
warmup_epochs = 0.5
restart_epochs = 1.5
distribution = "data_parallel"
[checkpoint]
keep = [{ metric = "loss", mode = "min", k = 2 }]
[log]
verbose = 0
"""


def _env(devices: int, **extra) -> dict:
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"  # keeps -O0
    return {**os.environ, "PYTHONPATH": str(REPO), "XLA_FLAGS": flags,
            "CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu", **extra}


def _fit(*args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ich_keras.fit", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait(*processes: subprocess.Popen) -> list[str]:
    outputs = [p.communicate(timeout=900)[0] for p in processes]
    for p, output in zip(processes, outputs):
        assert p.returncode == 0, output[-4000:]
    return outputs


def _start_job(*args_of: list[str]) -> list[subprocess.Popen]:
    """`fit ARGS` as processes 0, 1, ... of one job, one CPU device each; `args_of[i]` are process i's ARGS."""
    with socket.socket() as s:  # a free port for the coordinator
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    job = {"KERAS_DISTRIBUTION_JOB_ADDRESSES": f"localhost:{port}",
           "KERAS_DISTRIBUTION_NUM_PROCESSES": str(len(args_of))}
    return [_fit(*args, env=_env(1, **job, KERAS_DISTRIBUTION_PROCESS_ID=str(i))) for i, args in enumerate(args_of)]


def _two_processes(*args: str) -> list[str]:
    """`fit ARGS` as processes 0 and 1 of one job, one CPU device each."""
    return _wait(*_start_job(list(args), list(args)))


def _history(run_dir: Path) -> list[dict]:
    with open(run_dir / "history.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow  # five fresh processes, each compiling coatnet_tiny's train step
def test_two_processes_train_as_one_over_the_same_devices_and_resume(tmp_path):
    config = tmp_path / "dp.toml"
    config.write_text(CONFIG)
    single, multi = tmp_path / "single", tmp_path / "multi"
    reference = _fit("--config", str(config), "--workdir", str(single), env=_env(2))
    # The two-process run stops after epoch 1 and is resumed for epoch 2, against one uninterrupted process.
    outputs = _two_processes("--config", str(config), "--workdir", str(multi), "--set", "train.epochs=1")
    _wait(reference)
    summary = f"run        {multi}"
    assert summary in outputs[0] and summary not in outputs[1]  # only process 0 reports (and writes)
    assert not list(multi.rglob(".tmp-*"))
    resumed = _two_processes("--resume", str(multi), "--set", "train.epochs=2")
    for line in (f"Resuming {multi} after epoch 1 of 2", f"Run directory: {multi}"):
        assert line in resumed[0] and line not in resumed[1]

    expected, got = _history(single), _history(multi)
    assert [row["epoch"] for row in got] == ["1", "2"]
    for name in ("loss", "val_loss", "val_accuracy"):
        np.testing.assert_allclose([float(r[name]) for r in got], [float(r[name]) for r in expected], rtol=2e-4,
                                   err_msg=name)
    assert sorted(p.name for p in (multi / "checkpoints").iterdir()) == sorted(
        p.name for p in (single / "checkpoints").iterdir())
    assert (multi / "results.json").is_file()


def _failed_within(seconds: float, *processes: subprocess.Popen) -> list[str]:
    """The outputs of `processes`, which must all exit with a user error (status 2) within `seconds`."""
    deadline = time.monotonic() + seconds
    try:
        outputs = [p.communicate(timeout=max(0.0, deadline - time.monotonic()))[0] for p in processes]
    finally:
        for p in processes:  # one still waiting would outlive the test
            p.kill()
    for p, output in zip(processes, outputs):
        assert p.returncode == 2, output[-4000:]
    return outputs


# Well under JAX's coordination timeout. Without `distributed.all_or_none` the process left waiting still waited
# after 45 s (the lock), or failed after gloo's 30 s with DEADLINE_EXCEEDED and no word of why (the missing data).
STOPPED_WITHIN_S = 120


@pytest.mark.slow  # two fresh processes, each importing TensorFlow and JAX
def test_a_lock_only_process_0_meets_stops_both_processes(tmp_path):
    """Process 0 finds the run directory's lock held by another fit; process 1, which takes no lock, stops with it
    instead of waiting for process 0's start files."""
    config = tmp_path / "dp.toml"
    config.write_text(CONFIG)
    args = ["--config", str(config), "--workdir", str(tmp_path / "run")]
    with folder_lock.held(tmp_path / "run", "fit", "pick another --workdir"):
        outputs = _failed_within(STOPPED_WITHIN_S, *_start_job(args, args))
    assert re.search(r"error: Another fit \(pid \d+ on .+\) is writing to", outputs[0]), outputs[0][-4000:]
    assert ("error: Process 0 stopped while starting the run directory: its output says why. This process (1 of 2) "
            "stops with it.") in outputs[1], outputs[1][-4000:]
    assert not (tmp_path / "run" / "config.json").exists()


@pytest.mark.slow  # two fresh processes, each importing TensorFlow and JAX
def test_a_data_source_missing_on_process_1_stops_both_processes(tmp_path):
    """Process 1's host lacks the images (here: its data.source does not exist); process 0 stops before the model
    build's collectives, where it would otherwise wait for process 1."""
    config = tmp_path / "dp.toml"
    config.write_text(CONFIG)
    args = ["--config", str(config), "--workdir", str(tmp_path / "run")]
    missing = ["--set", f"data.source='{tmp_path / 'not_mounted'}'"]
    outputs = _failed_within(STOPPED_WITHIN_S, *_start_job(args, args + missing))
    assert "error: Process 1 stopped while checking the run: its output says why." in outputs[0], outputs[0][-4000:]
    assert "not_mounted' does not exist" in outputs[1], outputs[1][-4000:]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # two fresh processes, each importing TensorFlow and JAX
def test_hosts_whose_data_folders_hold_other_files_stop_before_training(tmp_path):
    """Each host scans its own data folder; one holding an image more per class would build other split lists and
    train on other images without a word."""
    config = tmp_path / "dp.toml"
    config.write_text(CONFIG)
    args = ["--config", str(config), "--workdir", str(tmp_path / "run"), "--set", "data.max_per_class=0"]
    here = make_image_folder(tmp_path / "host0", classes=2, per_class=6, size=32)
    there = make_image_folder(tmp_path / "host1", classes=2, per_class=7, size=32)
    outputs = _failed_within(STOPPED_WITHIN_S, *_start_job(args + ["--set", f"data.source='{here}'"],
                                                           args + ["--set", f"data.source='{there}'"]))
    for output in outputs:
        assert "The processes built different split lists: process 1 against process 0." in output, output[-4000:]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # two fresh processes, each importing TensorFlow and JAX
def test_hosts_holding_other_pictures_under_the_same_names_stop_before_training(tmp_path):
    """Same file names, so the same split lists; but host 1's copy of one photo is another picture (re-exported,
    or a copy gone wrong): it would train on it without a word."""
    config = tmp_path / "dp.toml"
    config.write_text(CONFIG)
    args = ["--config", str(config), "--workdir", str(tmp_path / "run"), "--set", "data.max_per_class=0"]
    here = make_image_folder(tmp_path / "host0", classes=2, per_class=6, size=32)
    there = shutil.copytree(here, tmp_path / "host1")
    Image.fromarray(np.full((32, 32, 3), 255, np.uint8)).save(there / "test/class_1/000.jpg")
    outputs = _failed_within(STOPPED_WITHIN_S, *_start_job(args + ["--set", f"data.source='{here}'"],
                                                           args + ["--set", f"data.source='{there}'"]))
    for output in outputs:
        assert ("The processes read other pictures under the same names: process 1 against process 0."
                in output), output[-4000:]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # two fresh processes, each importing TensorFlow and JAX
def test_hosts_holding_other_model_init_files_stop_before_the_model_build(tmp_path):
    """Each process loads model.init into its own replicas: copies that differ between hosts (one still syncing)
    would start the replicas from other weights."""
    from soup_fixtures import sane

    from ich_keras import models
    from ich_keras.init_weights import save_model_weights

    config = tmp_path / "dp.toml"
    config.write_text(CONFIG)
    inits = [save_model_weights(sane(models.build("coatnet_tiny", 10, 32), seed), tmp_path / f"w0_{seed}.weights.h5")
             for seed in (1, 2)]
    args = ["--config", str(config), "--workdir", str(tmp_path / "run")]
    outputs = _failed_within(STOPPED_WITHIN_S, *_start_job(*[args + ["--set", f"model.init='{w}'"] for w in inits]))
    for output in outputs:
        assert "The processes read different model.init files: process 1 against process 0." in output, \
            output[-4000:]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # two fresh processes, each importing TensorFlow and JAX
def test_processes_started_with_other_settings_stop_before_training(tmp_path):
    """Each process reads its own --set: another learning rate trained one mixture of two runs without a word, and
    another epoch count failed the processes apart at the test evaluation."""
    config = tmp_path / "dp.toml"
    config.write_text(CONFIG)
    args = ["--config", str(config), "--workdir", str(tmp_path / "run")]
    outputs = _failed_within(STOPPED_WITHIN_S, *_start_job(args + ["--set", "train.learning_rate=2e-3"],
                                                           args + ["--set", "train.learning_rate=1e-2"]))
    for i, output in enumerate(outputs):
        assert f"[distributed] process {i} of 2 joining the job at localhost:" in output  # not a silent wait
        assert "The processes were started with different settings: process 1 against process 0." in output, \
            output[-4000:]
    assert not (tmp_path / "run").exists()


# Without `distributed.end_after_lost_peer` process 0 printed the failed step's traceback at once, then waited in
# JAX's distributed shutdown until the coordination service missed process 1's heartbeats (50 to 100 s measured),
# and XLA aborted it with a page of C++ log (exit status 134).
LOST_PEER_ENDED_WITHIN_S = 30


@pytest.mark.slow  # two processes compiling coatnet_tiny's train step, then one epoch
def test_a_process_killed_while_training_ends_the_other_with_one_line_naming_it(tmp_path):
    """kill -9 (or the OOM killer) takes process 1 after epoch 1; process 0 ends at once with one line saying so and
    how to go on, and the run resumes from epoch 1's state."""
    config = tmp_path / "dp.toml"
    config.write_text(CONFIG)
    run_dir = tmp_path / "run"
    # Epochs enough that the job is still training when process 1 dies; not more: the train pipeline is built for
    # every epoch before the first step (0.15 s an epoch here; 1000 epochs took 4 min).
    args = ["--config", str(config), "--workdir", str(run_dir), "--set", "train.epochs=50"]
    survivor, victim = _start_job(args, args)
    try:
        deadline = time.monotonic() + 900
        while not (run_dir / "state/state.npz").is_file():  # epoch 1 done: process 1 dies in a later one
            assert survivor.poll() is None and victim.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        victim.kill()
        killed = time.monotonic()
        output = survivor.communicate(timeout=LOST_PEER_ENDED_WITHIN_S)[0]
        ended = time.monotonic() - killed
    finally:
        for p in (survivor, victim):  # one still running would outlive the test
            p.kill()
            p.wait()
    assert survivor.returncode == distributed.PEER_LOST_STATUS, output[-4000:]
    assert output.rstrip().splitlines()[-1] == (
        "error: process 1 of the job stopped (killed, out of memory, its host lost) and this one (0) stops with it; "
        f"once none is left, start every process again with: python -m ich_keras.fit --resume {run_dir}"), \
        output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    print(f"process 0 ended {ended:.1f} s after process 1 was killed")
    assert (run_dir / "state/state.npz").is_file() and not list(run_dir.rglob(".tmp-*"))


def test_only_a_broken_collective_connection_counts_as_a_lost_peer(monkeypatch):
    """What gloo raised in process 0 when process 1 was killed (multihost_utils' barrier); any other error keeps its
    traceback, and one process has no peer to lose."""
    gloo = ValueError("UNKNOWN: Gloo AllGather failed: [external/gloo/gloo/transport/tcp/pair.cc:538] Read error "
                      "[127.0.0.1]:52964: Connection reset by peer")
    assert distributed.lost_peer(gloo) is None
    monkeypatch.setattr(distributed, "process_count", lambda: 2)
    monkeypatch.setattr(distributed, "process_index", lambda: 1)
    assert distributed.lost_peer(gloo) == "process 0"
    assert distributed.lost_peer(RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")) is None
    monkeypatch.setattr(distributed, "process_count", lambda: 3)
    assert distributed.lost_peer(gloo) == "a peer process"


def test_all_or_none_costs_nothing_alone_and_exchanges_once_on_an_interrupt(monkeypatch):
    exchanges = []

    def exchange(failed):
        exchanges.append(failed)
        return [0] if failed else []

    monkeypatch.setattr(distributed, "_failed_processes", exchange)
    with pytest.raises(OSError, match="disk full"), distributed.all_or_none("starting"):
        raise OSError("disk full")  # one process: its own error as it is, and no exchange
    assert exchanges == []

    monkeypatch.setattr(distributed, "process_count", lambda: 2)
    with pytest.raises(KeyboardInterrupt), distributed.all_or_none("starting"):
        raise KeyboardInterrupt  # the others learn of it once, and it still stops this process
    with distributed.all_or_none("starting"):
        pass
    assert exchanges == [True, False]


def test_a_batch_the_devices_cannot_split_leaves_the_dtype_policy_as_it_was():
    """global_settings refuses the batch before it sets train.precision's policy, which would outlive the error."""
    code = (
        "import keras\n"
        "from ich_keras.config import config_from_dict\n"
        "from ich_keras.errors import UserError\n"
        "from ich_keras.train import global_settings\n"
        "cfg = config_from_dict({'train': {'precision': 'bfloat16', 'distribution': 'data_parallel', "
        "'batch_size': 3}})\n"
        "try:\n"
        "    with global_settings(cfg):\n"
        "        pass\n"
        "except UserError as error:\n"
        "    print(error)\n"
        "print('policy:', keras.config.dtype_policy().name, 'distribution:', keras.distribution.distribution())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(2), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "divisible by the 2 devices data_parallel splits it over" in done.stdout
    assert "policy: float32 distribution: None" in done.stdout


def test_a_job_of_several_processes_without_data_parallel_stops_before_writing(tmp_path, monkeypatch):
    """Without train.distribution = "data_parallel" no process joins the job: each would be process 0 and write."""
    from ich_keras.config import config_from_dict
    from ich_keras.errors import UserError
    from ich_keras.train import run

    monkeypatch.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", "2")
    cfg = config_from_dict({"data": {"source": "digits", "image_size": 32, "max_per_class": 8},
                            "model": {"name": "coatnet_tiny"}, "train": {"epochs": 1, "batch_size": 8},
                            "checkpoint": {"keep": [{"metric": "loss", "mode": "min", "k": 1}]},
                            "log": {"verbose": 0}})
    with pytest.raises(UserError, match=r'KERAS_DISTRIBUTION_NUM_PROCESSES=2 .*train.distribution = "data_parallel"'):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
