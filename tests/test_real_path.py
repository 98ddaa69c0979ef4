"""The paper's path end to end, as a user runs it: a 1000-class timm CoAtNet, converted, fine-tuned with a new head
on a dataset of another class count, souped (uniform, greedy, WiSE-FT, MonoSoup against the 1000-class W0),
analysed with CKA, used to predict and exported; then a fit checkpoint as the init of a fine-tune with yet another
class count. Each command goes through its `main` (argument parsing included), from working directories other than
the one the run was made in.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("timm")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from image_folder import make_image_folder  # noqa: E402

pytestmark = pytest.mark.timm
ROOT = Path(__file__).resolve().parents[1]
MODEL, SIZE = "test_coatnet", 32

CONFIG = """
[data]
source = "{source}"
image_size = 32
val_fraction = 0.25

[augment]
mixup_alpha = 0.0
cutmix_alpha = 0.0

[model]
name = "test_coatnet"
init = "{init}"

[train]
epochs = {epochs}
batch_size = 6
learning_rate = 1e-3
warmup_epochs = 0

[checkpoint]
keep = [{{ metric = "loss", mode = "min", k = 2 }}, {{ metric = "accuracy", mode = "max", k = 2 }}]

[log]
verbose = 0
"""


@pytest.fixture(scope="module")
def imagenet_w0(tmp_path_factory) -> Path:
    """timm's test_coatnet with random weights (BN statistics too) and 1000 classes, through the converter."""
    from ich_keras import parity

    folder = tmp_path_factory.mktemp("timm")
    state_dict = parity.random_state_dict(parity.timm_model(MODEL, 1000, SIZE))
    safetensors_numpy.save_file(state_dict, folder / "model.safetensors")
    out = folder / "imagenet.weights.h5"
    subprocess.run([sys.executable, str(ROOT / "tools/convert_timm.py"), "--model", MODEL, "--checkpoint",
                    str(folder / "model.safetensors"), "--output", str(out), "--image-size", str(SIZE)],
                   check=True, cwd=folder)
    return out


def _write_config(folder: Path, source: Path, init: str, epochs: int) -> Path:
    path = folder / "finetune.toml"
    path.write_text(CONFIG.format(source=source, init=init, epochs=epochs))
    return path


@pytest.mark.slow  # eight commands, each compiling its own shapes
@pytest.mark.timm
def test_pretrained_1000_classes_to_a_new_head_through_every_command(imagenet_w0, tmp_path, monkeypatch, capsys):
    from ich_keras import analyze, export, fit, predict, soup

    photos = make_image_folder(tmp_path / "photos", classes=3, per_class=8, size=SIZE)
    home = tmp_path / "home"
    home.mkdir()
    (home / "w0.weights.h5").write_bytes(imagenet_w0.read_bytes())
    config = _write_config(home, photos, "w0.weights.h5", epochs=2)  # a relative init, as users write it
    monkeypatch.chdir(home)
    fit.main(["--config", str(config), "--workdir", "run"])
    assert "head (1000 classes) was re-initialised for 3 classes" in capsys.readouterr().out
    run = home / "run"

    # Every kept checkpoint holds the model's weights only: the size of a soup of the same model.
    manifest = json.loads((run / "checkpoints/manifest.json").read_text())
    kept = [run / "checkpoints" / name for name in manifest["kept"].values()]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the other commands run from another working directory
    soup.main([str(run), "--uniform", "--greedy", "--interpolate", "--quiet"])
    uniform = run / "soups/uniform/soup.weights.h5"
    for checkpoint in kept:
        assert abs(checkpoint.stat().st_size / uniform.stat().st_size - 1) < 0.02
    interpolation = json.loads((run / "soups/uniform/results.json").read_text())
    assert "interpolation" in json.dumps(interpolation)
    soup.main(["monosoup", str(run), "--pretrained", str(imagenet_w0), "--finetuned", str(kept[0]), "--quiet"])
    monosoup = next((run / "soups").glob("monosoup_*/soup.weights.h5"))

    analyze.main([str(run), "--cka-examples", "0", "--quiet"])
    assert not (run / "analysis/cka.json").exists()
    assert "--cka-examples 0" in (run / "analysis/report.md").read_text()
    capsys.readouterr()
    analyze.main([str(run), "--quiet"])
    assert "re-initialised" not in capsys.readouterr().out  # CKA's W0 of 1000 classes: its head is never compared
    cka = json.loads((run / "analysis/cka.json").read_text())
    assert np.isfinite(np.array(cka["cka"])).all() and len(cka["blocks"]) > 1
    assert (run / "analysis/report.md").is_file()

    capsys.readouterr()
    predict.main([str(run), "--weights", str(monosoup), str(photos / "test"), "--output", "p.csv"])
    rows = (elsewhere / "p.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 * 8

    pytest.importorskip("onnxruntime")
    export.main([str(run), "--weights", str(uniform), "--format", "onnx", "--output", "soup.onnx"])
    assert export.load_exported(elsewhere / "soup.onnx", "onnx")(np.zeros((1, SIZE, SIZE, 3), np.uint8)).shape == (1, 3)

    # A fit checkpoint (3 classes) as the init of a fine-tune on 2 classes.
    two = make_image_folder(tmp_path / "two", classes=2, per_class=8, size=SIZE, seed=1)
    config = _write_config(elsewhere, two, str(kept[0]), epochs=1)
    fit.main(["--config", str(config), "--workdir", "second", "--set", "log.verbose=2"])
    printed = capsys.readouterr()
    assert "head (3 classes) was re-initialised for 2 classes" in printed.out
    assert "/step - " in printed.err and "/step - " not in printed.out  # Keras' progress on stderr, like ours
    assert json.loads((elsewhere / "second/results.json").read_text())["best"]
