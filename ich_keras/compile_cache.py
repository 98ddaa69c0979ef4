"""JAX's persistent compilation cache for the command-line tools.

XLA compiles every model function afresh in each process: 15-20 s before CoAtNet-0's first training step on a
2-core CPU, and as long again to build the model (its initializers). With the cache on disk a rerun of the same
model and shapes loads the executables instead (measured: first step 17.3 s -> 6.6 s, the rest being Keras tracing,
which no cache keeps; building 23.7 s -> 4.4 s at 224 px; see benchmarks/README.md).
Library code never turns it on by itself: only the `python -m ich_keras.*` commands call `enable`.
"""

from __future__ import annotations

import os
from pathlib import Path

# Set to a directory to move the cache, or to "off" to disable it.
ENV_VARIABLE = "ICH_KERAS_XLA_CACHE"


def cache_dir() -> Path | None:
    """Where the cache lives: $ICH_KERAS_XLA_CACHE, else $XDG_CACHE_HOME/ich_keras/xla (~/.cache by default)."""
    setting = os.environ.get(ENV_VARIABLE, "")
    if setting.lower() == "off":
        return None
    if setting:
        return Path(setting).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ich_keras" / "xla"


def enable() -> Path | None:
    """Turns the persistent cache on for this process (every compilation); returns its directory."""
    directory = cache_dir()
    if directory is None:
        return None
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    jax.config.update("jax_compilation_cache_dir", str(directory))
    # Small ones too (JAX's default keeps only those of 1 s or more): building a model runs each initializer's random
    # draw as its own compiled op, ~0.2 s apiece and 90 of them for CoAtNet-0, while a lookup takes milliseconds.
    # Measured: building coatnet_0 at 224 px 23.7 s cold -> 4.4 s warm (benchmarks/README.md).
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    # JAX decides once per process, at its first compilation, whether a cache is in use; start that decision
    # afresh so the cache also takes effect in a process that compiled something before (a notebook, the tests).
    compilation_cache.reset_cache()
    return directory
