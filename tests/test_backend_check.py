"""`import ich_keras` after Keras was imported on another backend stops with an error that says what to do."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    environ.update(env, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=300)


def test_keras_imported_first_on_tensorflow_is_a_clear_error():
    done = _run("import keras, ich_keras", KERAS_BACKEND="tensorflow")
    assert done.returncode != 0
    assert "ImportError: ich_keras runs Keras on the JAX backend, but Keras runs on 'tensorflow'" in done.stderr
    assert "import ich_keras before keras" in done.stderr


def test_keras_imported_first_on_jax_is_fine():
    done = _run("import keras, ich_keras; print(keras.backend.backend())", KERAS_BACKEND="jax")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("jax")


def test_tensorflow_imported_first_is_named_as_what_imported_keras():
    # A notebook that starts with `import tensorflow as tf` never typed `import keras`: TensorFlow did.
    done = _run("import tensorflow, ich_keras", KERAS_BACKEND="tensorflow")
    assert done.returncode != 0
    assert "(keras, or TensorFlow, which imports it, was imported before ich_keras)" in done.stderr
    assert "import ich_keras before keras and tensorflow" in done.stderr


def test_keras_backend_set_to_another_is_named_with_what_to_set():
    done = _run("import ich_keras", KERAS_BACKEND="torch")
    assert done.returncode != 0
    assert "(KERAS_BACKEND=torch): set KERAS_BACKEND=jax, or unset it." in done.stderr
