"""How the command-line tools compile: JAX's persistent compilation cache, and XLA's backend at -O1.

XLA compiles every model function afresh in each process: 15-20 s before CoAtNet-0's first training step on a
2-core CPU, and as long again to build the model (its initializers). With the cache on disk a rerun of the same
model and shapes loads the executables instead (measured: first step 17.3 s -> 6.6 s, the rest being Keras tracing,
which no cache keeps; building 22.9 s -> 4.5 s at 224 px). On the CPU the commands also set two of XLA's options
(`set_cpu_flags`); both were measured on the CPU only, so a machine whose JAX has an accelerator's plugin keeps
XLA's defaults.
Library code never changes either by itself: only the `python -m ich_keras.*` commands call `enable`.
"""

from __future__ import annotations

import os
from pathlib import Path

# Set to a directory to move the cache, or to "off" to disable it.
ENV_VARIABLE = "ICH_KERAS_XLA_CACHE"
# LLVM's optimisation level for XLA's code (the CPU's and a GPU's alike), and the CPU's instruction scheduler; an
# option the user puts in XLA_FLAGS wins.
BACKEND_LEVEL_FLAG = "--xla_backend_optimization_level"
COMMANDS_BACKEND_LEVEL = 1
SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"


def cache_dir() -> Path | None:
    """Where the cache lives: $ICH_KERAS_XLA_CACHE, else $XDG_CACHE_HOME/ich_keras/xla (~/.cache by default)."""
    setting = os.environ.get(ENV_VARIABLE, "").strip()
    if setting.lower() == "off":
        return None
    if setting:
        return Path(setting).expanduser()
    # An empty XDG_CACHE_HOME counts as unset, as the XDG spec (and host_memory's block cache) have it.
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ich_keras" / "xla"


def cpu_only() -> bool:
    """Whether JAX will run on the CPU: JAX_PLATFORMS starts with "cpu", or, without it, no accelerator plugin
    (jax[cuda12]'s, a TPU's) is installed. Decided without starting JAX's backend, which would read XLA_FLAGS."""
    from importlib import metadata, util

    platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms.split(",")[0] == "cpu"
    return not metadata.entry_points(group="jax_plugins") and util.find_spec("libtpu") is None


def set_cpu_flags(backend_level: int = COMMANDS_BACKEND_LEVEL) -> None:
    """Puts the commands' CPU options in XLA_FLAGS, each unless XLA_FLAGS sets it already (benchmarks/README.md):

    - `--xla_backend_optimization_level=LEVEL` (1 by default): LLVM at -O1 compiles faster than XLA's -O2 and its
      code ran no slower (coatnet_0 at 64 px on a 2-core CPU, medians of three alternating rounds: building
      22.0 s -> 14.1 s, first step 37.7 s -> 33.7 s, later steps 0.55 s -> 0.48 s);
    - `--xla_cpu_enable_concurrency_optimized_scheduler=false`: XLA orders a step's instructions to keep few
      buffers alive rather than to run many at once: coatnet_0's training step at 224 px, batch 16 holds 2.4 GB of
      temporaries instead of 3.6 GB, at the same speed on two cores.

    XLA reads XLA_FLAGS once, when JAX starts its backend (the first computation), so this acts only before that.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    for flag, value in ((BACKEND_LEVEL_FLAG, backend_level), (SCHEDULER_FLAG, "false")):
        if flag not in flags:
            flags = f"{flags} {flag}={value}".strip()
    os.environ["XLA_FLAGS"] = flags


def enable() -> Path | None:
    """Sets up a command's compilation: on the CPU, the commands' XLA options (`set_cpu_flags`), and the persistent
    cache for every compilation. Returns the cache's directory (None when it is off)."""
    if cpu_only():
        set_cpu_flags()
    directory = cache_dir()
    if directory is None:
        return None
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    jax.config.update("jax_compilation_cache_dir", str(directory))
    # Small ones too (JAX's default keeps only those of 1 s or more): building a model runs each initializer's random
    # draw as its own compiled op, one per weight shape, each a fraction of a second to compile and far less to load.
    # Measured: building coatnet_0 at 224 px 22.9 s cold -> 4.5 s warm (benchmarks/README.md).
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    # JAX decides once per process, at its first compilation, whether a cache is in use; start that decision
    # afresh so the cache also takes effect in a process that compiled something before (a notebook, the tests).
    compilation_cache.reset_cache()
    return directory
