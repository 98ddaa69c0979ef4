"""`python -m ich_keras.export`: each format loaded with its own runtime gives the Keras model's probabilities on real
image files (conftest's generated ImageFolder; uint8 in, preprocessing folded in)."""

import json
import os
import warnings

import numpy as np
import pytest
from predict_fixtures import SOUP

from ich_keras import export
from ich_keras.rundir import load_run


@pytest.fixture(scope="module")
def setup(trained_run):
    """The run, its soup wrapped for export, and the run's 24 test images as uint8 at the run's size."""
    from ich_keras import pipeline

    run_dir = trained_run
    run = load_run(run_dir)
    # Decoded and resized (64 -> 32 px) by the evaluation pipeline, which is what a deployment must reproduce.
    dataset = pipeline.decoded_dataset(run.config.data.source, run.splits.splits["test"], run.image_size)
    images = np.stack([image.numpy() for image, _ in dataset])
    model, _, _ = export.deployable_model(run_dir, SOUP)
    return run_dir, model, images


def test_folded_preprocessing_equals_predict(setup):
    import ich_keras

    run_dir, model, images = setup
    run = load_run(run_dir)
    paths = [str(run.config.data.source + "/" + key) for key in run.splits.splits["test"].keys]
    expected = ich_keras.load(run_dir, weights=SOUP, batch_size=8).predict(paths).probabilities
    np.testing.assert_allclose(np.asarray(model.predict(images, batch_size=8, verbose=0)), expected, atol=1e-5)
    assert model.input.dtype == "uint8" and model.input_shape == (None, 32, 32, 3)


def test_an_export_is_built_with_the_standard_layers(setup, monkeypatch):
    # The CPU rewrites were measured on XLA's CPU kernels; an export runs in TensorFlow, TFLite or onnxruntime,
    # where they were slower (benchmarks/export_layers.py). ICH_KERAS_CONV_IMPL still chooses where it is set.
    from ich_keras.models.rewrites import CONV_IMPL_ENV

    run_dir, model, _ = setup

    def rewritten(model) -> list[str]:
        layers = [layer for layer in model.layers if not hasattr(layer, "layers")]
        nested = [name for layer in model.layers if hasattr(layer, "layers") for name in rewritten(layer)]
        return [layer.name for layer in layers if getattr(layer, "rewritten", False)] + nested

    monkeypatch.setenv(CONV_IMPL_ENV, "rewritten")
    assert rewritten(export.deployable_model(run_dir, SOUP)[0])  # the rewritten layers exist, and are chosen
    monkeypatch.delenv(CONV_IMPL_ENV)
    assert rewritten(model) == [] and CONV_IMPL_ENV not in os.environ


# One format in the fast loop; each other one converts the whole graph again (ONNX about 100 s on a busy 2-core CPU).
@pytest.mark.parametrize("fmt, out, quantize", [
    pytest.param("savedmodel", "saved_model", "none", marks=pytest.mark.slow),
    ("tflite", "model.tflite", "none"),
    pytest.param("onnx", "model.onnx", "none", marks=pytest.mark.slow),
    pytest.param("tflite", "model_dynamic.tflite", "dynamic", marks=pytest.mark.slow),
])
def test_export_round_trip(setup, tmp_path, fmt, out, quantize, capsys):
    run_dir, model, images = setup
    args = [str(run_dir), "--weights", SOUP, "--format", fmt, "--output", str(tmp_path / out)]
    export.main(args + ["--quantize", quantize])
    printed = capsys.readouterr().out
    assert "uint8 (batch, 32, 32, 3) -> probabilities (batch, 3); the class names, in that order, are in " in printed
    assert [p.name for p in tmp_path.iterdir()] == [out]  # no temporary files left beside it
    # The class names travel with the model where the format holds them: a deployment needs no run directory.
    names = list(load_run(run_dir).class_names)
    if fmt == "savedmodel":
        assert json.loads((tmp_path / out / export.MARKER).read_text())["class_names"] == names
    elif fmt == "onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load_model(str(tmp_path / out), load_external_data=False).metadata_props}
        assert json.loads(props["class_names"]) == names
    else:
        assert f"are in {run_dir / 'classes.json'}" in printed

    predict = export.load_exported(tmp_path / out, fmt)
    expected = np.asarray(model.predict(images, batch_size=8, verbose=0))
    # Two batch sizes: the batch dimension is dynamic in every format.
    got = np.concatenate([predict(images[:7]), predict(images[7:])])
    assert got.shape == expected.shape and got.dtype == np.float32
    difference = np.abs(got - expected).max()
    print(f"{fmt} quantize={quantize}: max abs probability difference {difference:.2e}")
    if quantize == "none":
        assert difference <= 1e-4
    else:
        # int8 weights: reported, not held to float32 precision; still a model of the same classes.
        np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
        assert difference < 0.1


def test_export_rejects_bad_arguments(setup, tmp_path):
    _, model, _ = setup
    with pytest.raises(ValueError, match="format='keras'"):
        export.export_model(model, "keras", tmp_path / "m")
    with pytest.raises(ValueError, match="format='onnx', quantize='dynamic'"):
        export.export_model(model, "onnx", tmp_path / "m.onnx", quantize="dynamic")


def test_onnx_without_the_export_extra_is_refused_naming_it_before_the_model_is_loaded(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    # The plain install: jax2onnx absent (the dev install has it; uninstalling is not the test's to do).
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "jax2onnx" else find_spec(name, *a))
    with pytest.raises(ValueError, match=r"ONNX export needs the export extra \(jax2onnx missing\): pip install -e "
                                         r"'\.\[export\]'"):
        export.main(["no-such-run", "--format", "onnx", "--output", "m.onnx"])
    export.check_format("tflite", "none")  # the other formats need no extra


def test_an_onnx_export_with_large_tensors_is_one_file_that_loads(tmp_path):
    # jax2onnx writes every tensor of 1 MB or more to a `.data` file beside the model; the run's small test models
    # have none, full-size ones have dozens (an export of coatnet_nano named a sidecar that no longer existed).
    pytest.importorskip("onnxruntime")
    import keras

    inputs = keras.Input((8, 8, 3))
    hidden = keras.layers.Dense(2048)(keras.layers.Flatten()(inputs))  # a 192 x 2048 float32 kernel: 1.5 MB
    model = export.with_preprocessing(keras.Model(inputs, keras.layers.Dense(3)(hidden)), (0.5,) * 3, (0.25,) * 3, 8)
    out = export.export_model(model, "onnx", tmp_path / "big.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["big.onnx"] and out.stat().st_size > 192 * 2048 * 4
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3)).astype(np.uint8)
    np.testing.assert_allclose(export.load_exported(out, "onnx")(images), model.predict(images, verbose=0),
                               atol=1e-5)


def test_an_onnx_export_that_onnxruntime_cannot_run_is_refused_and_not_written(tmp_path):
    # jax2onnx lowers Keras' NHWC max-pool (ResNet-50's and DenseNet-121's stems) to an ONNX MaxPool over all four
    # axes, which onnxruntime refuses at run time: the export printed "Exported" and wrote a file that never ran.
    pytest.importorskip("onnxruntime")
    import keras

    inputs = keras.Input((8, 8, 3))
    pooled = keras.layers.MaxPooling2D(3, strides=2, padding="same")(keras.layers.Conv2D(4, 3)(inputs))
    logits = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(pooled))
    model = export.with_preprocessing(keras.Model(inputs, logits), (0.5,) * 3, (0.25,) * 3, 8)
    with pytest.raises(ValueError, match=r"The onnx export does not run in its runtime \(.*MaxPool.*\); nothing was "
                                         r"written\. Another --format may work"):
        export.export_model(model, "onnx", tmp_path / "pool.onnx")
    assert list(tmp_path.iterdir()) == []


def test_the_check_of_an_export_prints_no_runtime_start_up_lines(tmp_path, capfd):
    # Loading the TFLite file to check it printed "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." from C++.
    import keras

    inputs = keras.Input((8, 8, 3))
    model = export.with_preprocessing(keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs))),
                                      (0.5,) * 3, (0.25,) * 3, 8)
    capfd.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("always", UserWarning)  # shown as a fresh process shows them (once each)
        export.export_model(model, "tflite", tmp_path / "m.tflite")
    err = capfd.readouterr().err
    assert "XNNPACK" not in err and "deprecated" not in err  # nor the interpreter's six lines on LiteRT


def test_a_vit_class_token_head_exports_to_tflite(tmp_path):
    # ViT-B/16's head reads the class token; as `tokens[:, 0]` JAX lowered it to a dynamic gather under the export's
    # dynamic batch, which TFLite's converter refused (a ConverterError and a page of MLIR, no file).
    import keras

    from ich_keras.models import baselines

    inputs = keras.Input((8, 8, 3))
    tokens = keras.layers.Reshape((16, 12))(keras.layers.Conv2D(12, 2, strides=2)(inputs))  # (B, 16, 12)
    logits = keras.layers.Dense(3)(baselines._pool_class_token(tokens))
    model = export.with_preprocessing(keras.Model(inputs, logits), (0.5,) * 3, (0.25,) * 3, 8)
    out = export.export_model(model, "tflite", tmp_path / "vit.tflite")
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3)).astype(np.uint8)
    np.testing.assert_allclose(export.load_exported(out, "tflite")(images), model.predict(images, verbose=0),
                               atol=1e-5)


def test_the_check_of_a_savedmodel_prints_no_absl_warning(tmp_path):
    # Loading the SavedModel to check it printed "WARNING:absl:Importing a function (...) with ops with unsaved
    # custom gradients" (absl's handler is set up in a fresh process, as a command is).
    import subprocess
    import sys

    script = ("import ich_keras, keras\nfrom ich_keras import export\n"
              "inputs = keras.Input((8, 8, 3))\n"
              "model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))\n"
              "model = export.with_preprocessing(model, (0.5,) * 3, (0.25,) * 3, 8)\n"
              f"export.export_model(model, 'savedmodel', {str(tmp_path / 'sm')!r})\n")
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    assert "WARNING:absl" not in child.stderr, child.stderr[-1000:]
