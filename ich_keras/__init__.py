"""ich_keras: image classification with model soups, in Keras 3 on JAX."""

import os
import sys

# `python -m ich_keras.<verb>` runs itself again with huge pages and the block cache for its host memory, where
# they are to be had; first, before anything is imported that a restart would import twice. Not
# `python -m ich_keras.host_memory`, which prints those settings instead: imported here first, it would make Python
# warn that the module was imported before it ran.
if "ich_keras.host_memory" not in getattr(sys, "orig_argv", ()):
    from ich_keras import host_memory

    host_memory.restart_command()
    if host_memory.command_argv(getattr(sys, "orig_argv", [])) is not None:
        # Ctrl-C or SIGTERM while the command imports Keras, JAX and TensorFlow (seconds): one line, not the
        # import's traceback, and SIGTERM stops it as Ctrl-C does.
        from ich_keras import cli

        cli.stop_on_signals()

# Keras reads its backend once, at first import; JAX is the backend this toolkit is written and tested for.
os.environ.setdefault("KERAS_BACKEND", "jax")


def _check_backend() -> None:
    """Stops at import where Keras runs on another backend: `import keras` before `import ich_keras` (Keras then
    reads ~/.keras/keras.json, TensorFlow by default) or KERAS_BACKEND set to another one. Loading weights would
    otherwise fail deep inside Keras (`'NoneType' object has no attribute 'assign'`)."""
    keras = sys.modules.get("keras")
    imported = keras is not None and hasattr(keras, "backend")
    backend = keras.backend.backend() if imported else os.environ["KERAS_BACKEND"]
    if backend != "jax":
        if imported:  # `import tensorflow` imports keras too: a notebook that never typed `import keras` did so
            why = "keras, or TensorFlow, which imports it, was imported before ich_keras"
            advice = "import ich_keras before keras and tensorflow, or set KERAS_BACKEND=jax before Python starts"
        else:
            why, advice = f"KERAS_BACKEND={backend}", "set KERAS_BACKEND=jax, or unset it"
        raise ImportError(f"ich_keras runs Keras on the JAX backend, but Keras runs on {backend!r} here ({why}): "
                          f"{advice}.")


_check_backend()

# TensorFlow only feeds tf.data here; its C++ start-up notices (oneDNN, CUDA probing) are noise. Errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Some of those lines bypass TF_CPP_MIN_LOG_LEVEL (absl logs them before anything configures it): the first
# `import tensorflow`, whoever makes it, filters them out and hides the GPUs from TensorFlow (see _quiet_tf).
from ich_keras import _quiet_tf  # noqa: E402  (after the environment above)

_quiet_tf.install()

__version__ = "0.1.0"


# The packages a notebook reaches as `ich_keras.<name>` after `import ich_keras` alone.
_PACKAGES = ("analysis", "convert", "models", "soups")


def __getattr__(name):
    # Imported on first use: `import ich_keras` stays free of keras and TensorFlow (seconds).
    if name == "load":
        from ich_keras.inference import load

        return load
    if name in _PACKAGES:
        import importlib

        return importlib.import_module(f"ich_keras.{name}")
    raise AttributeError(f"module 'ich_keras' has no attribute {name!r}")
