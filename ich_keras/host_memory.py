"""The commands' host memory: transparent huge pages, and XLA's per-step block kept from one step to the next.

XLA's CPU backend allocates a step's temporaries as one block at every run, gigabytes for CoAtNet at 224 px, and
frees it at the end. glibc maps a block that large afresh and unmaps it when it is freed, so each step faults
every 4 KB page in again and the kernel zeroes it: coatnet_0's training step at 224 px, batch 8 took ~510 k page
faults and 1.5 s of system time a step on a 2-core CPU. Two remedies, both on by default for the commands:

- huge pages: glibc's tunable `glibc.malloc.hugetlb=1` asks the kernel for 2 MB pages for those blocks
  (`madvise`): ~2.3 k faults, 0.3 s, the step 1.4x faster. Only where the kernel's transparent huge pages are in
  "madvise" mode ("always" gives them already, "never" refuses them). ICH_KERAS_HUGE_PAGES=off, or any
  `glibc.malloc.hugetlb` in GLIBC_TUNABLES, leaves glibc alone; ICH_KERAS_HUGE_PAGES=off also has the block cache
  map its blocks without asking for huge pages (a tunable a shell exported stays: unset it there). Fresh huge pages
  can make the first step longer (coatnet_0 at 224 px, batch 8: 22-34 s against 12-19 s with the setting off on
  a 2-core VM; at batch 16 not: 29-31 s against 32-36 s) and make the later steps 2-5 % shorter: on for training,
  which runs thousands of steps; off for a quick look.
- the block cache: `block_cache.c`, compiled once with the system's C compiler into ~/.cache/ich_keras and
  preloaded (LD_PRELOAD), keeps a freed block of 32 MB or more (what glibc maps afresh at every request: the
  step's block, YNNPACK's scratch) mapped for the next request of the same size (a minute at most, within twice
  the peak in use), so a step's blocks are faulted in once, not at every step: at 224 px, batch 16, ~300 faults
  and 0.2 s, the step 1.5-1.7x faster than with huge pages alone. Only where a C compiler (`$CC`, `cc` or `gcc`)
  is found; ICH_KERAS_BLOCK_CACHE=off leaves it out (and has a library preloaded already pass everything to glibc).

glibc reads its tunables, and the dynamic loader LD_PRELOAD, once, when a process starts. So a command started
without them, `python -m ich_keras.<verb>`, starts itself again with them (`restart_command`, called by
`ich_keras/__init__` before anything heavy is imported: 0.05-0.08 s). Only on Linux with glibc, and never for
`import ich_keras` in a program of the user's: `eval "$(python -m ich_keras.host_memory)"` sets both in a shell.
Measured in `benchmarks/host_memory.py` (benchmarks/README.md).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SETTINGS = ("auto", "off")
HUGE_PAGES_VARIABLE = "ICH_KERAS_HUGE_PAGES"
BLOCK_CACHE_VARIABLE = "ICH_KERAS_BLOCK_CACHE"
TUNABLE = "glibc.malloc.hugetlb"
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")
RESTARTED = "ICH_KERAS_HOST_MEMORY_SET"  # set by the restart, so that it happens (and warns) once
BLOCK_CACHE_SOURCE = Path(__file__).with_name("block_cache.c")


def command_argv(argv: list[str]) -> list[str] | None:
    """`argv` (as `sys.orig_argv`) when it runs `python [-flags] -m ich_keras.<verb> ...`, else None."""
    for index, arg in enumerate(argv[1:], start=1):
        if arg == "-m":
            return argv if argv[index + 1:index + 2] and argv[index + 1].startswith("ich_keras.") else None
        if not arg.startswith("-") or arg in ("-c", "-X", "-W"):  # a script, code, or an option taking a value
            return None
    return None


def on_glibc() -> bool:
    """Whether this process runs on Linux with glibc (whose tunables and malloc entry points both remedies use)."""
    if not sys.platform.startswith("linux") or "CS_GNU_LIBC_VERSION" not in os.confstr_names:
        return False
    return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")


def _setting(environ: dict[str, str], variable: str) -> str:
    """`variable`'s value as the commands (and block_cache.c) read it: spaces and case aside, empty is "auto"."""
    return environ.get(variable, "").strip().lower() or "auto"


def _kernel_thp_mode() -> str:
    """The kernel's transparent huge page mode, e.g. "always [madvise] never"; "" where it has none."""
    return THP_MODE.read_text() if THP_MODE.exists() else ""


def chosen(environ: dict[str, str], variable: str) -> bool:
    """Whether `variable` is "auto" (the default); an unknown value is named in a warning and means "off", for the
    command itself is not at fault."""
    setting = _setting(environ, variable)
    if setting not in SETTINGS:
        print(f"warning: {variable} must be one of {', '.join(SETTINGS)}; received {environ[variable]!r}, so it is "
              "off", file=sys.stderr)
    return setting == "auto"


def huge_pages_wanted(environ: dict[str, str], thp_mode: str) -> bool:
    """Whether a command should ask for huge pages: glibc, THP in "madvise" mode ("always [madvise] never"), no
    hugetlb tunable already set, and ICH_KERAS_HUGE_PAGES "auto" (the default)."""
    already = TUNABLE in environ.get("GLIBC_TUNABLES", "")
    return on_glibc() and "[madvise]" in thp_mode and not already and chosen(environ, HUGE_PAGES_VARIABLE)


def c_compiler() -> str | None:
    """The C compiler the block cache is built with: $CC, else cc, else gcc; None without one."""
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def compile_block_cache(compiler: str, output: Path, *options: str) -> bool:
    """Compiles the block cache into the shared library `output`, with extra compiler `options` (a test's `-D`);
    whether it succeeded. OSError where the compiler cannot run."""
    command = [compiler, "-O2", "-shared", "-fPIC", "-pthread", *options, "-o", output, BLOCK_CACHE_SOURCE, "-ldl"]
    return subprocess.run(command, capture_output=True).returncode == 0


def block_cache_library(cache_root: Path | None = None) -> Path | None:
    """The block cache compiled for this machine, built on first use (under a name with the source's hash, written
    atomically so concurrent commands can build it at once); None without a C compiler, or where it fails."""
    compiler = c_compiler()
    if compiler is None:
        return None
    source = BLOCK_CACHE_SOURCE.read_bytes()
    cache_root = cache_root or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ich_keras"
    library = cache_root / f"block_cache-{hashlib.sha256(source).hexdigest()[:16]}.so"
    if library.exists():
        return library
    try:
        cache_root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache_root) as scratch:
            built = Path(scratch) / library.name
            if not compile_block_cache(compiler, built):
                return None
            os.replace(built, library)
    except OSError:  # a read-only cache, a compiler that cannot run
        return None
    return library


def command_environment(environ: dict[str, str], thp_mode: str | None = None) -> dict[str, str]:
    """The variables a command sets for its host memory that `environ` lacks (GLIBC_TUNABLES, LD_PRELOAD), as
    their new values; empty when there is nothing to add. `thp_mode` defaults to the kernel's."""
    if thp_mode is None:
        thp_mode = _kernel_thp_mode()
    changes = {}
    if huge_pages_wanted(environ, thp_mode):
        changes["GLIBC_TUNABLES"] = ":".join(filter(None, [environ.get("GLIBC_TUNABLES", ""), f"{TUNABLE}=1"]))
    preloaded = environ.get("LD_PRELOAD", "")
    if on_glibc() and "block_cache-" not in preloaded and chosen(environ, BLOCK_CACHE_VARIABLE):
        library = block_cache_library()
        if library is not None:
            changes["LD_PRELOAD"] = " ".join(filter(None, [preloaded, str(library)]))
    return changes


def in_effect(environ: dict[str, str], thp_mode: str | None = None) -> str:
    """What a process with `environ` runs with, for a command's start-up summary: "block cache", "huge pages",
    both, or "" (glibc's default); with huge pages, how to go without them. `thp_mode` defaults to the kernel's."""
    if thp_mode is None:
        thp_mode = _kernel_thp_mode()
    huge_pages_setting = _setting(environ, HUGE_PAGES_VARIABLE)
    # A preloaded block cache serves nothing when ICH_KERAS_BLOCK_CACHE is not "auto" (block_cache.c reads it too).
    cached = "block_cache-" in environ.get("LD_PRELOAD", "") and _setting(environ, BLOCK_CACHE_VARIABLE) == "auto"
    tunable = f"{TUNABLE}=1" in environ.get("GLIBC_TUNABLES", "")
    huge_pages = (tunable or (cached and huge_pages_setting == "auto")) and "[never]" not in thp_mode
    text = ", ".join(name for name, on in (("block cache", cached), ("huge pages", huge_pages)) if on)
    if not huge_pages:
        return text
    if huge_pages_setting == "auto":
        return f"{text} ({HUGE_PAGES_VARIABLE}=off: often a shorter first step, longer later ones)"
    return f"{text} (from GLIBC_TUNABLES' {TUNABLE}=1, which {HUGE_PAGES_VARIABLE}=off leaves alone)"


def restart_command() -> None:
    """Replaces this process by itself with `command_environment`'s variables, when it is an ich_keras command
    that lacks some of them; otherwise returns at once."""
    argv = command_argv(getattr(sys, "orig_argv", []))
    if argv is None or RESTARTED in os.environ:
        return
    changes = command_environment(dict(os.environ))
    if changes:
        os.execve(sys.executable, [sys.executable, *argv[1:]], {**os.environ, **changes, RESTARTED: "1"})


if __name__ == "__main__":
    # `eval "$(python -m ich_keras.host_memory)"`: a shell's programs (a notebook, a script) get what the commands
    # run with (this command is not restarted: see ich_keras/__init__).
    settings = {**os.environ, **command_environment(dict(os.environ))}
    for variable in ("GLIBC_TUNABLES", "LD_PRELOAD"):
        if settings.get(variable):
            print(f"export {variable}={shlex.quote(settings[variable])}")
