"""A quiet TensorFlow import: its start-up log lines are noise here, where TensorFlow only feeds tf.data.

TensorFlow's C++ code logs through absl before anything can configure absl, so TF_CPP_MIN_LOG_LEVEL does not stop
"I0000 ... cudart_stub.cc ... Could not find cuda drivers" (twice, at import) nor "E0000 ... cuda_platform.cc ...
failed call to cuInit" (at the first device query) on a machine without a GPU. `install()` wraps the first
`import tensorflow`, by whichever module it comes (ours, keras, keras-hub's tensorflow-text), so that

- stderr (file descriptor 2, where C++ writes) is captured during the import and the device set-up, and replayed
  without the lines that match `NOISE`: any other line, an error included, still shows;
- TensorFlow sees no GPU: tf.data runs on the CPU anyway, and a TensorFlow that initialises a GPU reserves most of
  its memory, which JAX (the Keras backend) needs.

With ICH_KERAS_DEBUG=1 nothing is filtered.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile

from ich_keras.cli import debug_env

# absl/TensorFlow start-up lines: the pre-init notice, any INFO or WARNING line ("I0000 12:34:56.789 ..."), and the
# CUDA probing errors of a machine without a GPU (or with JAX and TensorFlow registering the same CUDA factories).
NOISE = re.compile(
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|^INFO: Created TensorFlow Lite XNNPACK delegate for CPU"  # the TFLite interpreter's first run
    r"|^[IW]\d{4} "
    r"|^E\d{4} .*(failed call to cuInit|Unable to register cu(DNN|FFT|BLAS) factory|computation placer already)"
)


def filtered(text: str) -> str:
    """`text` without the lines that match `NOISE`."""
    return "".join(line for line in text.splitlines(keepends=True) if not NOISE.search(line))


@contextlib.contextmanager
def quiet_stderr():
    """Captures file descriptor 2 (C++ and Python writes alike) and replays it without the `NOISE` lines."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            sys.stderr.write(filtered(capture.read().decode(errors="replace")))
            sys.stderr.flush()


@contextlib.contextmanager
def absl_warnings_off():
    """Python-side absl warnings off for a block (TensorFlow logs them through the standard "absl" logger), e.g.
    "Importing a function ... with ops with unsaved custom gradients" when a SavedModel for inference is loaded."""
    logger = logging.getLogger("absl")
    previous = logger.level
    if not debug_env():
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


class _QuietLoader(importlib.abc.Loader):
    """Runs the real loader of `tensorflow` inside `quiet_stderr`, then hides the GPUs from TensorFlow."""

    def __init__(self, loader, finder):
        self.loader = loader
        self.finder = finder

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        if self.finder in sys.meta_path:  # the import is under way: the finder's work is done
            sys.meta_path.remove(self.finder)
        module.__loader__ = module.__spec__.loader = self.loader
        with quiet_stderr():
            self.loader.exec_module(module)
            with contextlib.suppress(RuntimeError):  # devices already initialised: too late to hide them
                module.config.set_visible_devices([], "GPU")


class _Finder(importlib.abc.MetaPathFinder):
    """Hands the first `import tensorflow` to `_QuietLoader`, which removes the finder once that import runs. A probe
    that only looks for TensorFlow (`importlib.util.find_spec`, as JAX's compilation cache does through etils) gets
    the same spec and leaves the finder in place for the real import."""

    def __init__(self):
        self._looking = False

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow" or self._looking:
            return None
        self._looking = True  # importlib.util.find_spec below asks the meta path again, this finder included
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self._looking = False
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader, self)
        return spec


def install() -> None:
    """Makes the first `import tensorflow` of this process quiet (see the module docstring); no-op if too late."""
    if "tensorflow" in sys.modules or debug_env() or any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _Finder())
