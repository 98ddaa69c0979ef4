"""`import ich_keras` after Keras was imported on another backend stops with an error that says what to do."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    environ.update(env, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=300)


def test_keras_imported_first_on_jax_is_fine():
    done = _run("import keras, ich_keras; print(keras.backend.backend())", KERAS_BACKEND="jax")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("jax")


@pytest.mark.parametrize(("code", "backend", "says"), [
    ("import keras, ich_keras", "tensorflow",
     "(keras, or TensorFlow, which imports it, was imported before ich_keras): import ich_keras before keras"),
    # A notebook that starts with `import tensorflow as tf` never typed `import keras`: TensorFlow did.
    ("import tensorflow, ich_keras", "tensorflow", "import ich_keras before keras and tensorflow"),
    ("import ich_keras", "torch", "(KERAS_BACKEND=torch): set KERAS_BACKEND=jax, or unset it."),
])
def test_another_backend_is_a_clear_error_saying_what_to_do(code, backend, says):
    done = _run(code, KERAS_BACKEND=backend)
    assert done.returncode != 0
    assert f"ImportError: ich_keras runs Keras on the JAX backend, but Keras runs on {backend!r}" in done.stderr
    assert says in done.stderr
