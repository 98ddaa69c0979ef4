"""host_memory: an ich_keras command restarts itself with glibc's huge-page tunable, and glibc then maps a large
block with a few 2 MB faults instead of one fault per 4 KB page."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ich_keras import host_memory

BLOCK = 64 << 20
HUGE_PAGE = 2 << 20

# Run at every interpreter start (the restart too): logs GLIBC_TUNABLES and the page faults of writing a fresh
# malloc'd block.
SITECUSTOMIZE = f"""
import ctypes, os, resource
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = libc.malloc({BLOCK})
ctypes.memset(block, 1, {BLOCK})
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
libc.free(block)
with open(os.environ["STARTS_LOG"], "a") as log:
    log.write(f"{{os.environ.get('GLIBC_TUNABLES', '')}} {{faults}}\\n")
"""


def starts(tmp_path: Path, argv: list[str], **env) -> list[tuple[str, int]]:
    """[(GLIBC_TUNABLES, page faults of a fresh 64 MB block)] for each interpreter start of `argv`."""
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "starts.log"
    environment = {key: value for key, value in os.environ.items() if key != "GLIBC_TUNABLES"}
    environment |= {"PYTHONPATH": str(tmp_path), "STARTS_LOG": str(log), **env}
    subprocess.run([sys.executable, *argv], env=environment, check=True, capture_output=True, cwd=tmp_path)
    lines = [line.rsplit(" ", 1) for line in log.read_text().splitlines()]
    return [(tunables, int(faults)) for tunables, faults in lines]


def thp_mode() -> str:
    return host_memory.THP_MODE.read_text() if host_memory.THP_MODE.exists() else ""


def test_a_command_restarts_with_huge_pages_where_the_kernel_gives_them(tmp_path):
    runs = starts(tmp_path, ["-m", "ich_keras.models", "--list"])
    if not host_memory.wanted({}, thp_mode()):  # not glibc, or THP "always" / "never": no restart
        assert runs == [("", runs[0][1])]
        return
    (first, default_faults), (restarted, huge_page_faults) = runs
    assert first == "" and restarted == "glibc.malloc.hugetlb=1"
    # One fault per 4 KB page by default; with huge pages one per 2 MB, but for the block's unaligned ends.
    assert default_faults >= BLOCK // 4096 * 0.9
    assert huge_page_faults <= BLOCK // HUGE_PAGE + 2 * HUGE_PAGE // 4096


def test_no_restart_when_turned_off_or_not_a_command(tmp_path):
    assert len(starts(tmp_path, ["-m", "ich_keras.models", "--list"], ICH_KERAS_HUGE_PAGES="off")) == 1
    (tmp_path / "starts.log").unlink()
    assert len(starts(tmp_path, ["-c", "import ich_keras"])) == 1


def test_an_unknown_setting_is_named_and_means_off(tmp_path):
    command = [sys.executable, "-m", "ich_keras.models", "--list"]
    out = subprocess.run(command, env={**os.environ, "ICH_KERAS_HUGE_PAGES": "always"}, capture_output=True,
                         text=True, check=True)
    assert "ICH_KERAS_HUGE_PAGES must be one of auto, off; received 'always'" in out.stderr
    assert not host_memory.wanted({"ICH_KERAS_HUGE_PAGES": "always"}, "always [madvise] never\n")


@pytest.mark.parametrize("argv, command", [
    (["python", "-m", "ich_keras.fit", "--config", "c.toml"], True),
    (["python", "-u", "-m", "ich_keras.soup"], True),
    (["python", "-m", "pytest", "-m", "ich_keras.fit"], False),
    (["python", "script.py", "-m", "ich_keras.fit"], False),
    (["python", "-c", "import ich_keras", "-m", "ich_keras.fit"], False),
    (["python", "-X", "importtime", "-m", "ich_keras.fit"], False),  # an option with a value: left alone
    (["python", "-m"], False),
])
def test_command_argv_recognises_only_ich_keras_commands(argv, command):
    assert (host_memory.command_argv(argv) == argv) is command


def test_wanted_respects_the_users_settings():
    madvise = "always [madvise] never\n"
    on_glibc = host_memory.wanted({}, madvise)  # False off Linux/glibc, where nothing else matters
    assert host_memory.wanted({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, madvise) == on_glibc
    assert not host_memory.wanted({"ICH_KERAS_HUGE_PAGES": "off"}, madvise)
    assert not host_memory.wanted({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, madvise)
    assert not host_memory.wanted({}, "[always] madvise never\n")
    assert not host_memory.wanted({}, "always madvise [never]\n")
