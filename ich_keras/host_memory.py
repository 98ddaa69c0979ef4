"""Host memory for the commands: memory a step frees stays in the process, for the next step to reuse.

XLA's CPU backend allocates a step's temporaries afresh at every run, gigabytes for CoAtNet at 224 px, and glibc's
malloc returns blocks that large to the kernel when they are freed (mmap / munmap, trimming): each step then
faults every page in again and the kernel zeroes it. coatnet_0's forward + backward at 224 px, batch 16 took about
a million page faults and ~2.8 s of system time a step on a 2-core CPU (`benchmarks/host_memory.py`). With mmap
off, trimming off and one arena, the freed pages stay mapped and are reused: no faults after the first step.
The price is that the process keeps its peak memory until it exits, as a framework's caching allocator does.

Only the `python -m ich_keras.*` commands call `keep_freed` (through `cli.run`); importing the library changes
nothing. `ICH_KERAS_HOST_MEMORY=auto|keep|release` chooses: "auto" keeps freed memory unless JAX can use an
accelerator (the steps' temporaries then live on the device), "release" is glibc's default behaviour.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import pkgutil
import sys

from ich_keras.errors import UserError

ENV_VARIABLE = "ICH_KERAS_HOST_MEMORY"
SETTINGS = ("auto", "keep", "release")
# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8


def keep_freed() -> bool:
    """Makes glibc's malloc keep freed memory for reuse (see the module docstring), as $ICH_KERAS_HOST_MEMORY says.

    Call it before JAX starts its backend: the arena limit applies to threads that allocate for the first time
    afterwards. Returns whether the setting took effect (False with "release", under "auto" with an accelerator,
    and where the C library is not glibc).
    """
    setting = os.environ.get(ENV_VARIABLE, "auto").strip().lower() or "auto"
    if setting not in SETTINGS:
        raise UserError(f"{ENV_VARIABLE} must be one of {', '.join(SETTINGS)}. "
                        f"Received: {ENV_VARIABLE}={os.environ[ENV_VARIABLE]!r}")
    if setting == "release" or (setting == "auto" and accelerator_available()):
        return False
    libc = _glibc()
    if libc is None:
        return False
    # No mmap'd blocks (munmap'd when freed), never trim the heap's top (-1 is SIZE_MAX to glibc), and one arena:
    # a thread's own arena lives in 64 MB heaps that are unmapped whole once empty.
    settings = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1), (M_ARENA_MAX, 1))
    return all(libc.mallopt(parameter, value) == 1 for parameter, value in settings)


def accelerator_available() -> bool:
    """Whether JAX may run on something other than the CPU, judged without starting a backend: JAX_PLATFORMS if
    set, else whether a PJRT plugin (CUDA, ROCm) or libtpu is installed."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return any(platform.strip() not in ("", "cpu") for platform in platforms.split(","))
    if importlib.util.find_spec("libtpu") is not None:
        return True
    plugins = importlib.util.find_spec("jax_plugins")
    return plugins is not None and any(True for _ in pkgutil.iter_modules(plugins.submodule_search_locations))


def _glibc():
    """The process's C library through ctypes when it is glibc (mallopt's parameters are glibc's), else None."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None)
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None
