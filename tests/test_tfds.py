"""data.source = "tfds:NAME" without a download: dataset builders defined here generate a few labelled images into
a temporary TFDS_DATA_DIR; fit trains on one end to end, a second run reuses the materialised tree."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from ich_keras import class_folders, data  # noqa: E402
from ich_keras.errors import UserError  # noqa: E402
from ich_keras.tfds_source import COMPLETE, materialize, write_image_folder  # noqa: E402
from ich_keras.train import run  # noqa: E402
from image_folder import make_image_folder  # noqa: E402
from logging_fixtures import tiny_config  # noqa: E402

pytestmark = pytest.mark.tfds
REPO = Path(__file__).parents[1]


def labelled_images_info(builder, class_names):
    """An (image, label) dataset's info, as tfds' image classification datasets describe theirs."""
    features = {"image": tfds.features.Image(shape=(None, None, 3)),
                "label": tfds.features.ClassLabel(names=class_names)}
    # DatasetInfo directly: dataset_info_from_configs looks for metadata files beside a dataset package.
    return tfds.core.DatasetInfo(builder=builder, features=tfds.features.FeaturesDict(features),
                                 supervised_keys=("image", "label"))


class IchTestShapes(tfds.core.GeneratorBasedBuilder):
    """Registered as "ich_test_shapes": dark and light noisy 40x48 images, 12 train and 4 test per class."""

    VERSION = tfds.core.Version("1.0.0")
    prepared = 0  # how many times tfds generated the splits

    def _info(self):
        return labelled_images_info(self, ["dark", "light"])

    def _split_generators(self, dl_manager):
        type(self).prepared += 1
        return {"train": self._generate_examples(24, seed=0), "test": self._generate_examples(8, seed=1)}

    def _generate_examples(self, count, seed):
        rng = np.random.default_rng(seed)
        for i in range(count):
            label = i % 2
            yield f"{seed}-{i}", {"image": rng.integers(0, 100, (40, 48, 3), dtype=np.uint8) + 120 * label,
                                  "label": label}


class IchTestNoImage(tfds.core.GeneratorBasedBuilder):
    """Registered as "ich_test_no_image": features without an image, never meant to be prepared."""

    VERSION = tfds.core.Version("1.0.0")
    prepared = 0

    def _info(self):
        features = {"pixels": tfds.features.Tensor(shape=(4,), dtype=np.float32),
                    "label": tfds.features.ClassLabel(names=["a", "b"])}
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        type(self).prepared += 1
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        yield "0", {"pixels": np.zeros(4, np.float32), "label": 0}


class IchTestPartlyLabelled(tfds.core.GeneratorBasedBuilder):
    """Registered as "ich_test_partly_labelled": 12 labelled and 2 unlabelled (-1) train images, a validation split
    of one class only and a test split without labels (as imagenet2012's)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return labelled_images_info(self, ["dark", "light"])

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples([0, 1] * 6 + [-1, -1]), "validation": self._generate_examples([0] * 4),
                "test": self._generate_examples([-1] * 6)}

    def _generate_examples(self, labels):
        for i, label in enumerate(labels):
            yield str(i), {"image": np.full((8, 8, 3), 60 + 120 * max(label, 0), np.uint8), "label": label}


@pytest.fixture
def tfds_dirs(tmp_path, monkeypatch):
    """tfds' data_dir and ich_keras' materialised trees in the test's folder."""
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tensorflow_datasets"))
    monkeypatch.setenv("ICH_KERAS_TFDS_DIR", str(tmp_path / "trees"))
    return tmp_path


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow  # two fits, the second in a fresh process
def test_fit_on_a_tfds_dataset_materialises_once(tfds_dirs):
    tree = tfds_dirs / "trees" / "ich_test_shapes"
    results = run(tiny_config(source="tfds:ich_test_shapes", data={"max_per_class": 0}), tfds_dirs / "run1")

    assert IchTestShapes.prepared == 1
    assert set(results["best"]) == {"loss", "f1"}
    record = json.loads((tree / COMPLETE).read_text())
    assert record["tfds"] == "ich_test_shapes/1.0.0"
    assert record["examples"] == {"train": 24, "test": 8}
    config = json.loads((tfds_dirs / "run1" / "config.json").read_text())
    assert config["data"]["source"] == str(tree.resolve())  # the run no longer needs tfds
    assert json.loads((tfds_dirs / "run1" / "classes.json").read_text()) == ["dark", "light"]
    test_keys = (tfds_dirs / "run1" / "splits" / "test.csv").read_text().splitlines()[1:]
    assert len(test_keys) == 8 and all(key.startswith("test/") for key in test_keys)  # tfds' own test split
    # Images are tfds' stored PNG bytes, label folder by label: the light class is light.
    from PIL import Image

    means = {c: np.mean([np.asarray(Image.open(p)).mean() for p in (tree / "train" / c).glob("*.png")])
             for c in ("dark", "light")}
    assert means["dark"] < 60 < 160 < means["light"]

    before = {**mtimes(tree), **mtimes(tfds_dirs / "tensorflow_datasets")}
    # A second run as a user types it, in a fresh process (where this module's builder is not even registered).
    second = subprocess.run(
        [sys.executable, "-m", "ich_keras.fit", "--config", str(REPO / "configs" / "demo.toml"), "--quiet",
         "--workdir", str(tfds_dirs / "run2"), "--set", "data.source=tfds:ich_test_shapes",
         "--set", "data.image_size=32", "--set", "train.epochs=1", "--set", "train.batch_size=4",
         "--set", "model.name=coatnet_tiny"],
        capture_output=True, text=True, timeout=900,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert {**mtimes(tree), **mtimes(tfds_dirs / "tensorflow_datasets")} == before  # nothing rebuilt or rewritten
    assert (tfds_dirs / "run2" / "splits" / "train.csv").read_text().count("\n") > 10
    assert data.resolve_source("tfds:ich_test_shapes") == str(tree.resolve())
    assert IchTestShapes.prepared == 1


def test_unlabelled_examples_and_splits_without_the_train_classes_are_left_out_and_said(tfds_dirs, capsys):
    # Label -1 (tfds' "no label") was written into the last class folder, and a validation split lacking a class
    # made the tree fail the class-folder check, which named a folder the user never made.
    tree = Path(materialize("ich_test_partly_labelled"))
    classes, found, _ = class_folders.scan_image_folder(tree)
    assert classes == ("dark", "light") and set(found) == {"train"} and len(found["train"]) == 12
    record = json.loads((tree / COMPLETE).read_text())
    assert record["examples"] == {"train": 12, "val": 0, "test": 0}
    assert record["unlabelled"] == {"train": 2, "val": 0, "test": 6}
    assert record["left_out"] == {"val": "it has no example of 1 of the train classes, e.g. 'light'",
                                  "test": "its 6 examples have no label"}
    said = capsys.readouterr().err
    assert "tfds:ich_test_partly_labelled: 2 examples of its train split have no label and are left out" in said
    assert "its test split is left out (its 6 examples have no label); test is carved from train" in said


def test_unknown_tfds_name_is_a_short_clear_error(tfds_dirs):
    expected = r"knows no dataset 'ich_no_such_dataset'.*data\.source='tfds:ich_no_such_dataset'"
    with pytest.raises(UserError, match=expected) as error:
        data.resolve_source("tfds:ich_no_such_dataset")
    assert len(str(error.value)) < 400  # not tfds' list of every dataset it knows
    assert not (tfds_dirs / "trees").exists()


def test_a_registered_dataset_finds_its_own_code(tfds_dirs):
    # Preparing a dataset tfds ships (the README's tfds:beans) starts from its builder's code path, which tfds 4.9
    # finds with importlib_resources but requires only below Python 3.9: without it, a ModuleNotFoundError there.
    code = tfds.builder("beans").code_path
    assert code.exists() and code.name == "beans_dataset_builder.py"


def test_tfds_dataset_without_an_image_fails_before_preparing(tfds_dirs):
    expected = r"needs an Image feature.*'pixels': 'Tensor'.*data\.source='tfds:ich_test_no_image'"
    with pytest.raises(UserError, match=expected):
        data.resolve_source("tfds:ich_test_no_image")
    assert IchTestNoImage.prepared == 0  # checked from the builder's info, before any download
    assert not (tfds_dirs / "trees").exists()


def test_tfds_image_folder_builder_writes_the_same_tree(tmp_path):
    """tfds' own ImageFolder builder over a local tree goes through the same writer, file bytes unchanged."""
    source = make_image_folder(tmp_path / "photos", classes=3, per_class=2, size=16)
    builder = tfds.folder_dataset.ImageFolder(str(source))
    tree = write_image_folder(builder, tmp_path / "tree", source="tfds.folder_dataset.ImageFolder")

    names, found, _ = class_folders.scan_image_folder(tree)
    original_names, original, _ = class_folders.scan_image_folder(source)
    assert names == original_names == ("class_0", "class_1", "class_2")
    for split in ("train", "test"):
        assert sorted(label for _, label in found[split]) == sorted(label for _, label in original[split])
        written = sorted((tree / key).read_bytes() for key, _ in found[split])
        assert written == sorted((source / key).read_bytes() for key, _ in original[split])
    assert {Path(key).suffix for key, _ in found["train"]} == {".png", ".jpg"}


class IchTestOffline(tfds.core.GeneratorBasedBuilder):
    """Registered as "ich_test_offline": its download fails as tfds' does without a network."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return labelled_images_info(self, ["a", "b"])

    def _split_generators(self, dl_manager):
        import requests

        raise requests.exceptions.ConnectionError(
            "HTTPSConnectionPool(host='storage.googleapis.com', port=443): Max retries exceeded")

    def _generate_examples(self):
        yield from ()


def test_tfds_download_without_network_is_a_clear_error(tfds_dirs):
    with pytest.raises(UserError) as info:
        materialize("ich_test_offline")
    message = str(info.value)
    assert "ich_test_offline" in message and "internet" in message and "TFDS_DATA_DIR" in message
    assert "ImageFolder" in message
    assert not (tfds_dirs / "trees" / "ich_test_offline").exists()
