"""Transparent huge pages for the commands' host memory (glibc's tunable `glibc.malloc.hugetlb=1`).

XLA's CPU backend allocates a step's temporaries afresh at every run, gigabytes for CoAtNet at 224 px. glibc maps
blocks that large with mmap and unmaps them when they are freed, so each step faults every 4 KB page in again and
the kernel zeroes it: coatnet_0's training step at 224 px, batch 8 took ~510 k page faults and 1.5 s of system
time a step on a 2-core CPU. With the tunable, glibc asks the kernel for 2 MB pages for those blocks (`madvise`):
~2.3 k faults, 0.3 s, and the step 1.4x faster (`benchmarks/host_memory.py`, benchmarks/README.md).

glibc reads its tunables once, when a process starts. So a command started without it, `python -m
ich_keras.<verb>`, starts itself again with it (`restart_command_with_huge_pages`, called by `ich_keras/__init__`
before anything heavy is imported: 0.05-0.08 s). Only where the kernel's transparent huge pages are in "madvise"
mode ("always" gives them already, "never" refuses them), only on glibc, and never for `import ich_keras` in a
program of the user's. ICH_KERAS_HUGE_PAGES=off, or any `glibc.malloc.hugetlb` in GLIBC_TUNABLES, leaves it alone.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ENV_VARIABLE = "ICH_KERAS_HUGE_PAGES"
SETTINGS = ("auto", "off")
TUNABLE = "glibc.malloc.hugetlb"
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def command_argv(argv: list[str]) -> list[str] | None:
    """`argv` (as `sys.orig_argv`) when it runs `python [-flags] -m ich_keras.<verb> ...`, else None."""
    for index, arg in enumerate(argv[1:], start=1):
        if arg == "-m":
            return argv if argv[index + 1:index + 2] and argv[index + 1].startswith("ich_keras.") else None
        if not arg.startswith("-") or arg in ("-c", "-X", "-W"):  # a script, code, or an option taking a value
            return None
    return None


def wanted(environ: dict[str, str], thp_mode: str) -> bool:
    """Whether a command should ask for huge pages: glibc, THP in "madvise" mode ("always [madvise] never"), no
    hugetlb tunable already set, and ICH_KERAS_HUGE_PAGES "auto" (the default)."""
    on_glibc = sys.platform.startswith("linux") and "CS_GNU_LIBC_VERSION" in os.confstr_names
    on_glibc = on_glibc and (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    chosen = (environ.get(ENV_VARIABLE, "").strip().lower() or "auto") == "auto"
    return chosen and on_glibc and "[madvise]" in thp_mode and TUNABLE not in environ.get("GLIBC_TUNABLES", "")


def restart_command_with_huge_pages() -> None:
    """Replaces this process by itself with `glibc.malloc.hugetlb=1` in GLIBC_TUNABLES, when it is an ich_keras
    command that does not have it yet and `wanted` says so; otherwise returns at once."""
    argv = command_argv(getattr(sys, "orig_argv", []))
    if argv is None:
        return
    setting = os.environ.get(ENV_VARIABLE, "").strip().lower() or "auto"
    if setting not in SETTINGS:  # a warning, not an error: the command itself is not at fault
        print(f"warning: {ENV_VARIABLE} must be one of {', '.join(SETTINGS)}; "
              f"received {os.environ[ENV_VARIABLE]!r}, so no huge pages", file=sys.stderr)
    try:
        thp_mode = THP_MODE.read_text()
    except OSError:  # no such file: no transparent huge pages
        return
    if not wanted(dict(os.environ), thp_mode):
        return
    tunables = ":".join(filter(None, [os.environ.get("GLIBC_TUNABLES", ""), f"{TUNABLE}=1"]))
    os.execve(sys.executable, [sys.executable, *argv[1:]], {**os.environ, "GLIBC_TUNABLES": tunables})
