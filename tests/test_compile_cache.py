"""The commands' persistent XLA cache: where it lives, how to turn it off, and that compilations land in it."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ich_keras import compile_cache


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(compile_cache.ENV_VARIABLE, str(tmp_path / "xla"))
    assert compile_cache.cache_dir() == tmp_path / "xla"
    monkeypatch.setenv(compile_cache.ENV_VARIABLE, " Off ")
    assert compile_cache.cache_dir() is None and compile_cache.enable() is None
    monkeypatch.delenv(compile_cache.ENV_VARIABLE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert compile_cache.cache_dir() == tmp_path / "cache" / "ich_keras" / "xla"
    monkeypatch.setenv("XDG_CACHE_HOME", "")  # unset, not the working directory
    assert compile_cache.cache_dir() == Path.home() / ".cache" / "ich_keras" / "xla"


def test_backend_level_is_lowered_on_the_cpu_only(monkeypatch):
    monkeypatch.setenv(compile_cache.ENV_VARIABLE, "off")
    for platforms, lowered in (("cpu", True), ("cuda", False), ("tpu,cpu", False)):
        monkeypatch.setenv("JAX_PLATFORMS", platforms)
        monkeypatch.setenv("XLA_FLAGS", "")
        compile_cache.enable()
        assert (compile_cache.BACKEND_LEVEL_FLAG in os.environ["XLA_FLAGS"]) == lowered, platforms
    monkeypatch.delenv("JAX_PLATFORMS")  # then by the plugins installed
    import jax

    assert compile_cache.cpu_only() == (jax.default_backend() == "cpu")


def test_enabled_cache_stores_compiled_functions(tmp_path):
    # A fresh process, as a command is. It first runs with the cache in `first` (as the test session's commands
    # do), then moves it to `second`: JAX binds its cache to a directory at the first compilation, so `enable`
    # must make it start afresh. The function is tiny: `enable` caches every compilation, not only JAX's >= 1 s.
    script = textwrap.dedent("""
        import os, sys
        import jax, jax.numpy as jnp
        from ich_keras import compile_cache
        for directory in sys.argv[1:]:
            os.environ[compile_cache.ENV_VARIABLE] = directory
            print(compile_cache.enable())
            print(float(jax.jit(lambda x: jnp.tanh(x) * 3 + len(directory))(jnp.ones((7, 13))).sum()))
    """)
    first, second = tmp_path / "first", tmp_path / "second"
    out = subprocess.run([sys.executable, "-c", script, str(first), str(second)], capture_output=True, text=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"}, check=True).stdout.split()
    assert out[0::2] == [str(first), str(second)]
    for directory, total in zip((first, second), out[1::2]):
        np.testing.assert_allclose(float(total), 91 * (np.tanh(1) * 3 + len(str(directory))), rtol=1e-5)
        assert any(directory.iterdir()), f"nothing was written to {directory}"


def test_commands_set_their_cpu_options_unless_xla_flags_sets_them(monkeypatch):
    commands = "--xla_backend_optimization_level=1 --xla_cpu_enable_concurrency_optimized_scheduler=false"
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/nowhere")
    compile_cache.set_cpu_flags()
    assert os.environ["XLA_FLAGS"] == f"--xla_dump_to=/nowhere {commands}"
    monkeypatch.delenv("XLA_FLAGS")
    compile_cache.set_cpu_flags()
    assert os.environ["XLA_FLAGS"] == commands
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_concurrency_optimized_scheduler=true "
                                    "--xla_backend_optimization_level=3")
    compile_cache.set_cpu_flags()
    assert os.environ["XLA_FLAGS"] == ("--xla_cpu_enable_concurrency_optimized_scheduler=true "
                                       "--xla_backend_optimization_level=3")


@pytest.mark.slow  # two processes, each building and compiling a model
def test_the_commands_scheduler_keeps_fewer_temporaries():
    # Two fresh processes (XLA reads XLA_FLAGS once): the commands' options, and the same with XLA's default
    # scheduler put back by the user. The scheduler is a debug option XLA may rename; this fails where it no longer
    # acts (or XLA refuses it as unknown).
    script = textwrap.dedent("""
        import jax, numpy as np
        from ich_keras import compile_cache, models
        compile_cache.set_cpu_flags(backend_level=0)
        model = models.build("coatnet_tiny", 10, 32)
        weights = [[v.value for v in variables] for variables in (model.trainable_variables,
                                                                  model.non_trainable_variables)]
        def loss(trainable, frozen, images):
            return model.stateless_call(trainable, frozen, images, training=True)[0].sum()
        step = jax.jit(jax.grad(loss)).lower(*weights, np.zeros((4, 32, 32, 3), "float32")).compile()
        print(step.memory_analysis().temp_size_in_bytes)
    """)
    runs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags})
            for flags in ("", f"{compile_cache.SCHEDULER_FLAG}=true")]
    outputs = [run.communicate()[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0]
    commands, concurrent = (int(output.split()[-1]) for output in outputs)
    assert commands < 0.8 * concurrent, (commands, concurrent)  # measured: 1.66 MB against 2.56 MB
