"""Export never destroys data: an existing output that is not a previous export of the format is
refused, `--overwrite` replaces only a previous export, and never the run directory, the cwd or their ancestors."""

import numpy as np
import pytest
from predict_fixtures import SOUP
from soup_fixtures import conv_model

from ich_keras import export
from ich_keras.errors import UserError


@pytest.fixture(scope="module")
def model():
    """A tiny wrapped model: uint8 (batch, 8, 8, 3) in, 3 probabilities out."""
    return export.with_preprocessing(conv_model(), (0.5,) * 3, (0.25,) * 3, 8)


def _fake_run(path):
    """A directory holding what a run holds (config.json, a checkpoint): what must survive any export."""
    (path / "checkpoints").mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "checkpoints" / "epoch_001.weights.h5").write_bytes(b"weights")
    return path


def _snapshot(path):
    return sorted((str(p.relative_to(path)), p.read_bytes() if p.is_file() else b"") for p in path.rglob("*"))


def test_run_directory_cwd_and_their_ancestors_are_refused(model, tmp_path, monkeypatch):
    run = _fake_run(tmp_path / "runs" / "demo")
    before = _snapshot(tmp_path)
    with pytest.raises(ValueError, match="run directory"):
        export.export_model(model, "savedmodel", run)  # this once deleted the run (shutil.rmtree), exit 0
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="run directory") as error:
            export.export_model(model, "savedmodel", run, overwrite=overwrite)
        assert repr(str(run)) in str(error.value)
        # The folder above the run, named as the run the model came from.
        with pytest.raises(ValueError, match="run directory or a folder above it"):
            export.export_model(model, "savedmodel", tmp_path / "runs", overwrite=overwrite, run_dir=run)
    monkeypatch.chdir(run)
    for out in (".", "..", str(tmp_path)):
        with pytest.raises(ValueError, match="working directory or a folder above it"):
            export.export_model(model, "savedmodel", out, overwrite=True)
    assert _snapshot(tmp_path) == before


def test_command_refuses_the_run_directory(trained_run):
    run = trained_run  # conftest's real run: the command would otherwise fail before reaching `--output`
    before = _snapshot(run)
    # The command's error wrapper may turn the UserError into exit status 2: either way nothing is touched.
    for extra in ([], ["--overwrite"]):
        with pytest.raises((ValueError, SystemExit)):
            export.main([str(run), "--weights", SOUP, "--format", "savedmodel", "--output", str(run)] + extra)
    assert _snapshot(run) == before


def test_existing_output_that_is_not_an_export_is_refused(model, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "keep.jpg").write_bytes(b"precious")
    (tmp_path / "notes.onnx").write_text("not a model")
    (tmp_path / "notes.tflite").write_text("not a model either")
    # Protobuf parses these as ONNX models with nothing in them: an empty file, a TensorFlow graph.
    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "saved_model.pb").write_bytes(b"\x08\x07")
    before = _snapshot(tmp_path)
    with pytest.raises(ValueError, match="not a previous savedmodel export"):
        export.export_model(model, "savedmodel", folder)  # this once deleted the folder
    for overwrite in (False, True):
        for fmt, out in (("savedmodel", folder), ("onnx", tmp_path / "notes.onnx"),
                         ("tflite", tmp_path / "notes.tflite"), ("onnx", folder), ("onnx", tmp_path / "empty.onnx"),
                         ("onnx", tmp_path / "saved_model.pb")):
            with pytest.raises(ValueError, match=f"not a previous {fmt} export") as error:
                export.export_model(model, fmt, out, overwrite=overwrite)
            assert repr(str(out)) in str(error.value)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("fmt, name", [("savedmodel", "saved_model"), ("onnx", "model.onnx")])
def test_overwrite_replaces_only_a_previous_export(model, tmp_path, fmt, name):
    out = tmp_path / name
    export.export_model(model, fmt, out)
    assert export.is_previous_export(out, fmt)
    assert not export.is_previous_export(out, "tflite")
    first = _snapshot(out) if out.is_dir() else out.read_bytes()
    with pytest.raises(ValueError, match="pass --overwrite"):
        export.export_model(model, fmt, out)
    assert (_snapshot(out) if out.is_dir() else out.read_bytes()) == first

    export.export_model(model, fmt, out, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary folder or old copy left beside it
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    np.testing.assert_allclose(export.load_exported(out, fmt)(images), np.asarray(model(images)), atol=1e-5)


def test_tflite_is_recognised_by_type(tmp_path):
    flatbuffer = tmp_path / "m.tflite"
    flatbuffer.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(32))
    assert export.is_previous_export(flatbuffer, "tflite")
    assert not export.is_previous_export(flatbuffer, "onnx")


def test_weights_whose_outputs_are_not_finite_are_not_exported(trained_run, tmp_path):
    # A BatchNorm variance below zero: predict refused the weights, export wrote a model giving NaN for every image.
    import h5py

    from ich_keras.rundir import load_run

    broken = tmp_path / "negative_variance.weights.h5"
    broken.write_bytes(load_run(trained_run).checkpoints[0].path.read_bytes())
    with h5py.File(broken, "r+") as f:
        variances = [key for key in _datasets(f) if "batch_normalization" in key and key.endswith("/vars/3")]
        f[variances[0]][...] = -1.0
    with pytest.raises(ValueError, match=r"negative_variance\.weights\.h5 gives non-finite outputs .*Nothing was "
                                         r"exported"):
        export.main([str(trained_run), "--weights", str(broken), "--format", "tflite", "--output",
                     str(tmp_path / "m.tflite")])
    assert not (tmp_path / "m.tflite").exists()


def _datasets(f) -> list[str]:
    keys = []
    f.visititems(lambda key, obj: keys.append(key) if hasattr(obj, "shape") else None)
    return keys


@pytest.mark.parametrize(("fmt", "name", "told"), [("tflite", "model.onnx", "end it in .tflite"),
                                                    ("onnx", "model.TFLITE", "end it in .onnx"),
                                                    ("savedmodel", "model.tflite", "give a folder's path")])
def test_an_output_named_for_another_format_is_refused(fmt, name, told, tmp_path):
    named = rf"named like a file of --format \w+, but --format is {fmt}: {told}, or pass --format"
    with pytest.raises(UserError, match=named):
        export.check_output(tmp_path / name, fmt)
    assert export.check_output(tmp_path / "model", fmt) == tmp_path / "model"  # no ending: the user's choice
    assert not list(tmp_path.iterdir())
