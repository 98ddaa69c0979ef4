"""Quiet start: no TensorFlow / absl / CUDA lines before a command's own output, and `--help` of every command.

Each command's `--help` runs in one fresh interpreter (as `python -m` does, through `runpy`), which then imports
TensorFlow and queries its devices the way tf.data does: on this CPU machine, without the filter of
`ich_keras._quiet_tf`, TensorFlow prints "I0000 ... cudart_stub.cc" twice and "E0000 ... failed call to cuInit".
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ich_keras import _quiet_tf

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("fit", "soup", "analyze", "predict", "export", "convert", "models")
START_UP_NOISE = ("I0000", "W0000", "E0000", "absl::InitializeLog", "cuInit", "oneDNN", "cuda", "CUDA")


def _python(code: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "ICH_KERAS_DEBUG")}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**environment, **(env or {})})


HELP_OF_EVERY_COMMAND = """
    import runpy, sys
    for command in sys.argv[1:]:
        sys.argv = [command, "--help"]
        try:
            runpy.run_module(f"ich_keras.{command}", run_name="__main__", alter_sys=True)
        except SystemExit as exit:
            print(f"== {command} exit {exit.code}", flush=True)
    import tensorflow as tf
    tf.constant(1)  # the first device query: where TensorFlow probes CUDA
    print("== tensorflow", tf.config.get_visible_devices("GPU"), flush=True)
"""


@pytest.fixture(scope="module")
def help_run():
    return _python(HELP_OF_EVERY_COMMAND, *COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_prints_usage_and_exits_0(help_run, command):
    assert f"== {command} exit 0" in help_run.stdout, help_run.stderr[-2000:]
    section = help_run.stdout.split(f"== {command} exit")[0].rsplit("== ", 1)[-1]
    assert f"usage: python -m ich_keras.{command}" in section


def test_no_start_up_lines_on_stderr(help_run):
    # TensorFlow was imported and queried (a GPU it saw would also be hidden from it: JAX owns the accelerator).
    assert "== tensorflow []" in help_run.stdout
    noisy = [line for line in help_run.stderr.splitlines() if any(word in line for word in START_UP_NOISE)]
    assert noisy == [], noisy


def test_soup_help_lists_its_sub_commands(help_run):
    section = help_run.stdout.split("== soup exit")[0].rsplit("== ", 1)[-1]
    assert all(name in section for name in ("cook", "evaluate", "monosoup"))


def test_user_mistake_through_python_m_is_two_lines_and_exit_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ich_keras.analyze", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 2
    assert result.stderr.startswith("error: Not a run directory") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 2


def test_converter_shim_runs_the_module(tmp_path):
    result = subprocess.run([sys.executable, "tools/convert_timm.py", "--model", "x", "--checkpoint", "c.pth",
                             "--output", str(tmp_path / "x.h5")], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 2 and "--output must end in .weights.h5" in result.stderr


def test_filter_keeps_other_errors():
    text = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
            "I0000 00:00:1796019963.345242   10601 cudart_stub.cc:31] Could not find cuda drivers on your machine\n"
            "E0000 00:00:1796019984.031826   10601 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n"
            "E0000 00:00:1796019984.1   10601 some_op.cc:1] a real error\n"
            "Traceback (most recent call last):\n")
    assert _quiet_tf.filtered(text) == "E0000 00:00:1796019984.1   10601 some_op.cc:1] a real error\n" \
                                       "Traceback (most recent call last):\n"


def test_a_probe_for_tensorflow_before_its_import_leaves_it_quiet():
    # JAX's compilation cache asks importlib.util.find_spec("tensorflow") (through etils) before anything imports
    # it, e.g. in `soup check A --run RUN`; the import that follows must still be quiet.
    code = """
        import importlib.util
        import ich_keras
        assert importlib.util.find_spec("tensorflow") is not None
        import tensorflow as tf
        tf.constant(1)
        print("imported")
    """
    result = _python(code)
    assert result.stdout.strip() == "imported", result.stderr[-2000:]
    noisy = [line for line in result.stderr.splitlines() if any(word in line for word in START_UP_NOISE)]
    assert noisy == [], noisy


def test_filter_is_off_with_debug():
    code = """
        import sys
        from ich_keras import _quiet_tf
        print(any(isinstance(finder, _quiet_tf._Finder) for finder in sys.meta_path))
    """
    assert _python(code).stdout.strip() == "True"
    assert _python(code, env={"ICH_KERAS_DEBUG": "1"}).stdout.strip() == "False"


def test_small_coatnet_forward_warns_nothing():
    # At 32 px CoAtNet's last stage is a 1x1 map; Keras warned "softmax over axis -1 ... has size 1" before any
    # command output. Attention over one token is weight 1, with or without the softmax.
    import warnings

    import numpy as np

    from ich_keras import models

    model = models.build("coatnet_tiny", 3, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        logits = model(np.zeros((2, 32, 32, 3), np.float32))
    assert logits.shape == (2, 3) and np.isfinite(np.asarray(logits)).all()


def test_a_coatnet_from_a_file_of_another_size_imports_neither_keras_hub_nor_tensorflow(tmp_path):
    # keras-hub (the baselines) imports TensorFlow, ~2 s of every process that builds a model; a CoAtNet started
    # from a 1000-class file at another image size (fit's init, convert's output) needs neither.
    code = """
        import sys
        from ich_keras import init_weights, models

        models.build("coatnet_tiny", 1000, 64).save_weights(sys.argv[1])
        model = init_weights.build_with_weights(lambda: models.build("coatnet_tiny", 10, 96), sys.argv[1])
        print(model.output_shape, sorted(name for name in ("keras_hub", "tensorflow") if name in sys.modules))
    """
    result = _python(code, str(tmp_path / "w0.weights.h5"))
    assert result.stdout.strip().splitlines()[-1] == "(None, 10) []", result.stderr[-2000:]
