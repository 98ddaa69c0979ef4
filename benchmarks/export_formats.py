"""Deployment formats on CPU: file size, load time and images/s per format, and soft voting of N ingredients vs one
soup, for a run's model on real AHE64 test photos.

    python benchmarks/export_formats.py --run runs/ahe64_cpu --workdir /tmp/export_bench      # writes the table
    python benchmarks/export_formats.py --run runs/ahe64_cpu --workdir /tmp/export_bench --images 64 --repeats 1

Exports the run's uniform soup (RUN_DIR/soups/uniform/soup.weights.h5; `--weights` for another) with
`ich_keras.export` to SavedModel, TFLite (float32 and dynamic-range int8) and ONNX, then measures each in a fresh
subprocess, so no runtime shares caches or threads with another:
    size       bytes on disk (the SavedModel directory in total; Keras: the .weights.h5 file)
    load       seconds from nothing loaded (runtime imported) to a model ready to run, first call excluded
    first      seconds of the first batch (compilation / allocation)
    images/s   steady state over `--images` photos in batches of `--batch-size`, best of `--repeats` passes
    accuracy   top-1 on those photos
    max |dp|   largest probability difference from the Keras soup on the same uint8 images
Keras is the JAX model (`ich_keras.load`) fed the same uint8 images through the folded preprocessing. "Soft voting"
runs the N ingredients the soup was cooked from (Keras) and averages their probabilities: N times the size, load and
compute of one soup, which costs one model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FORMATS = {  # name: (export format, file name, quantize)
    "savedmodel": ("savedmodel", "saved_model", "none"),
    "tflite": ("tflite", "model.tflite", "none"),
    "tflite_int8w": ("tflite", "model_dynamic.tflite", "dynamic"),
    "onnx": ("onnx", "model.onnx", "none"),
}


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def keras_runner(run_dir: str, weights: list[str]):
    """A function uint8 images -> mean probabilities of the given weights (one: the soup; N: soft voting)."""
    from ich_keras import export

    models = [export.deployable_model(run_dir, w)[0] for w in weights]

    def predict(images):
        return np.mean([np.asarray(m.predict_on_batch(images)) for m in models], axis=0)

    return predict


def measure(spec: dict) -> dict:
    """Runs in the subprocess: load, first batch, steady-state throughput, probabilities for the comparison."""
    images = np.load(spec["images"])
    batch = spec["batch_size"]
    # Import each runtime before the clock starts: load time is the model's, not the Python packages'.
    if spec["kind"] == "keras":
        from ich_keras import export, models  # noqa: F401  (keras, JAX, keras-hub, TensorFlow)
    elif spec["format"] == "onnx":
        import onnxruntime  # noqa: F401
    else:
        import tensorflow  # noqa: F401
    start = time.perf_counter()
    if spec["kind"] == "keras":
        predict = keras_runner(spec["run"], spec["weights"])
    else:
        from ich_keras import export

        predict = export.load_exported(spec["path"], spec["format"])
    load = time.perf_counter() - start
    batches = [images[i:i + batch] for i in range(0, len(images) - batch + 1, batch)]  # full batches only
    start = time.perf_counter()
    predict(batches[0])
    first = time.perf_counter() - start
    best = float("inf")
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        outputs = [predict(b) for b in batches]
        best = min(best, time.perf_counter() - start)
    probabilities = np.concatenate(outputs)
    np.save(spec["probabilities"], probabilities)
    return {"load_s": load, "first_s": first, "images_per_s": len(probabilities) / best}


def in_subprocess(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--measure", json.dumps(spec)], capture_output=True, text=True,
                         check=False, cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if out.returncode:
        raise RuntimeError(f"Measuring {spec['name']} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_images(run_dir: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` photos of the run's test split drawn at random (seed 0), decoded and resized by the evaluation
    pipeline (uint8), and their labels. The split is sorted by class: its first photos would be a class or two."""
    from ich_keras import pipeline
    from ich_keras.rundir import load_run

    run = load_run(run_dir)
    examples = run.splits.splits["test"]
    drawn = np.random.default_rng(0).permutation(len(examples))[:count]
    examples = examples.subset(np.sort(drawn))
    images = [im.numpy() for im, _ in pipeline.decoded_dataset(run.config.data.source, examples, run.image_size)]
    return np.stack(images), examples.labels


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="run directory with a soup")
    parser.add_argument("--weights", default="soups/uniform/soup.weights.h5", help="soup, relative to RUN_DIR")
    parser.add_argument("--workdir", help="exports and measurements go here")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one measurement, in a subprocess
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(json.loads(args.measure))))
        return
    if not (args.run and args.workdir):
        parser.error("--run and --workdir are required")

    from ich_keras import export

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(args.run)
    soup = run_dir / args.weights
    if not (soup.parent / "results.json").is_file():
        parser.error(f"no soup at {soup} (its results.json names the ingredients): cook it first, e.g. "
                     f"python -m ich_keras.soup {run_dir} --uniform")
    results_json = json.loads((soup.parent / "results.json").read_text())
    # Stored relative to the run directory (absolute when outside it): `run_dir / path` gives either.
    ingredients = [str(run_dir / entry["path"]) for entry in results_json["ingredients"]]
    images, labels = test_images(str(run_dir), args.images)
    np.save(workdir / "images.npy", images)

    model, _, _ = export.deployable_model(run_dir, soup)
    common = {"images": str(workdir / "images.npy"), "batch_size": args.batch_size, "repeats": args.repeats,
              "run": str(run_dir)}
    specs = [{**common, "name": "keras (JAX)", "kind": "keras", "weights": [str(soup)], "size": soup.stat().st_size},
             {**common, "name": f"soft voting, {len(ingredients)} ingredients (Keras)", "kind": "keras",
              "weights": ingredients, "size": sum(Path(p).stat().st_size for p in ingredients)}]
    for name, (fmt, file, quantize) in FORMATS.items():
        start = time.perf_counter()
        path = export.export_model(model, fmt, workdir / file, quantize, overwrite=True)  # a rerun's exports
        print(f"exported {name} in {time.perf_counter() - start:.1f} s")
        specs.insert(-1, {**common, "name": name, "kind": "export", "format": fmt, "path": str(path),
                          "size": size_of(path)})

    rows = []
    reference = None
    for spec in specs:
        spec["probabilities"] = str(workdir / f"probs_{len(rows)}.npy")
        result = in_subprocess(spec)
        probabilities = np.load(spec["probabilities"])
        if reference is None:
            reference = probabilities
        voting = len(spec.get("weights", [])) > 1  # another model: its difference from the soup is no error
        result.update(name=spec["name"], size_mb=spec["size"] / 1e6,
                      max_diff=None if voting else float(np.abs(probabilities - reference).max()),
                      accuracy=float((probabilities.argmax(-1) == labels[:len(probabilities)]).mean()))
        rows.append(result)
        print(f"{spec['name']}: {result}")

    header = (f"Run {run_dir} ({model.input_shape[1]} px, {model.output_shape[-1]} classes), "
              f"{len(reference)} AHE64 test photos, batch {args.batch_size}, best of {args.repeats}, "
              f"{os.cpu_count()} CPU cores.")
    lines = [header, "",
             "| Format | Size (MB) | Load (s) | First batch (s) | Images/s | Accuracy | max abs Δp vs Keras |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['name']} | {r['size_mb']:.2f} | {r['load_s']:.2f} | {r['first_s']:.2f} | "
              f"{r['images_per_s']:.0f} | {100 * r['accuracy']:.2f} | "
              f"{'—' if r['max_diff'] is None else format(r['max_diff'], '.1e')} |" for r in rows]
    table = "\n".join(lines)
    (workdir / "export_formats.md").write_text(table + "\n")
    (workdir / "export_formats.json").write_text(json.dumps(rows, indent=2))
    print("\n" + table)


if __name__ == "__main__":
    main()
