"""Data: ImageFolder scanning on real AHE64 files, seeded stratified splits, decoding odd images, the run's lists."""

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from image_folder import AHE64, noise_folder
from PIL import Image

from ich_keras import data, pipeline, split_lists
from ich_keras.config import AugmentConfig, DataConfig
from ich_keras.errors import UserError


@pytest.mark.data  # real AHE64 files are the point
def test_scan_real_ahe64():
    class_names, found, _ = data.scan_image_folder(AHE64)
    assert class_names[:3] == ("altar", "apse", "bell_tower") and len(class_names) == 10
    assert set(found) == {"train", "test"}
    assert len(found["train"]) == 10_123 and len(found["test"]) == 1_335
    assert found["train"][0][0].startswith("train/altar/") and found["train"][0][1] == 0


@pytest.mark.data  # real AHE64 files are the point
def test_splits_are_stratified_seeded_and_saved(tmp_path):
    cfg = DataConfig(source=str(AHE64), image_size=64, max_per_class=30, val_fraction=0.2, split_seed=3)
    splits = data.build_splits(cfg)
    train, val, test = (splits.splits[s] for s in data.SPLITS)
    # 30 per class capped, 6 (20 %) of each class carved into val; the official test split is kept.
    assert np.bincount(val.labels).tolist() == [6] * 10
    assert np.bincount(train.labels).tolist() == [24] * 10
    assert len(test) == 300 and all(k.startswith("test/") for k in test.keys)
    assert not set(train.keys) & set(val.keys)
    assert data.build_splits(cfg).splits["val"].keys == val.keys  # same seed, same split
    other = data.build_splits(DataConfig(**{**cfg.__dict__, "split_seed": 4}))
    assert other.splits["val"].keys != val.keys

    split_lists.write_splits(tmp_path, splits)
    back = split_lists.read_splits(tmp_path)
    assert back.class_names == splits.class_names
    for split in data.SPLITS:
        assert back.splits[split].keys == splits.splits[split].keys
        np.testing.assert_array_equal(back.splits[split].labels, splits.splits[split].labels)


def test_val_count_and_digits_carving():
    cfg = DataConfig(source="digits", image_size=32, val_count=100, test_fraction=0.2)
    splits = data.build_splits(cfg)
    sizes = {s: len(e) for s, e in splits.splits.items()}
    assert sum(sizes.values()) == 1797
    assert abs(sizes["val"] - 100) <= 5 and abs(sizes["test"] - 359) <= 5
    assert splits.class_names == tuple(str(i) for i in range(10))
    # More than train holds was carved as less, unsaid (each class keeps a train image).
    with pytest.raises(UserError, match=r"data.val_count asks for more val images than train can give \(1428: "):
        data.build_splits(DataConfig(source="digits", image_size=32, val_count=1429, test_fraction=0.2))
    most = data.build_splits(DataConfig(source="digits", image_size=32, val_count=1428, test_fraction=0.2))
    assert len(most.splits["val"]) == 1428 and len(most.splits["train"]) == 10


@pytest.mark.data  # real AHE64 files are the point
def test_eval_dataset_decodes_real_jpegs():
    cfg = DataConfig(source=str(AHE64), image_size=64, max_per_class=2)
    examples = data.build_splits(cfg).splits["test"]
    batches = list(pipeline.eval_dataset(cfg.source, examples, 64, (0.5,) * 3, (0.5,) * 3, batch_size=8))
    images = np.concatenate([b[0] for b in batches])
    assert images.shape == (len(examples), 64, 64, 3)
    # 64x64 JPEGs resized to 64: equal to PIL's decode up to IDCT rounding, normalised with mean = std = 0.5.
    reference = np.asarray(Image.open(AHE64 / examples.keys[0]).convert("RGB"), np.float32) / 127.5 - 1
    assert np.abs(images[0] - reference).mean() < 0.02


@pytest.mark.data
@pytest.mark.parametrize("source", [str(AHE64), data.DIGITS])
def test_a_split_held_in_memory_is_uint8_and_yields_the_eval_datasets_batches_bit_for_bit(source):
    # Soups and the analysis hold val and test decoded: as uint8, then normalised batch by batch, they must score
    # the very numbers fit's callback scored on the tf.data pipeline.
    cfg = DataConfig(source=source, image_size=48, max_per_class=3)  # AHE64's 64 px photos resized, digits' 8 px
    examples = data.build_splits(cfg).splits["test"]
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    held = pipeline.decoded_split(source, examples, 48, mean, std, 7)
    assert all(images.dtype == np.uint8 for images, _ in held.batches)
    expected = list(pipeline.eval_dataset(source, examples, 48, mean, std, batch_size=7))
    for _ in range(2):  # re-iterable
        got = list(held)
        assert len(got) == len(expected) == -(-len(examples) // 7)
        for (images, labels), (want_images, want_labels) in zip(got, expected):
            assert images.dtype == np.float32
            np.testing.assert_array_equal(images, want_images.numpy())
            np.testing.assert_array_equal(labels, want_labels.numpy())


def test_deep_gray_levels_are_scaled_to_eight_bits_rounded(tmp_path):
    """16-bit levels x map to round(x / 257): 0..65535 onto 0..255; a 32-bit image's levels outside 16 bits to black or
    white."""
    from ich_keras.image_files import decode_image_file

    sixteen = np.array([[0, 128, 129, 25700, 25829, 65535]], np.uint16)  # 25829 / 257 = 100.502
    Image.fromarray(sixteen).save(tmp_path / "scan16.tif")
    assert Image.open(tmp_path / "scan16.tif").mode == "I;16"
    np.testing.assert_array_equal(decode_image_file(tmp_path / "scan16.tif")[0, :, 0], [0, 0, 1, 100, 101, 255])
    wide = np.array([[-300, 0, 257, 65535, 70000]], np.int32)
    Image.fromarray(wide, mode="I").save(tmp_path / "scan32.tif")
    np.testing.assert_array_equal(decode_image_file(tmp_path / "scan32.tif")[0], [[0] * 3, [0] * 3, [1] * 3,
                                                                                  [255] * 3, [255] * 3])


def test_odd_formats_decode_to_rgb(tmp_path):
    """Grayscale, RGBA, palette, CMYK JPEG, 16-bit PNG, WebP and TIFF (8-bit, and float in 0..1 or 0..255) all arrive
    as the same RGB picture."""
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    root = tmp_path / "ds" / "train" / "x"
    root.mkdir(parents=True)
    Image.fromarray(gray).save(root / "gray.png")
    Image.fromarray(np.dstack([rgb, np.full((16, 16), 7, np.uint8)])).save(root / "rgba.png")
    Image.fromarray(rgb).convert("P").save(root / "palette.gif")
    Image.fromarray(gray.astype(np.uint16) * 257).save(root / "gray16.png")
    Image.fromarray(rgb).save(root / "lossless.webp", lossless=True)
    Image.fromarray(rgb).save(root / "plain.tiff")
    Image.fromarray(gray.astype(np.float32) / 255).save(root / "float_0_to_1.tiff")  # mode F, as most tools write
    Image.fromarray(gray.astype(np.float32)).save(root / "float_0_to_255.tiff")
    Image.fromarray(rgb).convert("CMYK").save(root / "cmyk.jpg", quality=100)
    shutil.copytree(root, root.parent / "y")  # a second class: a classifier needs two
    _, found, _ = data.scan_image_folder(tmp_path / "ds")
    fingerprints = {}
    good, bad = data._check_images(tmp_path / "ds", found["train"], 16, fingerprints=fingerprints)
    assert not bad
    assert {decoder for _, _, decoder in good} == {"pil"}  # one decoder for every format
    assert len({f.digest for f in fingerprints.values()}) == len(good) // 2  # class y copies class x byte for byte
    keys, labels, decs = zip(*good)
    examples = data.Examples(keys, np.asarray(labels), decs)
    images = list(pipeline.decoded_dataset(str(tmp_path / "ds"), examples, image_size=16))
    for key, (image, _) in zip(keys, images):
        image = image.numpy()
        assert image.shape == (16, 16, 3) and image.dtype == np.uint8, key
        # JPEG is lossy and the GIF palette quantised: compare those with PIL's decode of the same file.
        lossy = key.endswith((".jpg", ".gif"))
        expected = np.asarray(Image.open(tmp_path / "ds" / key).convert("RGB")) if lossy else rgb
        assert np.abs(image.astype(int) - expected).max() <= (2 if lossy else 0), key


def test_skip_bad_images_counts_and_lists(tmp_path):
    root = noise_folder(tmp_path, per_class=3, splits=("train", "test"))
    (root / "train/a/notes.jpg").write_text("not an image")  # named like one
    good_bytes = (root / "train/b/0.png").read_bytes()
    (root / "train/b/truncated.png").write_bytes(good_bytes[: len(good_bytes) // 2])
    (root / "train/b/moved.png").symlink_to(tmp_path / "elsewhere.png")  # a link whose image was moved away
    # Neither opened (a FIFO waits for a writer, a device never ends) nor left out unnoticed, as they were.
    os.mkfifo(root / "train/a/pipe.jpg")
    (root / "train/b/zero.png").symlink_to("/dev/zero")
    bad = ["train/a/notes.jpg", "train/a/pipe.jpg", "train/b/moved.png", "train/b/truncated.png", "train/b/zero.png"]
    with pytest.raises(UserError, match=r"5 file\(s\) are not readable.*train/b/moved\.png: broken symbolic link to "):
        data.build_splits(DataConfig(source=str(root), val_fraction=0.34))
    cfg = DataConfig(source=str(root), val_fraction=0.34, skip_bad_images=True)
    splits = data.build_splits(cfg)
    split_lists.write_splits(tmp_path / "run", splits)
    reasons = dict(splits.bad_images)
    assert sorted(reasons) == bad
    assert reasons["train/a/pipe.jpg"] == "OSError: not a regular file but a FIFO, so it is not read"
    assert reasons["train/b/zero.png"] == "OSError: not a regular file but a character device, so it is not read"
    assert len(splits.splits["train"]) + len(splits.splits["val"]) == 6
    listed = (tmp_path / "run/bad_images.txt").read_text()
    assert all(name in listed for name in bad)
    for good in (root / "train/a").glob("*.png"):  # class a left with unreadable train images only
        good.write_text("no longer an image")
    with pytest.raises(UserError, match=r"Every class needs train examples; data.skip_bad_images skipped every "
                                        r"train image of a \(5\) as unreadable .*classes without any=\['a'\]"):
        data.build_splits(cfg)


def test_mixup_cutmix_labels_match_pixels():
    """Mixed labels sum to 1 and carry the same weight as the pixels (checked with constant-colour images)."""
    import tensorflow as tf

    images = tf.constant(np.stack([np.full((8, 8, 3), 200.0), np.zeros((8, 8, 3))]), tf.float32)
    labels = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    for kind in ("mixup", "cutmix"):
        cfg = AugmentConfig(
            mixup_alpha=0.2 if kind == "mixup" else 0, cutmix_alpha=1.0 if kind == "cutmix" else 0
        )
        for seed in range(5):
            mixed, soft = augment_batch(images, labels, seed, cfg)
            np.testing.assert_allclose(soft.sum(axis=1), 1.0, rtol=1e-6)
            # Share of image 0's content in mixed image 0 equals its label weight.
            np.testing.assert_allclose(mixed[0].mean() / 200.0, soft[0, 0], atol=1e-5)


@pytest.mark.slow  # 22 s: traces RandAugment's layers into tf.data
def test_rand_augment_batches_stay_float32_under_a_mixed_policy_from_the_largest_seed():
    """fit builds the train dataset under train.precision's policy: RandAugment must not turn batches bfloat16 (MixUp
    and CutMix compute in float32). Its seed generator takes uint32 seeds, and it is seeded with train.seed + epoch."""
    import keras

    _, labels, _ = data.load_digits_images()
    examples = data.Examples(tuple(f"digits/{i}" for i in range(8)), labels[:8], ("array",) * 8)
    aug = AugmentConfig(rand_augment=True)  # with the default MixUp and CutMix
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        ds = pipeline.train_dataset("digits", examples, 10, 16, (0.5,) * 3, (0.5,) * 3, aug, batch_size=4,
                                    steps_per_epoch=2, seed=2**32 - 1, initial_epoch=1, epochs=2)
    finally:
        keras.config.set_dtype_policy(previous)
    batches = list(ds.as_numpy_iterator())
    assert len(batches) == 2
    assert all(images.dtype == np.float32 and images.shape == (4, 16, 16, 3) for images, _ in batches)


def test_the_largest_split_seed_seeds_the_caps_too():
    """data.split_seed + 2 .. + 4 seed the per-class caps: still valid seeds at the top of the config's range."""
    splits = data.build_splits(DataConfig(source="digits", image_size=16, max_per_class=6, split_seed=2**32 - 1))
    per_class = sum(np.bincount(examples.labels, minlength=10) for examples in splits.splits.values())
    assert per_class.tolist() == [6] * 10


def augment_batch(images, labels, seed, cfg):
    from ich_keras.augment import mix_batch

    mixed, soft = mix_batch(images, labels, np.array([seed, 0], np.int64), cfg)
    return mixed.numpy(), soft.numpy()


# The run directory's lists.


def _listed(train_keys, class_names=("a", "b")) -> data.Splits:
    """Splits of the given train keys (labelled by their class folder) with one val and one test image."""
    def examples(keys):
        labels = [class_names.index(key.split("/")[1]) for key in keys]
        return data.Examples(tuple(keys), np.asarray(labels, np.int64), ("pil",) * len(keys))

    first = class_names[0]
    return data.Splits(class_names, {"train": examples(train_keys), "val": examples([f"train/{first}/3.jpg"]),
                                     "test": examples([f"test/{first}/4.jpg"])})


def test_a_start_again_with_nothing_to_list_removes_the_lists_of_the_first_start(tmp_path):
    from ich_keras.copies import Fingerprint

    listed = _listed(["train/a/1.jpg", "train/b/2.jpg"])
    first = dataclasses.replace(listed, bad_images=(("train/a/x.jpg", "OSError"),),
                                same_images=(("test/a/4.jpg", "train/a/1.jpg"),),
                                train_fingerprints={"train/a/1.jpg": Fingerprint("00" * 32, np.zeros(256, np.float32))})
    split_lists.write_splits(tmp_path, first)
    names = ("bad_images.txt", split_lists.SAME_IMAGES, split_lists.TRAIN_FINGERPRINTS)
    assert all((tmp_path / name).is_file() for name in names)

    split_lists.write_splits(tmp_path, listed)  # the start that finds no bad images and no copies
    assert not any((tmp_path / name).exists() for name in names)
    back = split_lists.read_splits(tmp_path)
    assert back.bad_images == () and back.same_images == () and split_lists.read_train_fingerprints(tmp_path) == {}
    assert data.copies_of_train_in_test(back) == ()


def test_the_lists_are_utf8_whatever_the_locale(tmp_path):
    """A class and file name outside ASCII is written and read back in the C locale (ASCII, no UTF-8 mode)."""
    code = (  # ASCII source: a C-locale command line takes nothing else
        "import sys, test_data\n"
        "from ich_keras import split_lists\n"
        "name = '\\u00e9glise'\n"
        "splits = test_data._listed([f'train/{name}/1.jpg', 'train/b/2.jpg'], (name, 'b'))\n"
        "split_lists.write_splits(sys.argv[1], splits)\n"
        "back = split_lists.read_splits(sys.argv[1])\n"
        "print(ascii([back.class_names, back.splits['train'].keys, back.splits['test'].keys]))\n"
    )
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(Path(__file__).parents[1])])}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = [("église", "b"), ("train/église/1.jpg", "train/b/2.jpg"), ("test/église/4.jpg",)]
    assert done.stdout.strip() == ascii(expected)
    assert "train/église/1.jpg" in (tmp_path / "splits/train.csv").read_bytes().decode("utf-8")
