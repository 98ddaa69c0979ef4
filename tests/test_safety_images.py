"""One image decoder everywhere: palette and 1-bit BMPs and EXIF-rotated photos give their true pixels in fit/eval and
predict, JPEGs decode as PIL decodes them (what a deployment feeding the export uses; one far larger than the model's
input at a reduced scale, the same everywhere), and predict on a folder reports each unreadable file by name instead
of dying."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safety_fixtures import make_run

from ich_keras import data, pipeline
from ich_keras.config import DataConfig
from ich_keras.image_files import check_image, decode_image_file


def _pictures(folder: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Writes odd but valid images to `folder`, other pictures for another `seed`; returns {file name: the RGB pixels
    a viewer shows}."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    colours = rng.integers(0, 256, (6, 3), dtype=np.uint8)
    index = rng.integers(0, 6, (16, 16))
    palette = Image.fromarray(index.astype(np.uint8), mode="P")
    palette.putpalette(colours.flatten().tolist() + [0] * (768 - colours.size))
    palette.save(folder / "palette.bmp")  # 8-bit BMP with a colour table
    bits = rng.integers(0, 2, (16, 16)).astype(bool)
    Image.fromarray(bits).convert("1").save(folder / "bits.bmp")  # 1-bit BMP
    ramp = np.arange(16) if seed % 2 == 0 else np.arange(16)[::-1]  # another seed's is no copy (ich_keras.copies)
    smooth = np.stack([*np.meshgrid(ramp * 15, ramp * 13, indexing="ij"), index * 40], -1)
    Image.fromarray(smooth.astype(np.uint8)).save(folder / "photo.jpg", quality=85)  # 4:2:0 chroma, as cameras
    with Image.open(folder / "photo.jpg") as jpeg:
        decoded_jpeg = np.asarray(jpeg.convert("RGB"))
    # A phone photo stored sideways with EXIF orientation 6: a viewer turns it 90 degrees clockwise.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(smooth.astype(np.uint8)).save(folder / "phone.jpg", quality=85, exif=exif)
    with Image.open(folder / "phone.jpg") as jpeg:
        upright = np.rot90(np.asarray(jpeg.convert("RGB")), k=-1)
    return {"palette.bmp": colours[index], "bits.bmp": np.repeat(bits[..., None] * np.uint8(255), 3, -1),
            "photo.jpg": decoded_jpeg, "phone.jpg": upright}


def test_fit_and_eval_pipeline_decode_true_pixels(tmp_path):
    expected = {f"train/{name}/{file}": pixels for name, seed in (("x", 0), ("y", 1))  # y's are not copies of x's:
                for file, pixels in _pictures(tmp_path / "ds" / "train" / name, seed).items()}  # those stay in train
    splits = data.build_splits(DataConfig(source=str(tmp_path / "ds"), image_size=16, val_fraction=0.34,
                                          test_fraction=0.34))
    assert not splits.bad_images  # every file passes the check...
    for split, examples in splits.splits.items():
        # ... and decodes, at its own size (16 px, so the resize is the identity), to the pixels a viewer shows.
        for key, (image, _) in zip(examples.keys, pipeline.decoded_dataset(str(tmp_path / "ds"), examples, 16)):
            np.testing.assert_array_equal(image.numpy(), expected[key], err_msg=f"{split} {key}")


def test_a_file_changed_after_the_check_is_an_error_naming_it(tmp_path):
    import tensorflow as tf

    root = tmp_path / "ds"
    _pictures(root / "train" / "x")
    _pictures(root / "train" / "y", seed=1)
    examples = data.build_splits(DataConfig(source=str(root), image_size=16, val_fraction=0.34,
                                            test_fraction=0.34)).splits["train"]
    (root / examples.keys[0]).write_bytes(b"overwritten after the check")
    with pytest.raises(tf.errors.OpError, match=examples.keys[0]):
        list(pipeline.decoded_dataset(str(root), examples, 16))


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    import ich_keras

    run = make_run(tmp_path_factory.mktemp("images") / "run")
    return ich_keras.load(run, batch_size=4)


@pytest.mark.slow  # 7 s: a fit, then predict
def test_predict_on_a_folder_names_bad_files_and_matches_pil_preprocessing(predictor, tmp_path):
    from ich_keras import export

    expected = _pictures(tmp_path / "photos")
    (tmp_path / "photos" / "notes.jpg").write_text("not an image")  # named like one
    (tmp_path / "photos" / "IMG_0001.xmp").write_text("<x:xmpmeta/>")  # a sidecar: left out, counted
    png = tmp_path / "photos" / "truncated.png"
    Image.fromarray(expected["photo.jpg"]).save(png)
    png.write_bytes(png.read_bytes()[:60])

    result = predictor.predict(tmp_path / "photos")
    assert sorted(Path(p).name for p in result.paths) == sorted(expected)
    failed = {Path(path).name: reason for path, reason in result.errors}
    assert set(failed) == {"notes.jpg", "truncated.png"} and "UnidentifiedImageError" in failed["notes.jpg"]
    assert [Path(p).name for p in result.left_out] == ["IMG_0001.xmp"]

    # The same images decoded by PIL, as a deployment feeding the exported model does: the same probabilities.
    arrays = [expected[Path(p).name] for p in result.paths]
    np.testing.assert_allclose(predictor.predict(arrays).probabilities, result.probabilities, atol=1e-6)
    run = predictor.run
    wrapped = export.with_preprocessing(predictor.model, run.mean, run.std, run.image_size)
    uint8 = np.stack([pipeline.resize_uint8(a, run.image_size).numpy() for a in arrays])
    np.testing.assert_allclose(np.asarray(wrapped(uint8)), result.probabilities, atol=1e-5)


def _camera_photos(folder: Path) -> list[Path]:
    """Detailed 320 x 256 JPEGs, far larger than a 32 px model's input: one plain, one stored sideways (EXIF 6), and
    the same picture as a PNG (no reduced scales: averaged over boxes instead)."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:256, 0:320]
    picture = np.stack([x * 0.8, y, 128 + 60 * np.sin(x / 7.0) * np.cos(y / 5.0)], -1)
    picture += rng.normal(0, 12, picture.shape)
    picture = Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    picture.save(folder / "camera.jpg", quality=90)
    picture.save(folder / "sideways.jpg", quality=90, exif=exif)
    picture.save(folder / "camera.png")
    return [folder / "camera.jpg", folder / "sideways.jpg", folder / "camera.png"]


def test_a_large_image_is_made_smaller_while_decoded_the_same_way_everywhere(predictor, tmp_path):
    jpeg, sideways, png = _camera_photos(tmp_path / "photos")
    size = predictor.run.image_size
    assert size == 32  # 320 x 256 holds 2 * 32 four times on both sides: 1/4 scale
    assert decode_image_file(jpeg, size).shape == (64, 80, 3)
    assert decode_image_file(sideways, size).shape == (80, 64, 3)  # reduced, then turned upright
    assert decode_image_file(jpeg).shape == (256, 320, 3)
    # A PNG has no reduced scales: each pixel of what comes back is the mean of a 4 x 4 box of the whole image's.
    whole = decode_image_file(png).astype(float)
    box_means = whole.reshape(64, 4, 80, 4, 3).mean(axis=(1, 3))
    # (PIL rounds to uint8 after each of its two passes, rows then columns: within a gray level, not half of one)
    np.testing.assert_allclose(decode_image_file(png, size), box_means, atol=1.0)
    # A JPEG still >= 4x the size after the largest reduced scale (1/8) is averaged over boxes too.
    assert decode_image_file(jpeg, 8).shape == (32 // 2, 40 // 2, 3)

    # After the resize to the input size, within a few gray levels of the full decode, yet not the same pixels.
    for path in (jpeg, png):
        reduced = pipeline.resize_uint8(decode_image_file(path, size), size).numpy().astype(float)
        full = pipeline.resize_uint8(decode_image_file(path), size).numpy().astype(float)
        assert 0 < np.abs(reduced - full).mean() < 3, path.name

    # The data check, the pipeline and predict decode it alike, and the export's recipe with the same decode agrees.
    paths = [jpeg, sideways, png]
    examples = data.Examples(tuple(p.name for p in paths), np.zeros(3, np.int64), ("",) * 3)
    decoded = [image.numpy() for image, _ in pipeline.decoded_dataset(str(tmp_path / "photos"), examples, size)]
    arrays = [decode_image_file(p, size) for p in paths]
    for path, image, array in zip(paths, decoded, arrays):
        np.testing.assert_array_equal(image, pipeline.resize_uint8(array, size).numpy(), err_msg=path.name)
    result = predictor.predict(paths)  # random weights: probabilities near 0.1, told apart by their relative error
    np.testing.assert_allclose(predictor.predict(arrays).probabilities, result.probabilities, rtol=1e-6, atol=0)

    # Every scale decodes the whole file: a truncated large JPEG still fails the check.
    truncated = tmp_path / "photos" / "truncated.jpg"
    truncated.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    assert check_image(jpeg, size)[0] is None
    assert "truncated" in check_image(truncated, size)[0]


def _exif_pil_cannot_write_back(orientation: int) -> bytes:
    """EXIF (little-endian TIFF, one IFD) with `orientation` and the ResolutionUnit tag written as text ("inches")
    instead of a number, as some software writes tags: PIL reads it, but fails to write it back (`struct.error`)."""
    import struct

    entries = struct.pack("<HHIH2x", 0x0112, 3, 1, orientation)  # Orientation: SHORT
    entries += struct.pack("<HHII", 0x0128, 2, 7, 8 + 2 + 2 * 12 + 4)  # ResolutionUnit: ASCII, 7 bytes after the IFD
    return b"Exif\0\0II*\0" + struct.pack("<IH", 8, 2) + entries + struct.pack("<I", 0) + b"inches\0"


def test_a_sideways_photo_whose_exif_pil_cannot_write_back_is_read_upright(predictor, tmp_path):
    """`ImageOps.exif_transpose` writes the EXIF back after turning a photo, and fails on a tag of an unusual type: such
    a phone photo stored sideways was an unreadable file to the data check, fit and predict, though it decodes and any
    viewer shows it upright. The orientation is applied without writing anything back."""
    camera, _, png = _camera_photos(tmp_path / "photos")
    odd = tmp_path / "photos" / "odd_exif.jpg"
    with Image.open(png) as picture:  # camera.jpg's pixels and quality: the same JPEG data, other EXIF
        picture.save(odd, quality=90, exif=_exif_pil_cannot_write_back(6))
    size = predictor.run.image_size
    assert check_image(odd, size)[0] is None  # the data check passes it
    for scale in (None, size):  # upright: camera.jpg turned 90 degrees clockwise, whole and at a reduced scale
        np.testing.assert_array_equal(decode_image_file(odd, scale), np.rot90(decode_image_file(camera, scale), k=-1))
    examples = data.Examples((odd.name,), np.zeros(1, np.int64), ("",))
    [(image, _)] = pipeline.decoded_dataset(str(odd.parent), examples, size)  # fit's pipeline
    upright = np.rot90(decode_image_file(camera, size), k=-1)
    np.testing.assert_array_equal(image.numpy(), pipeline.resize_uint8(upright, size).numpy())
    result = predictor.predict([odd])
    assert not result.errors
    np.testing.assert_allclose(result.probabilities, predictor.predict([upright]).probabilities, rtol=1e-6, atol=0)


def _readme_recipe():
    """The `decode(path, size)` of README "Using a soup" (its one Python block there), run as written."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Using a soup", 1)[1].split("\n## ", 1)[0]
    namespace = {}
    exec(section.split("```python\n", 1)[1].split("```", 1)[0], namespace)
    return namespace["decode"]


def test_the_readme_s_pil_recipe_gives_the_decoder_s_pixels(tmp_path):
    """A deployment without ich_keras decodes as README "Using a soup" says, in plain PIL, and gets the same pixels:
    of a phone photo stored sideways whose EXIF PIL cannot write back too (`ImageOps.exif_transpose`, which the
    recipe used, failed on it with a struct.error)."""
    decode = _readme_recipe()
    photos = _camera_photos(tmp_path)
    odd = tmp_path / "odd_exif.jpg"
    with Image.open(photos[-1]) as picture:
        picture.save(odd, quality=90, exif=_exif_pil_cannot_write_back(6))
    for path in [*photos, odd]:
        for size in (8, 32, 64, 224):
            np.testing.assert_array_equal(np.asarray(decode(path, size)), decode_image_file(path, size),
                                          err_msg=f"{path.name} at {size}")

PIXEL_LIMIT = """
import json, sys, warnings
warnings.simplefilter("always")  # a warning PIL would print is seen, whatever filters ran before
from ich_keras import image_files
from ich_keras.errors import UserError
try:
    with warnings.catch_warnings(record=True) as caught:
        found = {name: image_files.try_decode(name)[1] for name in sys.argv[1:]}
    print(json.dumps({"reasons": found, "warnings": [str(w.message) for w in caught]}))
except UserError as error:
    print(json.dumps({"error": str(error)}))
"""


def _with_pixel_limit(value, *paths) -> dict:
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "ICH_KERAS_MAX_PIXELS": value}
    out = subprocess.run([sys.executable, "-c", PIXEL_LIMIT, *map(str, paths)], env=env, capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])


def test_an_archive_s_large_scans_are_read_up_to_the_pixel_limit_the_user_sets(tmp_path):
    # PIL's own limit is 179 megapixels; ICH_KERAS_MAX_PIXELS moves it, here down to scale for a quick test.
    small, large = tmp_path / "small.png", tmp_path / "large.png"
    Image.new("RGB", (80, 75)).save(small)  # 6,000 pixels: above half the limit, where PIL would warn
    Image.new("RGB", (120, 100)).save(large)  # 12,000 pixels
    result = _with_pixel_limit("10000", small, large)
    assert result["reasons"][str(small)] is None and not result["warnings"]
    assert result["reasons"][str(large)].startswith("DecompressionBombError: Image size (12000 pixels) exceeds "
                                                    "limit of 10000 pixels")
    assert result["reasons"][str(large)].endswith("(for your own large images, raise the limit: "
                                                  "ICH_KERAS_MAX_PIXELS=PIXELS)")
    assert _with_pixel_limit("12000", small, large)["reasons"] == {str(small): None, str(large): None}
    # Without it, PIL's default: both read.
    assert _with_pixel_limit("", small, large)["reasons"] == {str(small): None, str(large): None}
    assert _with_pixel_limit("lots", small)["error"] == ("ICH_KERAS_MAX_PIXELS must be a number of pixels, e.g. "
                                                         "400000000. Received: ICH_KERAS_MAX_PIXELS='lots'")
