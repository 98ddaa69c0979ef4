"""Copies of one picture in a dataset's splits (`ich_keras.copies` through `data.build_splits`): found across splits
and classes, never carved into val or test, named by the soups and the analysis, and compared by bytes alone where
different objects are photographed alike."""

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import sklearn
from image_folder import noise_folder
from PIL import Image, ImageOps

from ich_keras import data, split_lists
from ich_keras.config import DataConfig
from ich_keras.errors import UserError


def _folder_with_copies(tmp_path):
    """Two classes in train/, val/ and test/ (nothing carved), with copies of one picture across splits and
    classes."""
    root = noise_folder(tmp_path, per_class=4, splits=("train", "val", "test"))
    shutil.copyfile(root / "train/a/0.png", root / "test/a/copy.png")  # a test image also trained on
    shutil.copyfile(root / "train/a/1.png", root / "train/b/relabelled.png")  # one picture, two labels
    shutil.copyfile(root / "train/b/2.png", root / "train/b/again.png")  # a copy in its own class: left alone
    Image.open(root / "train/a/3.png").save(root / "test/b/3.bmp")  # the same pixels in another format: other bytes
    photo = Image.open(Path(sklearn.__file__).parent / "datasets/images/china.jpg")
    photo.save(root / "train/a/china.jpg")
    photo.resize((160, 107)).save(root / "test/a/china_small.jpg", quality=50)  # re-encoded smaller: other pixels
    ImageOps.mirror(photo).save(root / "val/a/china_mirrored.jpg")  # flipped in training, a train image is this too
    return root


def test_copies_of_one_picture_in_two_splits_or_two_classes_are_found_and_listed(tmp_path, capsys):
    from ich_keras import run_start
    from ich_keras.config import config_from_dict

    root = _folder_with_copies(tmp_path)
    splits = data.build_splits(DataConfig(source=str(root), val_fraction=0.25))
    assert set(splits.same_images) == {
        ("test/a/copy.png", "train/a/0.png"), ("train/a/1.png", "train/b/relabelled.png"),
        ("test/b/3.bmp", "train/a/3.png"),
        ("test/a/china_small.jpg", "train/a/china.jpg", "val/a/china_mirrored.jpg")}

    cfg = config_from_dict({"data": {"source": str(root), "val_fraction": 0.25}})
    run_start.write_start(run_start.prepare(cfg, tmp_path / "run"))
    assert ("copies of one picture (identical files, or re-encoded, resized, recoloured or mirrored ones) sit in two "
            "splits or under two classes (e.g. ") in capsys.readouterr().out
    listed = (tmp_path / "run" / split_lists.SAME_IMAGES).read_text().splitlines()
    assert "test/a/copy.png\ttrain/a/0.png" in listed
    assert "test/a/china_small.jpg\ttrain/a/china.jpg\tval/a/china_mirrored.jpg" in listed
    read = split_lists.read_splits(tmp_path / "run")  # what every later command reads
    assert set(read.same_images) == set(splits.same_images)
    kept = split_lists.read_train_fingerprints(tmp_path / "run")  # what predict compares its inputs with
    assert list(kept) == list(read.splits["train"].keys)
    for key, fingerprint in kept.items():
        assert fingerprint.digest == splits.train_fingerprints[key].digest
        np.testing.assert_allclose(fingerprint.thumbnail, splits.train_fingerprints[key].thumbnail, atol=2e-4)
    assert data.copies_of_train_in_test(read) == ("test/a/china_small.jpg", "test/a/copy.png", "test/b/3.bmp")


@pytest.mark.slow  # a fit, a soup and the analysis
def test_the_soups_and_the_analysis_say_which_test_images_have_a_copy_in_train(tmp_path):
    import json

    from ich_keras import analyze, soup
    from ich_keras.config import config_from_dict
    from ich_keras.train import run

    root = _folder_with_copies(tmp_path)
    run(config_from_dict({"data": {"source": str(root), "image_size": 32, "val_fraction": 0.25},
                          "model": {"name": "coatnet_tiny"}, "train": {"epochs": 2, "batch_size": 4},
                          "checkpoint": {"keep": [{"metric": "loss", "mode": "min", "k": 2}]},
                          "log": {"verbose": 0}}), tmp_path / "run")
    soup.main([str(tmp_path / "run"), "--uniform", "--quiet"])
    results = json.loads((tmp_path / "run/soups/uniform/results.json").read_text())
    assert results["test_copies_of_train"] == ["test/a/china_small.jpg", "test/a/copy.png", "test/b/3.bmp"]
    note = "**3 test image(s) have a copy in train** (`same_images.txt`, e.g. `test/a/china_small.jpg`)"
    assert note in (tmp_path / "run/soups/uniform/results.md").read_text()
    assert note in (tmp_path / "run/soups/results.md").read_text()
    analyze.main([str(tmp_path / "run"), "--quiet", "--cka-examples", "0"])
    assert note in (tmp_path / "run/analysis/report.md").read_text()


def test_a_carved_split_never_holds_a_copy_of_a_train_image(tmp_path):
    root = noise_folder(tmp_path, per_class=6)
    photo = Image.open(Path(sklearn.__file__).parent / "datasets/images/flower.jpg")
    flowers = {"flower": photo, "flower_small": photo.resize((160, 107)), "flower_gray": photo.convert("L")}
    for name, copy in flowers.items():
        copy.save(root / f"train/a/{name}.jpg", quality=60)
    shutil.copyfile(root / "train/b/0.png", root / "train/b/0_again.png")
    copies_carved_apart = 0
    for seed in range(12):
        cfg = DataConfig(source=str(root), val_fraction=0.3, test_fraction=0.3, split_seed=seed)
        splits = data.build_splits(cfg)
        split_of = {key: split for split, examples in splits.splits.items() for key in examples.keys}
        assert len({split_of[f"train/a/{name}.jpg"] for name in flowers}) == 1
        assert split_of["train/b/0.png"] == split_of["train/b/0_again.png"]
        assert not splits.same_images
        # The carve without the move: what the seed alone would have done (the test fails here if the copies never
        # met the carve).
        labels = np.array([0] * 9 + [1] * 7)  # a: 6 noise images and the 3 flowers; b: 7 images, sorted by key
        _, carved = data.stratified_split(labels, 0.3, 0, seed)
        groups = {6, 7, 8}, {9, 10}  # train/a/flower*.jpg sort after train/a/5.png; train/b/0*.png come first
        apart = any(0 < len(set(carved) & group) < len(group) for group in groups)
        assert (splits.kept_with_copies["test"] > 0) == apart
        copies_carved_apart += apart
    assert copies_carved_apart > 0


def test_a_split_left_empty_by_copies_says_so_and_a_run_says_what_it_kept(tmp_path, capsys):
    from ich_keras import run_start
    from ich_keras.config import config_from_dict

    root = noise_folder(tmp_path, per_class=4)
    shutil.rmtree(root / "train/b")
    shutil.copytree(root / "train/a", root / "train/b")  # every picture under both classes
    with pytest.raises(UserError, match="split is empty: every image carved for it has a copy in train"):
        data.build_splits(DataConfig(source=str(root)))

    root = noise_folder(tmp_path / "other", per_class=6)
    for i in range(6):
        shutil.copyfile(root / f"train/a/{i}.png", root / f"train/a/{i}_again.png")
    cfg = config_from_dict({"data": {"source": str(root), "val_fraction": 0.5, "test_fraction": 0.5}})
    run = run_start.prepare(cfg, tmp_path / "run")
    kept = run.splits.kept_with_copies
    assert kept["test"] + kept["val"] > 0 and not run.splits.same_images
    run_start.write_start(run)
    assert "stayed in train with their copies: a carved split takes no copy of a train" in capsys.readouterr().out


def test_a_folder_without_copies_is_carved_as_before(tmp_path):
    root = noise_folder(tmp_path, per_class=9)
    splits = data.build_splits(DataConfig(source=str(root), val_fraction=0.2, test_fraction=0.3, split_seed=4))
    keys = tuple(f"train/{c}/{i}.png" for c in "ab" for i in range(9))
    kept, test = data.stratified_split(np.repeat([0, 1], 9), 0.3, 0, 4)
    assert splits.splits["test"].keys == tuple(keys[i] for i in test)
    rest = [keys[i] for i in kept]
    kept, val = data.stratified_split(np.array([int(key[6] == "b") for key in rest]), 0.2, 0, 5)
    assert splits.splits["val"].keys == tuple(rest[i] for i in val)
    assert splits.splits["train"].keys == tuple(rest[i] for i in kept)


def test_different_objects_photographed_alike_can_be_compared_by_their_bytes_alone(tmp_path):
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:64, :64]
    disc = (x - 32) ** 2 + (y - 32) ** 2 < 26 ** 2
    for name in ("a", "b"):  # a coin collection: one disc on black each, its own relief inside
        (tmp_path / "ds/train" / name).mkdir(parents=True)
        for i in range(6):
            relief = 150 + rng.normal(0, 12, (64, 64, 3))
            coin = np.where(disc[..., None], relief, 0).astype(np.uint8)
            Image.fromarray(coin).save(tmp_path / f"ds/train/{name}/{i}.png")
    shutil.copyfile(tmp_path / "ds/train/a/0.png", tmp_path / "ds/train/b/same_file.png")
    cfg = DataConfig(source=str(tmp_path / "ds"), image_size=64, val_fraction=0.2, test_fraction=0.2)
    with pytest.raises(UserError, match="objects photographed alike are no copies: data.near_copies = false"):
        data.build_splits(cfg)  # to the thumbnails every coin is a copy of every other: nothing can be carved
    splits = data.build_splits(dataclasses.replace(cfg, near_copies=False))
    assert sum(splits.kept_with_copies.values()) <= 1  # at most the one file saved twice
    assert splits.same_images == (("train/a/0.png", "train/b/same_file.png"),)  # the same bytes: still found


def test_with_near_copies_off_the_messages_speak_of_identical_files_alone(tmp_path, capsys):
    from ich_keras import run_start
    from ich_keras.config import config_from_dict

    root = noise_folder(tmp_path, per_class=6)
    for i in range(6):
        shutil.copyfile(root / f"train/a/{i}.png", root / f"train/a/{i}_again.png")
    shutil.copyfile(root / "train/a/0.png", root / "train/b/relabelled.png")
    cfg = config_from_dict({"data": {"source": str(root), "val_fraction": 0.5, "test_fraction": 0.5,
                                     "near_copies": False}})
    run_start.write_start(run_start.prepare(cfg, tmp_path / "run"))
    out = capsys.readouterr().out
    assert "copies of one picture (identical files; data.near_copies = false compares bytes alone) sit in" in out
    assert "stayed in train with their copies: a carved split takes no copy of a train image\n" in out
    assert "photographed alike" not in out  # the advice to set what is set


def test_with_near_copies_off_an_empty_carved_split_names_no_setting_to_make(tmp_path):
    root = noise_folder(tmp_path, per_class=4)
    for name in ("a", "b"):
        for i in range(4):
            shutil.copyfile(root / f"train/{name}/{i}.png", root / f"train/{name}/{i}_again.png")
    cfg = DataConfig(source=str(root), val_fraction=0.25, test_fraction=0.25, near_copies=False)
    expected = r"has a copy in train, which keeps it there \(\d+ images\)\. Add images"
    with pytest.raises(UserError, match=expected) as error:
        data.build_splits(cfg)
    assert "photographed alike" not in str(error.value)
