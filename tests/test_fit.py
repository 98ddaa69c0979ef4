"""End-to-end training on generated image files (conftest's `image_folder`) with the tiny CoAtNet: top-k files,
manifest, metrics."""

import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, log_loss, precision_recall_fscore_support

from ich_keras.config import config_from_dict
from ich_keras.train import run
from ich_keras.evaluation import forward
from ich_keras.rundir import load_run

def tiny_config(source, epochs=4, **sections):
    """coatnet_tiny on the 3-class folder `source` (8 images per class and split) at 32 px, batch 8, k = 2 for
    each metric."""
    cfg = {
        "data": {"source": str(source), "image_size": 32, "val_fraction": 0.25},
        "augment": {"mixup_alpha": 0.2, "cutmix_alpha": 1.0, "mix_prob": 0.5},
        "model": {"name": "coatnet_tiny"},
        "train": {"epochs": epochs, "batch_size": 8, "learning_rate": 3e-3, "restart_epochs": 2.0},
        "checkpoint": {
            "keep": [
                {"metric": "loss", "mode": "min", "k": 2},
                {"metric": "accuracy", "mode": "max", "k": 2},
                {"metric": "f1", "mode": "max", "k": 2},
            ]
        },
        "log": {"verbose": 0},
    }
    for section, values in sections.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    return config_from_dict(cfg)


def test_fit_end_to_end_top_k(tmp_path, image_folder):
    workdir = tmp_path / "run"
    results = run(tiny_config(image_folder, epochs=4), workdir)
    manifest = json.loads((workdir / "checkpoints/manifest.json").read_text())

    assert sorted(map(int, manifest["epochs"])) == [1, 2, 3, 4]
    for metric, mode in (("loss", "min"), ("accuracy", "max"), ("f1", "max")):
        ranked = manifest["ranked"][metric]
        assert 1 <= len(ranked) <= 2
        values = [manifest["epochs"][str(e)][metric] for e in manifest["epochs"]]
        best = min(values) if mode == "min" else max(values)
        assert manifest["epochs"][str(ranked[0])][metric] == best
    referenced = {e for lst in manifest["ranked"].values() for e in lst}
    files = sorted(p.name for p in (workdir / "checkpoints").glob("*.weights.h5"))
    assert files == sorted(f"epoch_{e:03d}.weights.h5" for e in referenced)
    assert set(manifest["kept"].values()) == set(files)

    history = (workdir / "history.csv").read_text().splitlines()
    assert len(history) == 5 and "val_f1" in history[0] and "lr" in history[0]
    assert set(results["best"]) == {"loss", "accuracy", "f1"}
    assert results["best"]["f1"]["test"]["num_examples"] == 24  # 8 per class of the official test split

    # Every kept file loads back; its val metrics, recomputed from scratch, agree with the manifest and sklearn.
    loaded = load_run(workdir)
    assert [c.epoch for c in loaded.checkpoints] == sorted(referenced)
    model = loaded.build_model()
    val = loaded.dataset("val", batch_size=8)
    for checkpoint in loaded.checkpoints:
        model.load_weights(checkpoint.path)
        labels, logits = forward(model, val)
        np.testing.assert_array_equal(labels, loaded.labels("val"))
        probabilities = np.exp(logits - logits.max(1, keepdims=True))
        probabilities /= probabilities.sum(1, keepdims=True)
        predictions = logits.argmax(1)
        precision, recall, f1, _ = precision_recall_fscore_support(
            labels, predictions, average="macro", labels=range(3), zero_division=0
        )
        expected = {
            "loss": log_loss(labels, probabilities, labels=range(3)),
            "accuracy": accuracy_score(labels, predictions),
            "precision": precision,
            "recall": recall,
            "f1": f1,
        }
        for name, value in expected.items():
            assert checkpoint.val[name] == pytest.approx(value, abs=1e-5), (checkpoint.epoch, name)


def test_existing_run_is_not_overwritten(tmp_path, image_folder):
    from ich_keras import resume

    workdir = tmp_path / "run"
    (workdir / resume.STATE_FILE).parent.mkdir(parents=True)
    (workdir / "config.json").write_text("{}")
    (workdir / resume.STATE_FILE).write_bytes(b"")  # a finished epoch: only a run that never had one may restart
    with pytest.raises(ValueError, match=r"--resume.*Received: workdir='.*run'"):
        run(tiny_config(image_folder), workdir)


def test_unknown_model_fails_before_scanning(tmp_path):
    with pytest.raises(ValueError, match="Unknown model 'coatnet_huge'"):
        run(
            tiny_config(tmp_path / "missing", model={"name": "coatnet_huge"}),
            tmp_path / "r",
        )


@pytest.mark.slow  # a second full compile (bfloat16, EMA, accumulation): about 1 min on a busy 2-core CPU
def test_fit_with_ema_accumulation_bfloat16_and_smoothing(tmp_path, image_folder):
    cfg = tiny_config(
        image_folder,
        epochs=2,
        train={
            "ema": True,
            "ema_momentum": 0.5,
            "grad_accum_steps": 2,
            "precision": "bfloat16",
            "label_smoothing": 0.1,
            "steps_per_epoch": 4,
        },
        # RandAugment under the bfloat16 policy: its batches must still mix (MixUp, CutMix) in float32.
        augment={"random_resized_crop": True, "rand_augment": True},
        checkpoint={"keep": [{"metric": "loss", "mode": "min", "k": 2}]},
    )
    run(cfg, tmp_path / "run")
    with open(tmp_path / "run/history.csv") as f:
        header, *rows = [line.split(",") for line in f.read().splitlines()]
    updates = [int(float(dict(zip(header, row))["updates"])) for row in rows]
    assert updates == [2, 4]  # 4 batches per epoch, one update per 2 batches
    loaded = load_run(tmp_path / "run")
    assert loaded.config.train.precision == "bfloat16"
    assert [c.epoch for c in loaded.checkpoints] == [1, 2]  # k = 2 over 2 epochs keeps both
    # Checkpoints hold the EMA weights, the resume state the raw ones: after training they differ.
    from ich_keras import resume

    state = resume.load_state(tmp_path / "run")
    model = loaded.build_model()
    model.load_weights(loaded.checkpoint_path(2))
    ema_kernel = model.get_layer("head.fc").get_weights()[0]
    raw_kernel = state.model_values[state.record["model_paths"].index("head.fc/kernel")]
    assert ema_kernel.shape == raw_kernel.shape and np.abs(ema_kernel - raw_kernel).max() > 1e-6
