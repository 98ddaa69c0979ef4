"""Copies of one picture: the thumbnail by hand, the pairs against a brute-force search, the groups, and real
photographs re-encoded, resized and recoloured against each other."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from ich_keras import copies
from ich_keras.copies import (NEAR_COPY_CORRELATION, Fingerprint, components, copy_groups, near_copy_pairs,
                              thumbnail)
from ich_keras.image_files import check_image


def test_a_thumbnail_is_the_box_means_made_zero_mean_and_of_unit_length():
    image = np.zeros((32, 48, 3), np.uint8)
    image[:, 24:] = 200  # the right half: 8 of the 16 boxes of every row
    expected = np.tile(np.repeat([-1.0, 1.0], 8), 16) / 16  # +-100 gray levels around 100, over a norm of 1600
    np.testing.assert_allclose(thumbnail(image), expected, atol=1e-6)
    np.testing.assert_allclose(thumbnail((image * 0.5 + 20).astype(np.uint8)), expected, atol=1e-6)  # blind to
    # brightness and contrast
    assert not thumbnail(np.full((32, 32, 3), 90, np.uint8)).any()  # flat: compared by its bytes alone


def test_near_copy_pairs_match_a_brute_force_search_across_blocks():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((23, 8))
    vectors[[5, 17, 22]] = vectors[3] + 0.05 * rng.standard_normal((3, 8))  # near copies of row 3
    vectors[11] = vectors[2] + 0.6 * rng.standard_normal(8)  # not near enough
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    correlation = vectors @ vectors.T
    expected = {(i, j) for i in range(23) for j in range(i + 1, 23) if correlation[i, j] >= NEAR_COPY_CORRELATION}
    assert {(3, 5), (3, 17), (3, 22), (5, 17), (5, 22), (17, 22)} <= expected and (2, 11) not in expected
    for block in (4, 23, 100):
        assert set(map(tuple, near_copy_pairs(vectors.astype(np.float32), block=block).tolist())) == expected


def test_a_long_comparison_shows_its_progress(monkeypatch, capsys):
    vectors = np.eye(10, dtype=np.float32)
    near_copy_pairs(vectors, block=4, progress=True)  # quick: silent
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(copies, "_QUIET_FOR_S", 0.0)  # as if each block took seconds
    near_copy_pairs(vectors, block=4, progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("[data] comparing the images' thumbnails for near copies (1/6)") and "(6/6)" in lines[-1]


def test_a_correlation_at_the_threshold_is_a_copy_and_just_below_it_is_not():
    angle = np.arccos(NEAR_COPY_CORRELATION)
    vectors = np.array([[1, 0], [np.cos(angle), np.sin(angle)], [np.cos(angle * 1.01), -np.sin(angle * 1.01)]])
    assert near_copy_pairs(vectors.astype(np.float64), NEAR_COPY_CORRELATION - 1e-12).tolist() == [[0, 1]]


def _fingerprint(digest: str, *thumbnail_values: float) -> Fingerprint:
    values = np.array(thumbnail_values, np.float32)
    return Fingerprint(digest, values / np.linalg.norm(values) if values.any() else values)


def test_copy_groups_join_copies_of_copies_and_keep_those_across_splits_or_classes():
    fingerprints = {
        "train/a/0.png": _fingerprint("d0", 1, 0, 0),
        "test/a/0.jpg": _fingerprint("d1", 1, 0.01, 0),  # a near copy in another split
        "test/a/again.jpg": _fingerprint("d2", 1, 0.02, 0.005),  # a copy of the copy
        "train/a/1.png": _fingerprint("d3", 0, 1, 0),
        "train/a/1b.png": _fingerprint("d4", 0, 1, 0.01),  # a copy in its own class and split: left alone
        "train/a/black.png": _fingerprint("d5", 0, 0, 0),
        "train/b/black.png": _fingerprint("d5", 0, 0, 0),  # flat, but the same bytes under another class
        "train/b/gray.png": _fingerprint("d6", 0, 0, 0),  # flat, other bytes: not a copy of anything
        "val/b/2.png": _fingerprint("d7", 0, 0, 1),
    }
    group_of = components(fingerprints)
    assert len(set(group_of.values())) == 5  # the three near copies, 1 and 1b, the black pair, gray, 2
    keys = list(fingerprints)
    splits = [key.split("/")[0] for key in keys]
    labels = [key.split("/")[1] for key in keys]
    groups = copy_groups(keys, splits, labels, group_of)
    assert groups == (("test/a/0.jpg", "test/a/again.jpg", "train/a/0.png"), ("train/a/black.png", "train/b/black.png"))
    assert copy_groups(keys, splits, labels, {}) == ()  # no fingerprints (the embedded digits): no copies


def _photographs() -> list[Path]:
    import matplotlib
    import sklearn

    return [Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg",
            Path(sklearn.__file__).parent / "datasets" / "images" / "china.jpg",
            Path(sklearn.__file__).parent / "datasets" / "images" / "flower.jpg"]


def _copies_of(photo: Image.Image) -> dict[str, Image.Image]:
    """What a collection gathered from the web holds of one photograph."""
    jpeg = io.BytesIO()
    photo.save(jpeg, "JPEG", quality=40)
    return {"re-encoded": Image.open(jpeg),
            "a thumbnail": photo.resize((photo.width // 4, photo.height // 4), Image.BICUBIC),
            "brighter": ImageEnhance.Brightness(photo).enhance(1.2),
            "less contrast": ImageEnhance.Contrast(photo).enhance(0.8),
            "gray": photo.convert("L")}


@pytest.mark.parametrize("size", [64, 224])
def test_real_photographs_copies_are_near_copies_and_the_photographs_are_not(tmp_path, size):
    originals = []
    for photo_path in _photographs():
        original = check_image(photo_path, size)[1].thumbnail
        originals.append(original)
        with Image.open(photo_path) as photo:
            for name, copy in _copies_of(photo.convert("RGB")).items():
                path = tmp_path / f"{photo_path.stem} {name}.png"
                copy.save(path)
                correlation = float(check_image(path, size)[1].thumbnail @ original)
                assert correlation >= NEAR_COPY_CORRELATION, (photo_path.name, name, correlation)
    correlation = np.stack(originals) @ np.stack(originals).T
    assert correlation[np.triu_indices(3, 1)].max() < NEAR_COPY_CORRELATION


def test_the_thumbnail_side_and_threshold_are_what_the_measurements_used():
    # benchmarks/near_copies.py and the README quote results for these values; a change needs them measured again.
    assert (copies.THUMBNAIL_SIDE, copies.NEAR_COPY_CORRELATION) == (16, 0.95)
