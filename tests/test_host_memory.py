"""host_memory.keep_freed: a freed block is reused without page faults, where glibc's default faults it in again."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ich_keras import host_memory
from ich_keras.errors import UserError

BLOCK = 64 << 20
HUGE_PAGE = 2 << 20  # with transparent huge pages on, a fault maps 2 MB
TOUCHES = 5

# Allocates, writes and frees a block through the C library, then counts the page faults of TOUCHES more rounds.
CHILD = f"""
import ctypes, resource
from ich_keras import host_memory
applied = host_memory.keep_freed()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def touch():
    block = libc.malloc({BLOCK})
    ctypes.memset(block, 1, {BLOCK})
    libc.free(block)
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range({TOUCHES}):
    touch()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults_after(setting: str, **env) -> tuple[bool, int]:
    """(whether keep_freed took effect, page faults of the child's later rounds) under ICH_KERAS_HOST_MEMORY."""
    environment = {**os.environ, host_memory.ENV_VARIABLE: setting, **env}
    out = subprocess.run([sys.executable, "-c", CHILD], env=environment, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


@pytest.mark.skipif(host_memory._glibc() is None, reason="mallopt's parameters are glibc's")
def test_freed_memory_is_reused_without_page_faults():
    assert faults_after("keep") == (True, pytest.approx(0, abs=BLOCK // HUGE_PAGE - 1))
    assert faults_after("auto", JAX_PLATFORMS="cpu")[0]
    applied, faults = faults_after("release")  # glibc's default: the block is unmapped and faulted in each round
    assert not applied and faults >= TOUCHES * BLOCK // HUGE_PAGE


def test_an_unknown_setting_names_the_variable(monkeypatch):
    monkeypatch.setenv(host_memory.ENV_VARIABLE, "always")
    with pytest.raises(UserError, match="ICH_KERAS_HOST_MEMORY must be one of auto, keep, release.*'always'"):
        host_memory.keep_freed()


def test_an_accelerator_platform_leaves_malloc_alone(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
    assert host_memory.accelerator_available()
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert not host_memory.accelerator_available()
