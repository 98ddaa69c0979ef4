"""`python -m ich_keras.export`: a run's model with its preprocessing folded in, for deployment without ich_keras.

    python -m ich_keras.export runs/demo --weights soups/greedy/soup.weights.h5 --format savedmodel --output m/
    python -m ich_keras.export runs/demo --format tflite --output model.tflite [--quantize dynamic]
    python -m ich_keras.export runs/demo --format onnx --output model.onnx

An existing `--output` is refused, unless it is a previous export of the same format (a SavedModel directory holds
`ich_keras_export.json`; .tflite and .onnx files are recognised by their contents) and `--overwrite` is given: only
then is it replaced. The run directory, the working directory and their ancestors are refused whatever the flags.
The export is built in a temporary folder beside `--output` and renamed into place.

The exported model maps a batch of uint8 RGB images, (batch, size, size, 3) at the run's image size, to
(batch, num_classes) float32 probabilities: it scales to [0, 1], normalises with the model's mean/std (the same
float32 arithmetic as `ich_keras.pipeline.normalize`), runs the network and applies softmax. Resizing stays with the
caller (every image in a batch must have one size anyway): decode with `image_files.decode_image_file(path, size)`
(a large image made smaller, as in training) and resize to size x size, bicubic with antialiasing, to match
training. The input is named "image" and the batch dimension is dynamic in every format.

Keras writes the SavedModel (`model.export(format="tf_saved_model")`, through jax2tf) and the ONNX file
(`format="onnx"`, through jax2onnx on the JAX backend); Keras' own "litert" format needs the TensorFlow or torch
backend, so TFLite is TensorFlow's `TFLiteConverter` applied to the exported SavedModel. `load_exported` loads each
with its own runtime (TensorFlow, the TFLite interpreter, onnxruntime).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ich_keras import _quiet_tf, atomic, cli, compile_cache, interrupts, summaries
from ich_keras.errors import UserError, first_line
from ich_keras.evaluation import check_finite_outputs
import keras

FORMATS = ("savedmodel", "tflite", "onnx")
QUANTIZE = ("none", "dynamic")
# Written inside every exported SavedModel directory: how a later `--overwrite` knows the folder is an export.
MARKER = "ich_keras_export.json"


class Normalize(keras.layers.Layer):
    """uint8 images -> (x / 255 - mean) / std in float32.

    Not `keras.layers.Normalization`: that divides by sqrt(variance), one rounding away from the pipeline's
    division by std.
    """

    def __init__(self, mean, std, **kwargs):
        super().__init__(**kwargs)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def call(self, images):
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        return (keras.ops.cast(images, "float32") / 255.0 - mean) / std

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std}


def with_preprocessing(model, mean, std, image_size: int):
    """Wraps a logits model: uint8 (batch, size, size, 3) images in, float32 softmax probabilities out.

    Args:
        model: a Keras model mapping normalised float32 images to logits.
        mean, std: per-channel normalisation for pixels in [0, 1].
        image_size: side of the square input.

    Returns:
        A functional `keras.Model` whose input is named "image" and output "probabilities".
    """
    images = keras.Input((image_size, image_size, 3), dtype="uint8", name="image")
    logits = model(Normalize(mean, std, name="normalize")(images))
    probabilities = keras.layers.Softmax(name="probabilities", dtype="float32")(logits)
    return keras.Model(images, probabilities, name=f"{model.name}_uint8")


def deployable_model(run_dir: str | Path, weights: str | Path | None = None):
    """The run's model with `weights` loaded, wrapped by `with_preprocessing`, built with the standard Keras layers
    (unless `ICH_KERAS_CONV_IMPL` chooses) and checked to give finite outputs.

    Args:
        run_dir: a directory written by `python -m ich_keras.fit`.
        weights: as in `ich_keras.inference.load` (default: the best checkpoint by validation accuracy).

    Returns:
        (wrapped keras.Model, the weights file used, the class names in the order of its outputs).
    """
    from ich_keras.inference import resolve_weights
    from ich_keras.models.rewrites import standard_layers_unless_chosen
    from ich_keras.rundir import load_run

    run = load_run(run_dir)
    path = resolve_weights(run, weights)
    with standard_layers_unless_chosen():  # the CPU rewrites are for XLA's kernels, not the export's runtime
        model = with_preprocessing(run.build_model(path), run.mean, run.std, run.image_size)
    check_finite_outputs(model(probe_images(run.image_size)), str(path), "Nothing was exported.")
    return model, path, list(run.class_names)


def probe_images(image_size: int) -> np.ndarray:
    """Two random uint8 images, the same every time: what an export is checked on before it is published."""
    return np.random.default_rng(0).integers(0, 256, (2, image_size, image_size, 3), dtype=np.uint8)


def _tflite_from_saved_model(saved_model: Path, out: Path, quantize: str) -> None:
    import tensorflow as tf

    # Loading the SavedModel warns once per custom-gradient op; an inference export never asks for gradients.
    with _quiet_tf.absl_warnings_off():
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
        if quantize == "dynamic":
            # Dynamic-range quantisation: int8 weights, float activations; no calibration data needed.
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        out.write_bytes(converter.convert())


def is_previous_export(path: str | Path, fmt: str) -> bool:
    """Whether `path` is something `export_model` wrote in format `fmt`: a SavedModel directory holding our
    `MARKER`, a TFLite flatbuffer (file identifier "TFL3") or an ONNX model with a graph and our class names."""
    path = Path(path)
    if fmt == "savedmodel":
        try:
            return json.loads((path / MARKER).read_text(encoding="utf-8")).get("format") == "savedmodel"
        except (OSError, ValueError, AttributeError):
            return False
    if not path.is_file():
        return False
    if fmt == "tflite":
        with open(path, "rb") as f:
            return f.read(8)[4:8] == b"TFL3"  # a flatbuffer's file identifier sits after the 4-byte root offset
    try:
        import onnx

        model = onnx.load_model(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001  (protobuf raises DecodeError, onnx its own errors: any means "not ONNX")
        return False
    # Protobuf parses many files as a model with nothing in it (an empty file, a TensorFlow saved_model.pb): ours
    # has a graph, and the class names `export_model` writes.
    return len(model.graph.node) > 0 and any(prop.key == "class_names" for prop in model.metadata_props)


def _protected(run_dir) -> list[tuple[str, Path]]:
    places = [("the working directory", Path.cwd().resolve())]
    if run_dir is not None:
        places.append(("the run directory", Path(run_dir).resolve()))
    return places


# The file name endings of the formats written as one file (a SavedModel is a folder).
_SUFFIXES = {"tflite": ".tflite", "onnx": ".onnx"}


def check_output(out: str | Path, fmt: str, overwrite: bool = False, run_dir: str | Path | None = None) -> Path:
    """Refuses an `out` whose replacement could lose data; done before anything is built or written.

    Allowed: a path that does not exist, or with `overwrite` a previous export of the same format
    (`is_previous_export`). Never: the working directory, the run directory or an ancestor of either, or a folder
    holding a run (config.json), whatever `overwrite` says.

    Raises:
        UserError naming `out` and saying what to do.
    """
    out = Path(out)
    named_for = next((other for other, suffix in _SUFFIXES.items() if out.suffix.lower() == suffix), fmt)
    if named_for != fmt:  # a .onnx holding a TFLite model misleads whoever loads it
        name = f"end it in {_SUFFIXES[fmt]}" if fmt in _SUFFIXES else "give a folder's path"
        raise UserError(f"--output is named like a file of --format {named_for}, but --format is {fmt}: {name}, or "
                        f"pass --format {named_for}. Received: output={str(out)!r}")
    resolved = out.resolve()
    for what, place in _protected(run_dir):
        if resolved == place or resolved in place.parents:
            raise UserError(f"Refusing to export over {what} or a folder above it ({place}); choose a new path "
                            f"for --output. Received: output={str(out)!r}")
    if not out.exists() and not out.is_symlink():
        return out
    if (out / "config.json").is_file():
        raise UserError(f"Refusing to export over a run directory (it holds config.json); choose a new path for "
                        f"--output. Received: output={str(out)!r}")
    if not is_previous_export(out, fmt):
        raise UserError(f"The output exists and is not a previous {fmt} export, so it is left untouched; choose a "
                        f"new path for --output. Received: output={str(out)!r}")
    if not overwrite:
        raise UserError(f"The output holds a previous {fmt} export; pass --overwrite to replace it. "
                        f"Received: output={str(out)!r}")
    return out


def check_format(fmt: str, quantize: str) -> None:
    """A format this module writes, with a quantisation it offers for it."""
    if fmt not in FORMATS:
        raise UserError(f"Unknown export format; expected one of {FORMATS}. Received: format={fmt!r}")
    if quantize not in QUANTIZE:
        raise UserError(f"Unknown quantisation; expected one of {QUANTIZE}. Received: quantize={quantize!r}")
    if quantize != "none" and fmt != "tflite":
        raise UserError(f"Quantisation is only offered for tflite. Received: format={fmt!r}, quantize={quantize!r}")
    if fmt == "onnx":  # the extra's packages, before the model is loaded and traced
        missing = [name for name in ("jax2onnx", "onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
        if missing:
            raise UserError(f"ONNX export needs the export extra ({', '.join(missing)} missing): pip install -e "
                            f"'.[export]' in the ich_keras checkout. Received: format={fmt!r}")


def export_model(model, fmt: str, out: str | Path, quantize: str = "none", overwrite: bool = False,
                 run_dir: str | Path | None = None, class_names: Sequence[str] = ()) -> Path:
    """Writes a `with_preprocessing` model in one deployment format.

    Args:
        model: the wrapped Keras model.
        fmt: "savedmodel" (a directory), "tflite" or "onnx" (a file).
        out: where to write; if it exists it must be a previous export of `fmt` and `overwrite` must be set
            (`check_output`).
        quantize: "dynamic" for a dynamic-range quantised TFLite model; "none" otherwise.
        overwrite: replace a previous export of `fmt` at `out`.
        run_dir: the run the model came from (refused as `out`, with its ancestors).
        class_names: the outputs' class names, written into a SavedModel's `MARKER` file and an ONNX model's
            metadata (`class_names`, a JSON list); a TFLite file holds none (the run's classes.json has them).

    Returns:
        `out` as a Path.
    """
    check_format(fmt, quantize)
    out = check_output(out, fmt, overwrite, run_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    # What the export must compute; a call also readies the model for Keras' ONNX export, which refuses a model
    # never called (its input signature check).
    probe = probe_images(model.input_shape[1])
    expected = np.asarray(model(probe))
    # Built beside `out` in a temporary folder, checked, then renamed: an interrupted or failed export leaves no
    # half artifact and the previous export stays whole until the new one is complete.
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".tmp-{out.name}-"))
    try:
        saved_model = tmp / "saved_model"
        staged = tmp / ("saved_model" if fmt == "savedmodel" else "model")
        try:
            if fmt in ("savedmodel", "tflite"):
                model.export(str(saved_model), format="tf_saved_model", verbose=False)
            if fmt == "tflite":
                _tflite_from_saved_model(saved_model, staged, quantize)
            elif fmt == "onnx":
                model.export(str(staged), format="onnx", verbose=False)
        except Exception as error:  # noqa: BLE001  (jax2tf's and jax2onnx's own errors; --debug shows the chain)
            raise UserError(f"The {fmt} export of {model.name} failed ({type(error).__name__}: "
                            f"{first_line(error)}); nothing was written. {_OTHER_FORMATS}") from error
        if fmt == "savedmodel":
            (saved_model / MARKER).write_text(json.dumps({"format": fmt, "input": list(model.input_shape[1:]),
                                                          "classes": int(model.output_shape[-1]),
                                                          "class_names": list(class_names)}) + "\n")
        elif fmt == "onnx":
            _finish_onnx(staged, {"class_names": json.dumps(list(class_names))})
        _check_export(staged, fmt, probe, expected, quantize)
        with interrupts.deferred():  # Ctrl-C waits for the renames
            atomic.replace_with(staged, out, tmp)
    finally:
        with interrupts.deferred():  # and for the removal of the previous export: no half of it is left behind
            shutil.rmtree(tmp, ignore_errors=True)
    return out


_OTHER_FORMATS = "Another --format may work (savedmodel and tflite go through TensorFlow, onnx through jax2onnx)."
# How far an export's probabilities may be from the Keras model's: float32 round-off, or int8 weights.
_TOLERANCE = {"none": 1e-4, "dynamic": 0.05}


def _check_export(path: Path, fmt: str, probe: np.ndarray, expected: np.ndarray, quantize: str) -> None:
    """Runs the staged export in its own runtime on `probe`; raises a UserError unless it gives the Keras model's
    probabilities (`expected`): an export that fails to load or run there, or computes something else (jax2onnx
    once lowered the baselines' NHWC max-pool to a 4-D ONNX MaxPool onnxruntime refuses), is not published."""
    try:
        with _quiet_tf.quiet_stderr(), _quiet_tf.absl_warnings_off():  # the runtimes' own start-up lines
            got = np.asarray(load_exported(path, fmt)(probe))
    except Exception as error:  # noqa: BLE001  (each runtime raises its own kinds)
        raise UserError(f"The {fmt} export does not run in its runtime ({type(error).__name__}: "
                        f"{first_line(error)}); nothing was written. {_OTHER_FORMATS}") from error
    gap = float(np.max(np.abs(got - expected))) if got.shape == expected.shape else np.inf
    if not gap <= _TOLERANCE[quantize]:
        raise UserError(f"The {fmt} export computes other probabilities than the Keras model (largest difference "
                        f"{gap:.3g} on two probe images, shapes {got.shape} and {expected.shape}); nothing was "
                        f"written. {_OTHER_FORMATS}")


def _finish_onnx(path: Path, metadata: dict[str, str]) -> None:
    """Adds `metadata` to an ONNX file's `metadata_props`, and moves the tensors jax2onnx writes beside it
    (`NAME.data`: every one of 1 MB or more) into the file: an export is one file, and only it is renamed out of the
    staging folder, whose removal would take the sidecar. Protobuf's 2 GB limit is far above the largest model here
    (coatnet_3_rw_224, ~0.7 GB of float32)."""
    import onnx

    model = onnx.load_model(str(path), load_external_data=True)
    onnx.helper.set_model_props(model, metadata)
    onnx.save_model(model, str(path), save_as_external_data=False)
    path.with_name(path.name + ".data").unlink(missing_ok=True)


def load_exported(path: str | Path, fmt: str):
    """Loads an export with its own runtime.

    Args:
        path: what `export_model` wrote.
        fmt: its format.

    Returns:
        A function: uint8 (batch, size, size, 3) array -> (batch, num_classes) float32 probabilities.
    """
    check_format(fmt, "none")
    path = Path(path)
    if fmt == "savedmodel":
        import tensorflow as tf

        serve = tf.saved_model.load(str(path)).signatures["serving_default"]
        return lambda images: next(iter(serve(image=tf.constant(images)).values())).numpy()
    if fmt == "tflite":
        import tensorflow as tf

        with warnings.catch_warnings():  # "tf.lite.Interpreter is deprecated" (for LiteRT, a package of its own)
            warnings.simplefilter("ignore", UserWarning)
            interpreter = tf.lite.Interpreter(model_path=str(path))
        (input_detail,) = interpreter.get_input_details()
        shape = [None]

        def run_tflite(images):
            if shape[0] != images.shape:
                # The batch is dynamic (-1 in the signature); size the tensors to this batch.
                interpreter.resize_tensor_input(input_detail["index"], images.shape)
                interpreter.allocate_tensors()
                shape[0] = images.shape
            interpreter.set_tensor(input_detail["index"], images)
            interpreter.invoke()
            return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy()

        return run_tflite
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda images: session.run(None, {name: images})[0]
    raise AssertionError(f"no loader for {fmt!r}")  # FORMATS and check_format keep this unreachable


def main(argv=None) -> int:
    """`python -m ich_keras.export`: checks --output, builds the deployable model, exports it."""
    parser = cli.parser("python -m ich_keras.export", __doc__)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by python -m ich_keras.fit")
    parser.add_argument("--weights", help="a .weights.h5 (path, or relative to RUN_DIR); "
                        "default: best checkpoint by val accuracy, ties to the lower val loss")
    parser.add_argument("--format", required=True, choices=FORMATS,
                        help="savedmodel (a TensorFlow folder), tflite (LiteRT) or onnx (onnxruntime)")
    parser.add_argument("--output", required=True, help="output directory (savedmodel) or file (tflite, onnx)")
    parser.add_argument("--quantize", choices=QUANTIZE, default="none",
                        help="tflite only: dynamic-range int8 (default: none)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a previous export of this format at --output")
    args = parser.parse_args(argv)
    check_format(args.format, args.quantize)  # both before the model is built: fail fast
    check_output(args.output, args.format, args.overwrite, args.run_dir)
    compile_cache.enable()
    summaries.announce("export", args.run_dir, f"exporting {args.weights or 'the best checkpoint by val accuracy'} "
                       f"as {args.format} to {args.output}")
    model, weights, class_names = deployable_model(args.run_dir, args.weights)
    out = export_model(model, args.format, args.output, args.quantize, args.overwrite, args.run_dir, class_names)
    size = model.input_shape[1]
    names_in = {"savedmodel": f"{MARKER} inside it", "onnx": "its metadata (class_names)",
                "tflite": str(Path(args.run_dir) / "classes.json")}[args.format]
    print(f"Exported {weights} as {args.format} to {out}: uint8 (batch, {size}, {size}, 3) -> probabilities "
          f"(batch, {model.output_shape[-1]}); the class names, in that order, are in {names_in}")
    out = Path(out)
    print(summaries.outputs_summary(sorted(p for p in out.rglob("*") if p.is_file()) if out.is_dir() else [out]))
    return 0


if __name__ == "__main__":
    cli.run(main)
