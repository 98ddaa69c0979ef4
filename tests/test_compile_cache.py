"""The commands' persistent XLA cache: where it lives, how to turn it off, and that compilations land in it."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ich_keras import compile_cache


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(compile_cache.ENV_VARIABLE, str(tmp_path / "xla"))
    assert compile_cache.cache_dir() == tmp_path / "xla"
    monkeypatch.setenv(compile_cache.ENV_VARIABLE, "off")
    assert compile_cache.cache_dir() is None and compile_cache.enable() is None
    monkeypatch.delenv(compile_cache.ENV_VARIABLE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert compile_cache.cache_dir() == tmp_path / "cache" / "ich_keras" / "xla"


def test_enabled_cache_stores_compiled_functions(monkeypatch, tmp_path):
    monkeypatch.setenv(compile_cache.ENV_VARIABLE, str(tmp_path / "xla"))
    before = {name: jax.config.values[name] for name in
              ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")}
    try:
        assert compile_cache.enable() == tmp_path / "xla"
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # cache even this small function
        # A shape no other test compiles, so this is a fresh compilation that must be written.
        f = jax.jit(lambda x: jnp.tanh(x) * 3 + 1)
        np.testing.assert_allclose(f(jnp.ones((7, 13))), np.tanh(1) * 3 + 1, rtol=1e-6)
        assert any(Path(tmp_path / "xla").iterdir())
    finally:
        for name, value in before.items():
            jax.config.update(name, value)
