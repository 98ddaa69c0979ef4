"""A data folder's mistakes: each is an error naming the culprit path, or a counted skip where that was asked."""

import os
import shutil
import subprocess
import sys

import pytest
from image_folder import noise_folder

from ich_keras import class_folders, data, image_files
from ich_keras.config import DataConfig
from ich_keras.errors import UserError


def test_missing_data_dir(tmp_path):
    with pytest.raises(ValueError, match=r"Data directory not found\. Received: data\.source='.*nowhere'"):
        data.build_splits(DataConfig(source=str(tmp_path / "nowhere")))


def test_missing_train_folder(tmp_path):
    root = noise_folder(tmp_path, splits=("test",))
    with pytest.raises(ValueError, match=r"no train folder\. Received: path='.*ds/train'"):
        data.build_splits(DataConfig(source=str(root)))


def test_class_folders_differ_between_splits(tmp_path):
    root = noise_folder(tmp_path, splits=("train", "test"))
    shutil.rmtree(root / "test/b")
    (root / "test/c").mkdir()
    (root / "test/c/0.png").write_bytes((root / "train/a/0.png").read_bytes())
    with pytest.raises(ValueError, match=r"missing \['b'\], extra \['c'\]\. Received: path='.*ds/test'"):
        data.build_splits(DataConfig(source=str(root)))


def test_a_folder_under_a_hidden_one_is_read_and_hidden_entries_inside_it_are_skipped(tmp_path):
    root = noise_folder(tmp_path / ".cache")  # where tfds and many tools keep data
    (root / "train/a/.thumbs").mkdir()
    shutil.copy(root / "train/a/0.png", root / "train/a/.thumbs/0.png")
    shutil.copy(root / "train/a/0.png", root / "train/a/.0.png")
    class_names, found, _ = class_folders.scan_image_folder(root)
    assert class_names == ("a", "b")
    assert [key for key, _ in found["train"]] == [f"train/{c}/{i}.png" for c in "ab" for i in range(3)]


def test_empty_class_folder(tmp_path):
    root = noise_folder(tmp_path)
    (root / "train/empty").mkdir()
    with pytest.raises(ValueError, match=r"Class folder holds no images\. Received: path='.*train/empty'"):
        data.build_splits(DataConfig(source=str(root)))
    (root / "train/empty/Thumbs.db").write_bytes(b"\0" * 8)
    with pytest.raises(ValueError, match=r"holds no images; its 1 file not named like images \(\.db 1\), e\.g\. "
                                         r"train/empty/Thumbs\.db\. Received: path='.*train/empty'"):
        data.build_splits(DataConfig(source=str(root)))


def test_raw_files_and_sidecars_beside_the_photos_are_left_out_and_counted(tmp_path):
    root = noise_folder(tmp_path, per_class=3)
    shutil.copyfile(root / "train/a/0.png", root / "train/a/0.NEF")  # decodable, as RAW previews often are
    (root / "train/a/0.xmp").write_text("<x:xmpmeta/>")
    shutil.copyfile(root / "train/b/1.png", root / "train/b/1.png.dng")
    shutil.copyfile(root / "train/b/2.png", root / "train/b/3.JPG")  # the case of a suffix does not matter
    splits = data.build_splits(DataConfig(source=str(root), val_fraction=0.34))
    keys = [key for examples in splits.splits.values() for key in examples.keys]
    assert sorted(keys) == sorted([f"train/{c}/{i}.png" for c in "ab" for i in range(3)] + ["train/b/3.JPG"])
    assert splits.left_out == ("train/a/0.NEF", "train/a/0.xmp", "train/b/1.png.dng")
    assert image_files.describe_left_out(splits.left_out) == ("3 files not named like images (.nef 1, .xmp 1, .dng 1), "
                                                       "e.g. train/a/0.NEF")


def test_corrupt_image(tmp_path):
    root = noise_folder(tmp_path, splits=("train", "test"))
    good = (root / "train/a/0.png").read_bytes()
    (root / "train/a/0.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"skip_bad_images.*train/a/0\.png"):
        data.build_splits(DataConfig(source=str(root)))
    # Bad files in two splits are counted and named in one message: fixing train used to reveal test's next.
    (root / "test/b/1.png").write_text("not a picture")
    with pytest.raises(ValueError, match=r"^2 file\(s\) are not readable images") as error:
        data.build_splits(DataConfig(source=str(root)))
    assert "train/a/0.png" in str(error.value) and "test/b/1.png" in str(error.value)


def test_non_image_file(tmp_path):
    root = noise_folder(tmp_path)
    (root / "train/b/readme.jpg").write_text("this is text")
    with pytest.raises(ValueError, match=r"train/b/readme\.jpg: UnidentifiedImageError"):
        data.build_splits(DataConfig(source=str(root)))


def test_stray_file_between_class_folders(tmp_path):
    root = noise_folder(tmp_path)
    (root / "train/labels.csv").write_text("a,b")
    with pytest.raises(ValueError, match=r"only class folders.*Received: path='.*train/labels\.csv'"):
        data.build_splits(DataConfig(source=str(root)))


def test_class_without_train_images_after_carving(tmp_path):
    root = noise_folder(tmp_path, per_class=1)
    with pytest.raises(ValueError, match=r"no test split.*data\.test_fraction=0\.0"):
        data.build_splits(DataConfig(source=str(root), test_fraction=0.0))


def test_a_file_name_that_is_not_utf8_is_refused_naming_its_bytes(tmp_path):
    root = noise_folder(tmp_path)
    shutil.copy(root / "train/a/0.png", os.fsencode(root / "train/a") + b"/f\xeate.png")  # a cp1252 name
    with pytest.raises(UserError, match=r"not valid UTF-8.*Received: path=b'.*train/a/f\\xeate\.png'"):
        data.build_splits(DataConfig(source=str(root)))


def test_an_empty_val_split_is_refused_before_training(tmp_path):
    root = noise_folder(tmp_path, per_class=2)  # test takes one of each class, train keeps the other: none for val
    with pytest.raises(UserError, match=r"The val split is empty.*Received: 2 train images over 2 classes"):
        data.build_splits(DataConfig(source=str(root)))
    assert len(data.build_splits(DataConfig(source=str(noise_folder(tmp_path / "3", per_class=3)))).splits["val"]) == 2


def test_all_images_bad_in_a_split(tmp_path):
    root = noise_folder(tmp_path, classes=("a", "b"), per_class=1, splits=("train", "test"))
    (root / "test/a/0.png").write_text("broken")
    (root / "test/b/0.png").write_text("broken")
    with pytest.raises(ValueError, match=r"No readable images left in split\. Received: path='.*ds/test'"):
        data.build_splits(DataConfig(source=str(root), skip_bad_images=True))


def test_one_class_folder_or_a_valid_folder_is_refused_naming_it(tmp_path):
    # DIR/train/photos/<class>/...: the sub-folders would be read as the images of one class "photos".
    root = noise_folder(tmp_path / "one", classes=("photos",), per_class=4, splits=("train",))
    with pytest.raises(UserError, match=r"at least 2 class folders.*Received: path='.*train/photos'"):
        data.build_splits(DataConfig(source=str(root)))
    # A split named valid/ (as other exports call it) would go unused while val is carved from train.
    root = noise_folder(tmp_path / "valid", per_class=3, splits=("train", "valid", "test"))
    with pytest.raises(UserError, match=r"rename valid/ to val/.*Received: path='.*/valid'"):
        data.build_splits(DataConfig(source=str(root)))
    # Test/ and Training/ as other tools write them: the test set would be ignored, train not found.
    root = noise_folder(tmp_path / "cased", per_class=3, splits=("train", "Test"))
    with pytest.raises(UserError, match=r"test split must be a folder named test; rename Test/ to test/ \(or move it "
                                        r"away to carve test from train\)\. Received: path='.*/Test'"):
        data.build_splits(DataConfig(source=str(root)))
    (root / "Test").rename(root / "test")
    (root / "train").rename(root / "Training")
    with pytest.raises(UserError, match=r"rename Training/ to train/\. Received"):
        data.build_splits(DataConfig(source=str(root)))


def test_a_linked_folder_inside_a_class_folder_is_read_and_a_link_loop_ends(tmp_path):
    root = noise_folder(tmp_path / "ds", per_class=3, splits=("train",))
    more = noise_folder(tmp_path / "more", classes=("x",), per_class=2, splits=("train",))
    (root / "train/a/more").symlink_to(more / "train/x", target_is_directory=True)
    (root / "train/a/loop").symlink_to(root / "train/a", target_is_directory=True)
    files = image_files.visible_files(root / "train/a")
    assert len(files) == 5 and all(p.suffix for p in files)
    # A link to a folder above: the other classes' images would all be read as class a.
    (root / "train/a/up").symlink_to(root / "train", target_is_directory=True)
    with pytest.raises(UserError, match=r"A linked folder points to a folder above .*train/a, so the folders beside "
                                        r"it \(other classes\) would be read as part of it; remove the link\. "
                                        r"Received: path='.*train/a/up' -> '.*train'"):
        image_files.visible_files(root / "train/a")


def test_a_folder_that_cannot_be_listed_is_an_error_naming_it(tmp_path):
    # Its images vanished without a word before. Root reads any folder: the check runs without that capability.
    root = noise_folder(tmp_path / "ds", per_class=3, splits=("train",))
    locked = root / "train/a/more"
    locked.mkdir()
    for image in list((root / "train/a").glob("*.*"))[:2]:
        image.rename(locked / image.name)
    locked.chmod(0)
    command = [sys.executable, "-c", "import pathlib, sys; from ich_keras import image_files; "
               "print(len(image_files.visible_files(pathlib.Path(sys.argv[1]))))", str(root / "train/a")]
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: every folder is readable")
        drop = "-dac_override,-dac_read_search"
        command = ["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}", *command]
    try:
        done = subprocess.run(command, capture_output=True, text=True)
    finally:
        locked.chmod(0o755)
    assert done.returncode != 0, done.stdout
    assert (f"Cannot list a data folder (Permission denied): the images in it would be left out; make it readable or "
            f"move it away. Received: path='{locked}'") in done.stderr


def test_a_new_run_says_what_it_left_out(tmp_path, capsys):
    from ich_keras import run_start
    from ich_keras.config import config_from_dict

    root = noise_folder(tmp_path)
    (root / "train/a/0.xmp").write_text("<x:xmpmeta/>")
    run_start.write_start(run_start.prepare(config_from_dict({"data": {"source": str(root), "val_fraction": 0.34}}),
                                    tmp_path / "run"))
    assert "Left out 1 file not named like images (.xmp 1), e.g. train/a/0.xmp (read: .bmp, " in capsys.readouterr().out


def test_a_mac_zip_s_resource_forks_are_not_a_class(tmp_path):
    root = noise_folder(tmp_path)
    forks = root / "train/__MACOSX/a"
    forks.mkdir(parents=True)
    (forks / "._0.png").write_bytes(b"\0\5\26\7")  # AppleDouble header: not an image
    (root / "train/b/__MACOSX").mkdir()
    (root / "train/b/__MACOSX/._1.png").write_bytes(b"\0\5\26\7")
    class_names, found, left_out = class_folders.scan_image_folder(root)
    assert class_names == ("a", "b") and len(found["train"]) == 6 and not left_out


def test_a_nas_s_thumbnail_folders_are_not_read_as_images(tmp_path):
    root = noise_folder(tmp_path)
    thumbs = root / "train/a/@eaDir/0.png"  # a Synology NAS keeps each photo's thumbnails in a folder named after it
    thumbs.mkdir(parents=True)
    shutil.copy(root / "train/a/0.png", thumbs / "SYNOPHOTO_THUMB_XL.jpg")
    class_names, found, left_out = class_folders.scan_image_folder(root)
    assert class_names == ("a", "b") and len(found["train"]) == 6 and not left_out


def test_an_empty_file_is_called_empty(tmp_path):
    (tmp_path / "0.jpg").write_bytes(b"")  # a copy or a download that never finished
    assert image_files.try_decode(tmp_path / "0.jpg") == (None, "empty file (0 bytes)")
