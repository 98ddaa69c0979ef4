"""Test-session setup shared by every test module.

Import triton (pulled in by torch / timm on CUDA builds of torch) before anything imports TensorFlow: the other
order segfaults (`import tensorflow; import triton` dies in triton's libtriton.so, TF 2.21 + triton 3.8), and
keras-hub and tf.data import TensorFlow. pytest loads this file before it collects any test module, so a
TensorFlow-importing test file sorted before a timm one (test_augment.py < test_baselines.py) cannot crash the run.
"""

import contextlib
import os
import shutil
import tempfile

# Any test module that imports keras before ich_keras must still get the JAX backend.
os.environ.setdefault("KERAS_BACKEND", "jax")
# The commands' XLA cache goes to a directory of this session, not the user's: tests start cold and leave nothing.
# xdist's workers inherit the variable, so only the process that made the directory removes it (pytest_unconfigure).
SESSION_XLA_CACHE = None
if "ICH_KERAS_XLA_CACHE" not in os.environ:
    SESSION_XLA_CACHE = os.environ["ICH_KERAS_XLA_CACHE"] = tempfile.mkdtemp(prefix="ich_keras_xla_")

# CPU-only torch wheels and machines without torch have no triton: nothing to order then.
with contextlib.suppress(ImportError):
    import triton  # noqa: F401

import pytest  # noqa: E402  (after triton, see above)

from ich_keras import compile_cache  # noqa: E402  (imports JAX, not TensorFlow)

# Tests compile far more than they compute (a small model each, a few steps): XLA's LLVM backend at -O0 compiles
# faster and runs those steps slower, `pytest -m "not slow"` 6 min 19 s -> 4 min 47 s on two cores
# (benchmarks/README.md). Set before JAX starts its backend, with the commands' other CPU option; subprocesses
# inherit them, and the commands' `enable` keeps them. The parity tests hold at their usual tolerances.
compile_cache.set_cpu_flags(backend_level=0)

# From the first test on, compilations of the same shapes are shared through the session's cache directory: tests
# build many models of the same architecture, and each new model object would otherwise compile afresh.
compile_cache.enable()
from image_folder import AHE64, ODD_FORMATS, make_image_folder  # noqa: E402
from predict_fixtures import train_shared_run  # noqa: E402


# Test files of several minutes each (subprocess pipelines). The workers take files in collection order
# (`--no-loadscope-reorder`), so these start first and overlap the many short files instead of forming the tail.
LONGEST_FILES = ("test_distributed.py", "test_real_path.py", "test_gpu_check.py")


def pytest_unconfigure(config):
    """Removes the session's XLA cache (runs after xdist's workers have finished)."""
    if SESSION_XLA_CACHE:
        shutil.rmtree(SESSION_XLA_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """Runs the longest files first; skips the tests marked `data` when ../shared/data/ahe64 is not beside the repo
    (a bare clone)."""
    items.sort(key=lambda item: item.path.name not in LONGEST_FILES)  # stable: otherwise the collection order
    if AHE64.is_dir():
        return
    skip = pytest.mark.skip(reason=f"needs AHE64 at {AHE64}, which is not beside the repo")
    for item in items:
        if "data" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """A generated ImageFolder: 3 classes (class_0..2), 8 images per class in train/ and test/, 64 px, in every
    format of ODD_FORMATS in turn. Read-only: tests that change files copy it first."""
    return make_image_folder(tmp_path_factory.mktemp("images"), classes=3, per_class=8, formats=ODD_FORMATS)


@pytest.fixture
def tiny_config(tmp_path):
    """A TOML config for coatnet_tiny at 32 px, 1 epoch, batch 4, one kept checkpoint, on a generated folder (the
    sweep tests, and analyze's of a sweep)."""
    source = make_image_folder(tmp_path / "images", classes=2, per_class=8, size=32)
    path = tmp_path / "tiny.toml"
    path.write_text(f"""
[data]
source = "{source.as_posix()}"
image_size = 32
val_fraction = 0.25

[model]
name = "coatnet_tiny"

[train]
epochs = 1
batch_size = 4
learning_rate = 3e-3

[checkpoint]
keep = [{{ metric = "loss", mode = "min", k = 1 }}]

[log]
verbose = 0
""")
    return path


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, image_folder):
    """One tiny trained run shared by the predict, export and analyze tests (see predict_fixtures). Read-only except
    for the analyze tests' `analysis/` folder."""
    return train_shared_run(tmp_path_factory.mktemp("shared_run") / "run", image_folder)
