"""Top-k manifest rules, the learning-rate schedule, and data-parallel training on two CPU devices."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ich_keras import checkpoints
from ich_keras.config import KeepRule
from ich_keras.schedules import WarmupCosineRestarts

REPO = Path(__file__).parents[1]


def test_rank_ties_go_to_the_earlier_epoch_and_nan_ranks_last():
    epochs = {
        "1": {"f1": 0.5},
        "2": {"f1": 0.7},
        "3": {"f1": float("nan")},
        "4": {"f1": 0.7},
        "5": {"f1": 0.6},
    }
    assert checkpoints.rank_epochs(epochs, "f1", "max", 3) == [2, 4, 5]
    assert checkpoints.rank_epochs(epochs, "f1", "min", 5) == [1, 5, 2, 4, 3]
    with pytest.raises(ValueError, match="mode='best'"):
        checkpoints.rank_epochs(epochs, "f1", "best", 2)


def test_manifest_keeps_k_per_metric_and_deletes_the_rest(tmp_path):
    rules = (KeepRule("loss", "min", 2), KeepRule("accuracy", "max", 1))
    manifest = checkpoints.empty_manifest(rules)
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    scores = [(2.0, 0.1), (1.0, 0.3), (1.5, 0.9), (0.5, 0.2), (0.7, 0.2)]
    for epoch, (loss, accuracy) in enumerate(scores, start=1):
        manifest = checkpoints.update_manifest(
            manifest, epoch, {"loss": loss, "accuracy": accuracy, "num_examples": 9}
        )
        (folder / checkpoints.checkpoint_name(epoch)).write_bytes(b"weights")
        checkpoints.write_manifest(tmp_path, manifest)
        checkpoints.delete_unreferenced(tmp_path, manifest)
    assert manifest["ranked"] == {"loss": [4, 5], "accuracy": [3]}
    assert manifest["kept"] == {
        "3": "epoch_003.weights.h5",
        "4": "epoch_004.weights.h5",
        "5": "epoch_005.weights.h5",
    }
    assert sorted(p.name for p in folder.iterdir()) == [
        "epoch_003.weights.h5",
        "epoch_004.weights.h5",
        "epoch_005.weights.h5",
        "manifest.json",
    ]
    assert json.loads((folder / "manifest.json").read_text()) == manifest
    assert set(manifest["epochs"]["1"]) == {"loss", "accuracy"}


def test_schedule_warmup_then_sgdr_like_pytorch():
    peak, floor, period, warmup = 1e-3, 1e-5, 10, 4
    schedule = WarmupCosineRestarts(peak, period, warmup_steps=warmup, min_learning_rate=floor)
    steps = np.arange(0, 40)
    got = np.array([float(schedule(s)) for s in steps])
    after = np.maximum(steps - warmup, 0) % period
    # PyTorch CosineAnnealingWarmRestarts(T_0=period, T_mult=1, eta_min=floor), shifted by the warmup.
    expected = floor + (peak - floor) * 0.5 * (1 + np.cos(np.pi * after / period))
    expected[:warmup] = peak * steps[:warmup] / warmup
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-9)
    assert WarmupCosineRestarts(**schedule.get_config()).get_config() == schedule.get_config()


DATA_PARALLEL_SCRIPT = r"""
import json, sys
import numpy as np
import keras
from ich_keras.config import config_from_dict
from ich_keras.train import compile_model, global_settings, make_schedule
from ich_keras import models

assert len(keras.distribution.list_devices()) == 2, keras.distribution.list_devices()
rng = np.random.default_rng(0)
images = rng.normal(size=(4, 64, 64, 3)).astype("float32")
labels = np.eye(3, dtype="float32")[[0, 1, 2, 1]]
losses = {}
for distribution in ("none", "data_parallel"):
    cfg = config_from_dict({"train": {"batch_size": 4, "distribution": distribution}})
    with global_settings(cfg):
        keras.utils.set_random_seed(0)
        model = models.build("coatnet_tiny", 3, 64)
        if distribution == "none":
            weights = model.get_weights()
        else:
            model.set_weights(weights)  # the very same initial weights
        compile_model(model, cfg, make_schedule(cfg, 10))
        losses[distribution] = [float(model.train_on_batch(images, labels)[0]) for _ in range(2)]
print(json.dumps(losses))
"""


@pytest.mark.slow  # a fresh process compiling coatnet_tiny's train step twice: 149 s on the busy 2-core CPU
def test_data_parallel_step_matches_single_device():
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2",  # keeps -O0
        "CUDA_VISIBLE_DEVICES": "",
        "JAX_PLATFORMS": "cpu",
    }
    result = subprocess.run(
        [sys.executable, "-c", DATA_PARALLEL_SCRIPT],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    losses = json.loads(result.stdout.strip().splitlines()[-1])
    # Step 1: the loss of the same weights on the same batch; step 2: after one update, split over two devices.
    np.testing.assert_allclose(losses["data_parallel"], losses["none"], rtol=1e-5)
