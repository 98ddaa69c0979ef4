"""ich_keras: image classification with model soups, in Keras 3 on JAX."""

import os

# Keras reads its backend once, at first import; JAX is the backend this toolkit is written and tested for.
os.environ.setdefault("KERAS_BACKEND", "jax")

__version__ = "0.1.0"
