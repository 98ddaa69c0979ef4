"""Test-session setup shared by every test module.

Import triton (pulled in by torch / timm on CUDA builds of torch) before anything imports TensorFlow: the other
order segfaults (`import tensorflow; import triton` dies in triton's libtriton.so, TF 2.21 + triton 3.8), and
keras-hub and tf.data import TensorFlow. pytest loads this file before it collects any test module, so a
TensorFlow-importing test file sorted before a timm one (test_augment.py < test_baselines.py) cannot crash the run.
"""

import contextlib
import os
import tempfile

# Any test module that imports keras before ich_keras must still get the JAX backend.
os.environ.setdefault("KERAS_BACKEND", "jax")
# The commands' XLA cache goes to a directory of this session, not the user's: tests start cold and leave nothing.
os.environ.setdefault("ICH_KERAS_XLA_CACHE", tempfile.mkdtemp(prefix="ich_keras_xla_"))

# CPU-only torch wheels and machines without torch have no triton: nothing to order then.
with contextlib.suppress(ImportError):
    import triton  # noqa: F401
