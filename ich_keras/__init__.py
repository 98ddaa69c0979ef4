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

# Keras reads its backend once, at first import; JAX is the backend this toolkit is written and tested for.
os.environ.setdefault("KERAS_BACKEND", "jax")
# TensorFlow only feeds tf.data here; its C++ start-up notices (oneDNN, CUDA probing) are noise. Errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Some of those lines bypass TF_CPP_MIN_LOG_LEVEL (absl logs them before anything configures it): the first
# `import tensorflow`, whoever makes it, filters them out and hides the GPUs from TensorFlow (see _quiet_tf).
from ich_keras import _quiet_tf  # noqa: E402  (after the environment above)

_quiet_tf.install()

__version__ = "0.1.0"


def __getattr__(name):
    # `ich_keras.load` is imported on first use: `import ich_keras` stays free of keras and TensorFlow (seconds).
    if name == "load":
        from ich_keras.inference import load

        return load
    raise AttributeError(f"module 'ich_keras' has no attribute {name!r}")
