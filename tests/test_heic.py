"""A phone's HEIC photos: read through pillow-heif (the `heic` extra, which `setup.sh --dev` installs) like any other
image; on a machine without it, left out and counted with the advice to install it."""

import json
import subprocess
import sys

import numpy as np
import pillow_heif  # noqa: F401  (the heic extra: these tests need it installed)
from PIL import Image

from ich_keras import data, pipeline
from ich_keras.config import DataConfig
from ich_keras.image_files import IMAGE_SUFFIXES, decode_image_file


def _phone_photos(root, classes=("a", "b"), per_class=3):
    """Smooth 48 x 40 pictures saved as .HEIC (upper case, as an iPhone names them); {key: the pixels saved}."""
    y, x = np.mgrid[0:40, 0:48]
    saved = {}
    for c, name in enumerate(classes):
        (root / "train" / name).mkdir(parents=True)
        for i in range(per_class):
            # Waves of another length in each picture: no two are copies (ich_keras.copies).
            wave = 127 + 80 * np.sin(2 * np.pi * (x + 2 * y) * (1 + i + per_class * c) / 384)
            picture = np.stack([wave, wave, np.full_like(x, 60 * c + 20 * i)], -1).astype(np.uint8)
            key = f"train/{name}/IMG_{i:04d}.HEIC"
            Image.fromarray(picture).save(root / key, quality=95)
            saved[key] = picture
    return saved


def test_heic_photos_are_read_like_any_image(tmp_path):
    assert {".heic", ".heif"} <= IMAGE_SUFFIXES
    saved = _phone_photos(tmp_path / "ds")
    splits = data.build_splits(DataConfig(source=str(tmp_path / "ds"), image_size=16, val_fraction=0.34,
                                          test_fraction=0.34))
    assert splits.left_out == () and not splits.bad_images
    examples = [(split, key) for split, e in splits.splits.items() for key in e.keys]
    assert sorted(key for _, key in examples) == sorted(saved)
    for key in saved:  # the decoder gives the picture back, up to HEVC's loss
        assert np.abs(decode_image_file(tmp_path / "ds" / key).astype(int) - saved[key]).mean() < 3, key
    train = splits.splits["train"]
    for key, (image, _) in zip(train.keys, pipeline.decoded_dataset(str(tmp_path / "ds"), train, 16)):
        expected = pipeline.resize_uint8(decode_image_file(tmp_path / "ds" / key, 16), 16).numpy()
        np.testing.assert_array_equal(image.numpy(), expected, err_msg=key)


WITHOUT_THE_EXTRA = """
import json, sys
sys.modules["pillow_heif"] = None  # as on a machine without the heic extra: importing it fails
from pathlib import Path
from ich_keras import data, image_files
from ich_keras.errors import UserError
root = Path(sys.argv[1])
try:
    data.scan_image_folder(root)
    error = None
except UserError as e:
    error = str(e)
print(json.dumps({"suffixes": sorted(image_files.IMAGE_SUFFIXES), "error": error,
                  "decode": image_files.try_decode(root / "train" / "b" / "IMG_0000.HEIC")[1]}))
"""


def test_without_the_extra_heic_photos_are_left_out_with_the_advice_to_install_it(tmp_path):
    _phone_photos(tmp_path / "ds", classes=("b",))
    (tmp_path / "ds" / "train" / "a").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "ds" / "train" / "a" / "x.jpg")
    out = subprocess.run([sys.executable, "-c", WITHOUT_THE_EXTRA, str(tmp_path / "ds")], capture_output=True,
                         text=True, check=True).stdout
    result = json.loads(out.splitlines()[-1])
    assert ".heic" not in result["suffixes"] and ".jpg" in result["suffixes"]
    assert "Class folder holds no images; its 3 files not named like images (.heic 3), e.g. " in result["error"]
    assert "(HEIC/HEIF photos are read once the heic extra is installed: pip install 'ich_keras[heic]')" \
        in result["error"]
    # A run trained on them, read where the extra is missing: the same advice, naming the file.
    assert result["decode"].startswith("UserError: Cannot read a HEIC/HEIF photo here: HEIC/HEIF photos are read "
                                       "once the heic extra is installed")
    assert "IMG_0000.HEIC" in result["decode"]


def test_a_heic_photo_stored_sideways_is_turned_upright_once(tmp_path):
    picture = np.zeros((40, 60, 3), np.uint8)
    picture[:, :10] = 255  # a white band on the left of a landscape picture
    exif = Image.Exif()
    exif[0x0112] = 6  # a viewer turns it 90 degrees clockwise: the band on top
    Image.fromarray(picture).save(tmp_path / "IMG_0001.HEIC", exif=exif.tobytes(), quality=95)
    Image.fromarray(picture).save(tmp_path / "IMG_0001.JPG", exif=exif, quality=95)
    heic, jpeg = decode_image_file(tmp_path / "IMG_0001.HEIC"), decode_image_file(tmp_path / "IMG_0001.JPG")
    assert heic.shape == jpeg.shape == (60, 40, 3)
    assert heic[:10].mean() > 240 and heic[15:].mean() < 15  # pillow-heif turns it; the EXIF turn is not added
    assert np.abs(heic.astype(int) - jpeg).mean() < 3
