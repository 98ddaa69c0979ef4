"""`python -m ich_keras.predict` and `ich_keras.load` on a real run (conftest's `trained_run`, on generated JPEG, PNG,
CMYK, 16-bit and grayscale files): same numbers as `soup evaluate`."""

import csv
import itertools
import json
import re
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from predict_fixtures import SOUP, copy_test_split

import ich_keras
from ich_keras import predict, soup
from ich_keras.errors import UserError
from ich_keras.inference import collect_files


@pytest.fixture(scope="module")
def run_dir(trained_run):
    return trained_run


@pytest.fixture(scope="module")
def photos(run_dir, tmp_path_factory):
    """The run's test images as a folder of class subfolders, with three broken files mixed in."""
    root = tmp_path_factory.mktemp("photos")
    paths, labels = copy_test_split(run_dir, root)
    (root / "notes.jpg").write_text("not an image")  # named like one
    (root / "notes.txt").write_text("a note")  # not named like an image: left out, counted
    first_jpeg = next(p for p in paths if p.suffix == ".jpg")
    jpeg = first_jpeg.read_bytes()
    (root / first_jpeg.parent.name / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (root / "moved.jpg").symlink_to(root / "nowhere.jpg")
    (root / ".hidden.jpg").write_bytes(jpeg)  # hidden files are skipped, as in data.scan_image_folder
    return root, paths, labels


def test_predict_cli_matches_soup_evaluate(run_dir, photos, tmp_path):
    root, paths, labels = photos
    soup.main(["evaluate", str(run_dir), "--split", "test", "--checkpoints", str(run_dir / SOUP),
               "--output", str(tmp_path / "eval"), "--quiet", "--batch-size", "8"])
    expected = json.loads((tmp_path / "eval/evaluate/test.json").read_text())[0]["test"]

    output = tmp_path / "predictions.json"
    status = predict.main([str(run_dir), "--weights", SOUP, str(root), "--top-k", "3",
                           "--output", str(output), "--batch-size", "8", "--quiet"])
    written = json.loads(output.read_text())
    failed = {Path(row["path"]).name: row["error"] for row in written["predictions"] if "error" in row}
    predicted = {row["path"]: row["top_k"] for row in written["predictions"] if "error" not in row}

    assert status == 1  # the broken files
    assert set(failed) == {"notes.jpg", "truncated.jpg", "moved.jpg"}
    assert "UnidentifiedImageError" in failed["notes.jpg"]
    assert failed["moved.jpg"] == f"broken symbolic link to {root / 'nowhere.jpg'}"
    assert sorted(predicted) == sorted(map(str, paths))
    assert all(len(top) == 3 for top in predicted.values())
    class_names = written["class_names"]
    by_path = {str(p): label for p, label in zip(paths, labels)}
    correct = [class_names.index(top[0]["class"]) == by_path[p] for p, top in predicted.items()]
    assert len(correct) == expected["num_examples"]
    assert np.mean(correct) == expected["accuracy"]


def test_load_api_matches_evaluation_pipeline(run_dir, photos):
    from ich_keras.evaluation import forward
    from ich_keras.rundir import load_run

    _, paths, _ = photos
    run = load_run(run_dir)
    model = run.build_model()
    model.load_weights(run_dir / SOUP)
    _, logits = forward(model, run.dataset("test", batch_size=8, cache=False))
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)

    predictor = ich_keras.load(run_dir, weights=SOUP, batch_size=8)  # weights relative to the run directory
    result = predictor.predict([str(p) for p in paths])
    assert result.errors == ()
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-5)
    assert (result.labels == expected.argmax(-1)).all()
    top = result.top_k(100)
    assert len(top[0]) == run.num_classes and top[0][0][0] == result.classes[0]
    assert all(a[1] >= b[1] for row in top for a, b in itertools.pairwise(row))


def test_predict_arrays_equals_files_and_flip_tta(run_dir, photos):
    from PIL import Image

    from ich_keras.image_files import decode_image_file

    _, paths, _ = photos
    paths = paths[:5]
    assert {Image.open(p).mode for p in paths} == {"RGB", "CMYK", "I;16", "L"}  # one of each generated kind
    # The pipeline's own decode (16-bit scaled, CMYK converted): the same pixels through files and arrays.
    arrays = [decode_image_file(p) for p in paths]
    predictor = ich_keras.load(run_dir, weights=run_dir / SOUP, batch_size=4)
    from_files = predictor.predict(paths).probabilities
    np.testing.assert_allclose(predictor.predict(np.stack(arrays)).probabilities, from_files, atol=1e-6)
    single = predictor.predict(arrays[0])
    assert single.paths == ("array[0]",)
    np.testing.assert_allclose(single.probabilities[0], from_files[0], atol=1e-6)
    # What a notebook holds: a column of paths (df.path.values), one PIL image.
    as_column = predictor.predict(np.array([str(p) for p in paths]))
    assert as_column.paths == tuple(map(str, paths))
    np.testing.assert_array_equal(as_column.probabilities, from_files)
    np.testing.assert_allclose(predictor.predict(Image.fromarray(arrays[0])).probabilities[0], from_files[0],
                               atol=1e-6)
    # And what it would mistake for images: each named for what it is.
    for given, message in ((np.zeros((32, 32), np.uint8), r"a grayscale image: np.stack\(\[image\] \* 3, -1\)"),
                           ([paths[0], arrays[0]], r"not both in one call. Received: inputs\[0\] a path, "
                                                   r"inputs\[1\] a ndarray"),
                           ([np.stack(arrays[:2])], r"images\[0\] is a batch of shape \(2, .*ds.unbatch\(\)"),
                           ([(arrays[0], 1)], r"images\[0\] is a tuple of 2 \(an \(image, label\) dataset\?")):
        with pytest.raises(UserError, match=message):
            predictor.predict(given)

    flipped = predictor.predict([a[:, ::-1] for a in arrays]).probabilities
    with_tta = ich_keras.load(run_dir, weights=SOUP, batch_size=4, tta="flip").predict(paths).probabilities
    # Resizing commutes with the mirror up to uint8 rounding of exact ties, hence not bit-exact.
    np.testing.assert_allclose(with_tta, 0.5 * (from_files + flipped), atol=1e-3)
    assert not np.allclose(with_tta, from_files, atol=1e-6)


def test_collect_files_and_errors(run_dir, tmp_path):
    (tmp_path / "a/b").mkdir(parents=True)
    (tmp_path / "a/b/x.jpg").write_bytes(b"")
    (tmp_path / "a/.git").mkdir()
    (tmp_path / "a/.git/y.jpg").write_bytes(b"")
    (tmp_path / "a/b/x.NEF").write_bytes(b"")  # a RAW file beside its JPEG: left out
    (tmp_path / "empty").mkdir()
    (tmp_path / "sidecars").mkdir()
    (tmp_path / "sidecars/x.xmp").write_bytes(b"")
    named = tmp_path / "sidecars/x.xmp"  # named as an input: read whatever its name
    files, errors, left_out = collect_files([tmp_path / "a", tmp_path / "empty", tmp_path / "sidecars",
                                             tmp_path / "missing.jpg", named])
    assert files == [tmp_path / "a/b/x.jpg", named]
    assert errors == [(str(tmp_path / "empty"), "directory holds no image files"),
                      (str(tmp_path / "sidecars"), "directory holds no image files (1 file not named like images "
                                                   f"(.xmp 1), e.g. {named})"),
                      (str(tmp_path / "missing.jpg"), "no such file or directory")]
    assert left_out == [tmp_path / "a/b/x.NEF"]  # the sidecar named as an input is read, not also left out

    with pytest.raises(ValueError, match="nope.weights.h5"):
        ich_keras.load(run_dir, weights="nope.weights.h5")
    predictor = ich_keras.load(run_dir, weights=SOUP)
    with pytest.raises(ValueError, match=r"images\[0\].shape=\(32, 32\)"):
        predictor.predict([np.zeros((32, 32), np.uint8)])  # grayscale: the caller converts to RGB
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    with pytest.raises(UserError, match=r"look scaled to \[0, 1\] \(multiply by 255\)\. Received: images\[0\]"):
        predictor.predict(pixels / 255.0)  # the usual mistake: it would predict two near-black images
    black = np.zeros((32, 32, 3), np.float32)  # black in either scale: predicted, not refused
    np.testing.assert_allclose(predictor.predict(black).probabilities, predictor.predict(black.astype(np.uint8))
                               .probabilities, atol=1e-6)
    with pytest.raises(UserError, match=r"in \[0, 255\]\. Received: images\[0\] in \[0, 65535\]"):
        predictor.predict(pixels.astype(np.uint16) * 257)
    with_nan = pixels.astype(np.float32)
    with_nan[1, 0, 0, 0] = np.nan  # NaN passes every range comparison: it was predicted, finite probabilities and all
    with pytest.raises(UserError, match=r"finite pixels\. Received: images\[1\] holds NaN or inf"):
        predictor.predict(with_nan)
    np.testing.assert_allclose(predictor.predict(pixels.astype(np.float32)).probabilities,
                               predictor.predict(pixels).probabilities, atol=1e-6)
    with pytest.raises(ValueError, match="tta='mirror'"):
        ich_keras.load(run_dir, weights=SOUP, tta="mirror")
    empty = predictor.predict(tmp_path / "empty")
    assert empty.probabilities.shape == (0, 3) and len(empty.errors) == 1


def test_cli_csv_and_exit_status(run_dir, photos, tmp_path, capsys, monkeypatch):
    _, paths, _ = photos
    output = tmp_path / "p.csv"
    status = predict.main([str(run_dir), str(paths[0]), str(paths[1]), "--top-k", "2",
                           "--output", str(output), "--quiet"])
    assert status == 0
    lines = output.read_text().splitlines()
    assert lines[0] == "path,class_1,probability_1,class_2,probability_2,error,copy_of_train"
    assert len(lines) == 3 and lines[1].startswith(str(paths[0]) + ",")
    assert "checkpoints/epoch_" in capsys.readouterr().err  # the default weights: best checkpoint
    # A path that is not there is a mistake to fix first: nothing predicted, exit status 2 (UserError).
    with pytest.raises(UserError, match=r"^1 input\(s\) not found: .*missing.png\. Nothing was predicted"):
        predict.main([str(run_dir), str(paths[0]), str(tmp_path / "missing.png"), "--quiet"])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"2 input\(s\) not found: a.jpg, b \(relative to the working directory, "):
        predict.main([str(run_dir), "a.jpg", str(paths[0]), "b", "--quiet"])
    with pytest.raises(UserError, match=r"not found: photos/\*\.jpg \(relative .*\) \(a quoted pattern\? the shell"):
        predict.main([str(run_dir), "photos/*.jpg", "--quiet"])  # quoted, so the shell left it as it is
    # A broken link among files the shell expanded is listed as unreadable, as it is inside a folder; the rest is
    # predicted (it stopped everything as "not found").
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    assert predict.main([str(run_dir), str(paths[0]), "gone.jpg", "--output", "links.csv", "--quiet"]) == 1
    rows = (tmp_path / "links.csv").read_text().splitlines()
    assert rows[1].startswith(f"{paths[0]},") and rows[2].startswith("gone.jpg,") and "broken symbolic link" in rows[2]
    # Its own previous output is replaced; any other file under that name is left untouched.
    assert predict.main([str(run_dir), str(paths[0]), "--output", str(output), "--quiet"]) == 0
    assert len(output.read_text().splitlines()) == 2
    upper = tmp_path / "P.CSV"  # the suffix in any case (it was refused as an unknown format)
    assert predict.main([str(run_dir), str(paths[0]), "--output", str(upper), "--quiet"]) == 0
    assert upper.read_text().startswith("path,class_1,")
    config = run_dir / "config.json"
    before = config.read_bytes()
    with pytest.raises(UserError, match="not a previous predictions file"):
        predict.main([str(run_dir), str(paths[0]), "--output", str(config.with_suffix(".json")), "--quiet"])
    assert config.read_bytes() == before

    # Without --quiet, progress goes to stderr: stdout is the table alone, to redirect or pipe.
    capsys.readouterr()
    assert predict.main([str(run_dir), str(paths[0]), str(paths[1]), "--batch-size", "1"]) == 0
    printed = capsys.readouterr()
    assert printed.out.splitlines()[0].startswith(f"{paths[0]}\t") and "\x1b" not in printed.out
    assert "[predict] 1 image (2/2)" in printed.err


def test_a_file_name_that_is_not_utf8_is_predicted_and_shown_with_escapes(run_dir, photos, tmp_path, capsys):
    _, paths, _ = photos
    folder = tmp_path / "latin1"
    folder.mkdir()
    jpeg = next(p for p in paths if p.suffix == ".jpg").read_bytes()
    Path(os.fsdecode(os.fsencode(folder) + b"/f\xeate.jpg")).write_bytes(jpeg)  # a cp1252 name
    assert predict.main([str(run_dir), str(folder), "--output", str(tmp_path / "p.csv"), "--quiet"]) == 0
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith(f"{folder}/f\\xeate.jpg,")
    assert predict.main([str(run_dir), str(folder), "--quiet"]) == 0
    assert capsys.readouterr().out.startswith(f"{folder}/f\\xeate.jpg\t")


def test_weights_whose_outputs_are_not_finite_are_refused_naming_the_file(run_dir, photos, tmp_path):
    from ich_keras import soups
    from ich_keras.weight_layout import running_statistics

    # Finite weights that do not compute: a BatchNorm variance below zero (what a merge extrapolating the
    # statistics made) turns every output NaN.
    weights = soups.read(run_dir / SOUP)
    variance = weights.layout.by_key[max(running_statistics(weights.layout))]
    weights.flat[variance.offset:variance.offset + variance.size] = -1.0
    broken = tmp_path / "broken.weights.h5"
    soups.save(weights, broken, template=run_dir / SOUP)
    _, paths, _ = photos
    with pytest.raises(UserError, match=rf"{broken} gives non-finite outputs \(NaN or inf\) for \d+ of \d+ images"):
        predict.main([str(run_dir), "--weights", str(broken), str(paths[0]), "--quiet"])


def test_an_image_training_saw_is_named_with_the_train_image_it_copies(run_dir, tmp_path, capsys):
    from ich_keras.image_files import decode_image_file
    from ich_keras.rundir import load_run

    run = load_run(run_dir)
    key = next(key for key in run.splits.splits["train"].keys if key.endswith(".png"))
    source = Path(run.config.data.source) / key
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copyfile(source, folder / "same_file.png")
    Image.fromarray(decode_image_file(source)).save(folder / "re_encoded.jpg", quality=75)
    noise = np.random.default_rng(7).integers(0, 256, (64, 64, 3), dtype=np.uint8)  # a picture the run never saw
    Image.fromarray(noise).save(folder / "new.png")
    output = tmp_path / "predictions.csv"
    assert predict.main([str(run_dir), str(folder), "--output", str(output), "--quiet"]) == 0
    with open(output, newline="") as f:
        copies = {Path(row["path"]).name: row["copy_of_train"] for row in csv.DictReader(f)}
    assert copies == {"same_file.png": key, "re_encoded.jpg": key, "new.png": ""}
    assert "2 image(s) are copies of the run's train images" in capsys.readouterr().err
    assert predict.main([str(run_dir), str(folder), "--output", str(tmp_path / "predictions.json"), "--quiet"]) == 0
    listed = json.loads((tmp_path / "predictions.json").read_text())["predictions"]
    assert {Path(row["path"]).name: row.get("copy_of_train", "") for row in listed} == copies
    from_arrays = ich_keras.load(run_dir).predict([decode_image_file(source), noise])
    assert from_arrays.copies_of_train == (key, "")  # arrays: by their thumbnails


def test_a_relative_weights_path_that_names_a_file_in_the_cwd_and_in_the_run_is_refused(tmp_path, monkeypatch):
    # Started inside run a, predicting with run b: `checkpoints/epoch_001.weights.h5` loaded a's file silently.
    from safety_fixtures import make_run

    a, b = make_run(tmp_path / "a", seeds=(1,)), make_run(tmp_path / "b", seeds=(2,))
    monkeypatch.chdir(a)
    with pytest.raises(UserError, match=r"two different files.*weights='checkpoints/epoch_001.weights.h5'"):
        ich_keras.load(b, weights="checkpoints/epoch_001.weights.h5")
    # The same file by both readings (started in the run itself), or a path only one reading finds, still loads.
    assert ich_keras.load(a, weights="checkpoints/epoch_001.weights.h5").weights_path.samefile(
        a / "checkpoints/epoch_001.weights.h5")
    monkeypatch.chdir(tmp_path)
    assert ich_keras.load("b", weights="checkpoints/epoch_001.weights.h5").weights_path.samefile(
        b / "checkpoints/epoch_001.weights.h5")


def test_weights_that_name_a_folder_say_so(tmp_path):
    # `--weights soups` was "Weights file not found", of a folder that is there.
    from safety_fixtures import make_run

    run_dir = make_run(tmp_path / "run", seeds=(1,))
    (run_dir / "soups").mkdir()
    for weights in ("soups", str(run_dir / "soups")):
        with pytest.raises(UserError, match=rf"The weights path is a folder; pass a .weights.h5 file .*"
                                            rf"weights='{re.escape(weights)}'"):
            ich_keras.load(run_dir, weights=weights)


def test_a_fifo_named_like_an_image_is_reported_not_read(tmp_path):
    # It vanished from a folder unnoticed, and named on the command line it was "no such file or directory".
    from ich_keras import image_files, inference

    os.mkfifo(tmp_path / "pipe.jpg")
    files, errors, _ = inference.collect_files([str(tmp_path / "pipe.jpg"), str(tmp_path)])
    assert files == [tmp_path / "pipe.jpg"] * 2 and errors == []
    assert image_files.try_decode(tmp_path / "pipe.jpg") == (None, "OSError: not a regular file but a FIFO, so it "
                                                                   "is not read")


def test_a_few_photos_are_not_padded_to_a_whole_batch():
    # One photo was padded to --batch-size (32) forward passes, 64 with --tta flip: 1.7 s instead of 0.06 s for
    # coatnet_0 at 224 px on a CPU. Powers of two keep the shapes compiled for to a few.
    from ich_keras.inference import padded_batch_size

    assert [padded_batch_size(total, 32) for total in (1, 2, 3, 5, 17, 32, 100)] == [1, 2, 4, 8, 32, 32, 32]
    assert padded_batch_size(3, 2) == 2


def test_flip_tta_on_a_run_trained_without_flips_says_so(run_dir, photos, tmp_path, capsys):
    # The mirrors of photos whose orientation matters (text, a church's plan) are images such a run never saw.
    _, paths, _ = photos
    unflipped = shutil.copytree(run_dir, tmp_path / "run")
    config = json.loads((unflipped / "config.json").read_text())
    config["augment"]["flip"] = False
    (unflipped / "config.json").write_text(json.dumps(config))
    note = "this run trained without flips (augment.flip = false)"
    assert predict.main([str(unflipped), str(paths[0]), "--weights", SOUP, "--tta", "flip", "--quiet"]) == 0
    assert note in capsys.readouterr().err
    assert predict.main([str(run_dir), str(paths[0]), "--weights", SOUP, "--tta", "flip", "--quiet"]) == 0
    assert note not in capsys.readouterr().err
