"""host_memory: an ich_keras command restarts itself with glibc's huge-page tunable and the block cache preloaded;
glibc then maps a large block with a few 2 MB faults instead of one fault per 4 KB page, and the block cache hands
a freed block out again without faulting it in anew."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ich_keras import host_memory

BLOCK = 64 << 20
HUGE_PAGE = 2 << 20
DEFAULT_FAULTS = BLOCK // 4096 * 0.9  # one fault per 4 KB page, give or take what was mapped already
HUGE_PAGE_FAULTS = BLOCK // HUGE_PAGE + 2 * HUGE_PAGE // 4096  # one per 2 MB, but for the block's unaligned ends

# Run at every interpreter start (the restart too): logs GLIBC_TUNABLES, whether the block cache is preloaded, and
# the page faults of writing a fresh malloc'd block twice, freed in between.
SITECUSTOMIZE = f"""
import ctypes, os, resource
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
faults = []
for _ in range(2):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc({BLOCK})
    ctypes.memset(block, 1, {BLOCK})
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    libc.free(block)
with open(os.environ["STARTS_LOG"], "a") as log:
    cached = "block_cache-" in os.environ.get("LD_PRELOAD", "")
    log.write(f"{{os.environ.get('GLIBC_TUNABLES', '')}} {{cached}} {{faults[0]}} {{faults[1]}}\\n")
"""


def starts(tmp_path: Path, argv: list[str], **env) -> list[tuple[str, bool, int, int]]:
    """[(GLIBC_TUNABLES, block cache preloaded, page faults of a fresh 64 MB block, of the next one)] for each
    interpreter start of `argv`."""
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "starts.log"
    log.unlink(missing_ok=True)
    unset = ("GLIBC_TUNABLES", "LD_PRELOAD", host_memory.RESTARTED)
    environment = {key: value for key, value in os.environ.items() if key not in unset}
    environment |= {"PYTHONPATH": str(tmp_path), "STARTS_LOG": str(log), **env}
    subprocess.run([sys.executable, *argv], env=environment, check=True, capture_output=True, cwd=tmp_path)
    lines = [line.rsplit(" ", 3) for line in log.read_text().splitlines()]
    return [(tunables, cached == "True", int(first), int(second)) for tunables, cached, first, second in lines]


@pytest.fixture
def library(tmp_path, monkeypatch) -> Path:
    """The block cache built into a fresh cache directory (XDG_CACHE_HOME=tmp_path); skips where it cannot be."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    built = host_memory.block_cache_library()
    if not host_memory.on_glibc() or built is None:
        pytest.skip("needs Linux with glibc and a C compiler")
    return built


def thp_mode() -> str:
    return host_memory.THP_MODE.read_text() if host_memory.THP_MODE.exists() else ""


def test_a_command_restarts_with_huge_pages_and_the_block_cache(tmp_path):
    runs = starts(tmp_path, ["-m", "ich_keras.models", "--list"])
    changes = host_memory.command_environment({})
    if not changes:  # not glibc, THP not in "madvise" mode and no C compiler: no restart
        assert len(runs) == 1
        return
    (tunables, cached, *default_faults), (restarted_tunables, restarted_cached, first, second) = runs
    assert (tunables, cached) == ("", False)
    assert all(faults >= DEFAULT_FAULTS for faults in default_faults)  # glibc maps each block afresh
    assert restarted_tunables == changes.get("GLIBC_TUNABLES", "")
    assert restarted_cached == ("LD_PRELOAD" in changes)
    if restarted_tunables or restarted_cached:  # either way the block comes in 2 MB pages
        assert first <= HUGE_PAGE_FAULTS
    if restarted_cached:  # the freed block, handed out again: no fresh pages at all
        assert second <= 8


def test_without_huge_pages_the_block_cache_maps_4_KB_pages_and_still_keeps_its_blocks(tmp_path):
    changes = host_memory.command_environment({"ICH_KERAS_HUGE_PAGES": "off"})
    if "LD_PRELOAD" not in changes:  # no block cache here
        pytest.skip("needs Linux with glibc and a C compiler")
    assert "GLIBC_TUNABLES" not in changes
    *_, (tunables, cached, first, second) = starts(tmp_path, ["-m", "ich_keras.models", "--list"],
                                                   ICH_KERAS_HUGE_PAGES="off")
    assert (tunables, cached) == ("", True)
    assert second <= 8  # the kept block: no fresh pages
    if "[madvise]" in thp_mode():  # ("always" would give huge pages unasked): one fault per 4 KB page, once
        assert first >= DEFAULT_FAULTS


@pytest.mark.slow  # 10 s: fresh processes, one per setting
def test_each_remedy_can_be_turned_off_and_only_commands_restart(tmp_path):
    off = {"ICH_KERAS_HUGE_PAGES": "off", "ICH_KERAS_BLOCK_CACHE": "off"}
    assert len(starts(tmp_path, ["-m", "ich_keras.models", "--list"], **off)) == 1
    assert len(starts(tmp_path, ["-c", "import ich_keras"])) == 1
    if "LD_PRELOAD" in host_memory.command_environment({}):
        runs = starts(tmp_path, ["-m", "ich_keras.models", "--list"], ICH_KERAS_BLOCK_CACHE="off")
        assert not any(cached for _, cached, _, _ in runs)


def test_the_module_prints_what_a_shell_should_export():
    unset = ("GLIBC_TUNABLES", "LD_PRELOAD", host_memory.RESTARTED)
    environment = {key: value for key, value in os.environ.items() if key not in unset}
    out = subprocess.run([sys.executable, "-m", "ich_keras.host_memory"], env=environment, capture_output=True,
                         text=True, check=True)
    exported = dict(line.removeprefix("export ").split("=", 1) for line in out.stdout.splitlines())
    assert exported == host_memory.command_environment({})  # paths and tunables need no shell quoting here
    assert "Warning" not in out.stderr  # runpy warns when the package imported the module before running it


@pytest.mark.parametrize("variable", ["ICH_KERAS_HUGE_PAGES", "ICH_KERAS_BLOCK_CACHE"])
def test_an_unknown_setting_is_named_once_and_means_off(variable):
    command = [sys.executable, "-m", "ich_keras.models", "--list"]
    out = subprocess.run(command, env={**os.environ, variable: "always"}, capture_output=True, text=True, check=True)
    warning = f"{variable} must be one of auto, off; received 'always', so it is off"
    assert out.stderr.count(warning) == 1
    assert not host_memory.chosen({variable: "always"}, variable)


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


def test_huge_pages_wanted_respects_the_users_settings():
    madvise = "always [madvise] never\n"
    glibc = host_memory.on_glibc()  # False off Linux/glibc, where nothing else matters
    assert host_memory.huge_pages_wanted({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, madvise) == glibc
    assert not host_memory.huge_pages_wanted({"ICH_KERAS_HUGE_PAGES": "off"}, madvise)
    assert not host_memory.huge_pages_wanted({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, madvise)
    assert not host_memory.huge_pages_wanted({}, "[always] madvise never\n")
    assert not host_memory.huge_pages_wanted({}, "always madvise [never]\n")


def test_in_effect_says_what_a_process_runs_with():
    madvise, never = "always [madvise] never\n", "always madvise [never]\n"
    cache = {"LD_PRELOAD": "/home/me/.cache/ich_keras/block_cache-0123456789abcdef.so"}
    hint = " (ICH_KERAS_HUGE_PAGES=off: often a shorter first step, longer later ones)"
    assert host_memory.in_effect(cache, madvise) == "block cache, huge pages" + hint
    assert host_memory.in_effect({**cache, "ICH_KERAS_HUGE_PAGES": "off"}, madvise) == "block cache"
    assert host_memory.in_effect(cache, never) == "block cache"  # asked for, refused by the kernel
    assert host_memory.in_effect({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, madvise) == "huge pages" + hint
    assert host_memory.in_effect({"LD_PRELOAD": "libmine.so"}, madvise) == ""
    # A shell set up by `eval "$(python -m ich_keras.host_memory)"`, then both turned off for one command.
    exported = {**cache, "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    assert host_memory.in_effect({**exported, "ICH_KERAS_BLOCK_CACHE": "off", "ICH_KERAS_HUGE_PAGES": "off"},
                                 madvise) == ("huge pages (from GLIBC_TUNABLES' glibc.malloc.hugetlb=1, which "
                                              "ICH_KERAS_HUGE_PAGES=off leaves alone)")


def test_command_environment_adds_to_the_users_variables_only_what_is_missing(library, tmp_path):
    madvise = "always [madvise] never\n"
    assert library.parent == tmp_path / "ich_keras" and library == host_memory.block_cache_library()
    user = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "LD_PRELOAD": "libmine.so"}
    assert host_memory.command_environment(user, madvise) == {
        "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", "LD_PRELOAD": f"libmine.so {library}"}
    done = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1", "LD_PRELOAD": str(library)}
    assert host_memory.command_environment(done, madvise) == {}
    assert host_memory.command_environment({"ICH_KERAS_BLOCK_CACHE": "off"}, "[never]") == {}


# Run with the block cache preloaded: what a program may do with memory from malloc and its relatives.
BLOCK_CACHE_CHECKS = """
import ctypes, os, resource
libc = ctypes.CDLL(None)
for name in ("malloc", "calloc", "realloc", "reallocarray", "aligned_alloc"):
    getattr(libc, name).restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
libc.realloc.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.reallocarray.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
libc.aligned_alloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.malloc_usable_size.argtypes = [ctypes.c_void_p]
libc.malloc_usable_size.restype = ctypes.c_size_t
MB = 1 << 20
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt

block = libc.malloc(100 * MB)
assert block % (2 * MB) == 0 and libc.malloc_usable_size(block) >= 100 * MB
ctypes.memset(block, 7, 100 * MB)
libc.free(block)
before = faults()
again = libc.malloc(100 * MB)
ctypes.memset(again, 1, 100 * MB)
assert again == block and faults() - before <= 8, "the freed block, handed out again without fresh pages"
ctypes.memset(again + 100 * MB - 3, 9, 3)
assert libc.realloc(again, 99 * MB) == again  # within the block's length: it stays
grown = libc.realloc(again, 150 * MB)  # moves to a new block, keeping the contents
assert ctypes.string_at(grown, 2) == b"\\1\\1" and ctypes.string_at(grown + 100 * MB - 3, 3) == b"\\t\\t\\t"
shrunk = libc.reallocarray(grown, 1000, 1000)  # 1 MB: back to glibc, the head kept
assert ctypes.string_at(shrunk, 2) == b"\\1\\1"
libc.free(shrunk)
zeroed = libc.calloc(100, MB)  # calloc stays glibc's: zeros, even where a dirty block of that size is kept
assert ctypes.string_at(zeroed, 4096) == bytes(4096) and ctypes.string_at(zeroed + 99 * MB, 4096) == bytes(4096)
libc.free(zeroed)
aligned = ctypes.c_void_p()
assert libc.posix_memalign(ctypes.byref(aligned), 4096, 80 * MB) == 0 and aligned.value % 4096 == 0
assert libc.posix_memalign(ctypes.byref(aligned), 24, 80 * MB) == 22  # EINVAL: not a power of two
assert libc.malloc(2**64 - 4096) is None  # too large for anyone: NULL, not a block rounded down
small = libc.aligned_alloc(64, 1000)  # small requests: glibc's
assert small % 64 == 0 and libc.malloc_usable_size(small) >= 1000
libc.free(small)
blocks = [libc.malloc(size * MB) for size in (70, 80, 90, 110)]  # several in use at once: each its own
for block in blocks:
    ctypes.memset(block, 3, 70 * MB)
for block in blocks:
    libc.free(block)
child = os.fork()  # a forked child has the blocks kept too
if child == 0:
    os._exit(0 if libc.malloc(110 * MB) == blocks[-1] else 1)
assert os.waitpid(child, 0)[1] == 0
print("ok")
"""


def test_the_block_cache_keeps_freed_blocks_and_malloc_semantics(library, tmp_path):
    script = tmp_path / "checks.py"
    script.write_text(textwrap.dedent(BLOCK_CACHE_CHECKS))
    out = subprocess.run([sys.executable, script], env={**os.environ, "LD_PRELOAD": str(library)},
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# Run with the block cache preloaded: what it keeps and what it gives back (`sys.argv[1]` says which check).
BLOCK_CACHE_BOUNDS = """
import ctypes, resource, sys, time
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
UNIT = 64 << 20

def written(units):  # a block of `units` * 64 MB written and freed: the page faults of writing it
    block = libc.malloc(units * UNIT)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ctypes.memset(block, 1, units * UNIT)
    libc.free(block)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

fresh = lambda units: written(units) >= 16 * units  # >= 32 faults per 64 MB with huge pages, 16384 without
if sys.argv[1] == "peak":
    # Blocks of 4, 1 and 2 units, one at a time: all three kept (7 units, within twice the peak in use, 4 units).
    written(4), written(1), written(2)
    assert not fresh(4) and not fresh(1) and not fresh(2)
    # One of 3 units would take the blocks mapped to 10 units: the least recently freed, of 4 units, goes back.
    written(3)
    assert fresh(4) and not fresh(3)
else:  # built with KEEP_NS of 1 s: a block not asked for again within it goes back at the next request
    written(1), libc.free(libc.malloc(2 * UNIT))
    assert not fresh(1)
    time.sleep(2.5)
    libc.free(libc.malloc(2 * UNIT))
    assert fresh(1)
print("ok")
"""


@pytest.mark.parametrize("check", ["peak", "time"])
def test_the_block_cache_gives_back_what_it_kept_too_long_or_beyond_twice_the_peak(check, library, tmp_path):
    if check == "time":  # the same source, a block kept for 1 s instead of a minute
        library = tmp_path / "short.so"
        assert host_memory.compile_block_cache(host_memory.c_compiler(), library, "-DKEEP_NS=1000000000ULL")
    script = tmp_path / "bounds.py"
    script.write_text(BLOCK_CACHE_BOUNDS)
    out = subprocess.run([sys.executable, script, check], env={**os.environ, "LD_PRELOAD": str(library)},
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# Blocks of 31 and 40 MB, each written and freed three times: the page faults of the third write. glibc's mmap
# threshold rises to a freed mapped block's size, but never past 32 MB on 64-bit systems.
REWRITTEN_BLOCKS = """
import ctypes, resource
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
for size in (31 << 20, 40 << 20):
    for _ in range(3):
        block = libc.malloc(size)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        ctypes.memset(block, 1, size)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        libc.free(block)
    print(size >> 20, faults)
"""


def with_glibc_and_with_the_block_cache(code: str, library: Path, tmp_path: Path) -> dict[str, list[list[str]]]:
    """The words of each line `code` prints, run with glibc's malloc alone ("glibc") and with the block cache."""
    script = tmp_path / "script.py"
    script.write_text(code)
    environment = {key: value for key, value in os.environ.items() if key not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
    lines = {}
    for name, preload in (("glibc", {}), ("block cache", {"LD_PRELOAD": str(library)})):
        out = subprocess.run([sys.executable, script], env={**environment, **preload}, capture_output=True,
                             text=True, check=True)
        lines[name] = [line.split() for line in out.stdout.splitlines()]
    return lines


def test_blocks_glibc_would_map_afresh_from_32_MB_on_are_kept_by_the_block_cache(library, tmp_path):
    printed = with_glibc_and_with_the_block_cache(REWRITTEN_BLOCKS, library, tmp_path)
    faults = {name: {int(mb): int(count) for mb, count in lines} for name, lines in printed.items()}
    assert faults["glibc"][31] <= 8 and faults["block cache"][31] <= 8  # under 32 MB glibc keeps the block itself
    assert faults["glibc"][40] >= 10  # mapped afresh: one fault per 4 KB page, or per 2 MB one where THP is always
    assert faults["block cache"][40] <= 8


def test_a_block_cache_that_cannot_be_built_is_left_out(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    assert host_memory.block_cache_library() is None
    monkeypatch.setenv("CC", "false")  # a compiler that fails
    assert host_memory.block_cache_library() is None
    assert not list((tmp_path / "ich_keras").iterdir())  # nothing half-written left behind


# XLA's CPU runtime with a temporary of 64 MB (a product that two operations read): the results, as raw bytes, and
# the page faults of each run after the first (the compilation's).
XLA_RUNS = """
import resource
import jax, jax.numpy as jnp, numpy as np

@jax.jit
def step(a, b):
    y = a @ b  # (4096, 4096) float32, 64 MB
    return jnp.tanh(y).sum(axis=0) + (y @ a).sum(axis=1)

rng = np.random.default_rng(0)
a, b = (jnp.asarray(rng.standard_normal(shape, np.float32)) for shape in ((4096, 64), (64, 4096)))
step(a, b).block_until_ready()
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    result = np.asarray(step(a, b))
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, result.tobytes().hex())
"""


def test_xla_runs_through_the_block_cache_alike_without_fresh_pages(library, tmp_path):
    printed = with_glibc_and_with_the_block_cache(XLA_RUNS, library, tmp_path)
    runs = {name: [(int(faults), result) for faults, result in lines] for name, lines in printed.items()}
    assert {result for _, result in runs["glibc"] + runs["block cache"]} == {runs["glibc"][0][1]}  # bit for bit
    assert min(faults for faults, _ in runs["glibc"]) >= (64 << 20) // 4096 * 0.9  # the product's pages, each run
    assert min(faults for faults, _ in runs["block cache"]) <= 64  # most runs: none of its pages fresh


# Run with the block cache preloaded: the flags of the mapping that holds a block of 100 MB (/proc/self/smaps).
BLOCK_FLAGS = """
import ctypes
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
block = libc.malloc(100 << 20)
inside = False
for line in open("/proc/self/smaps"):
    if "-" in line.split()[0] and ":" not in line.split()[0]:
        low, high = (int(bound, 16) for bound in line.split()[0].split("-"))
        inside = low <= block < high
    elif inside and line.startswith("VmFlags:"):
        print(line.split(":", 1)[1].strip())
"""


@pytest.mark.parametrize("setting, huge_pages", [(None, True), (" Auto ", True), ("off", False), ("no", False)])
def test_the_block_cache_asks_for_huge_pages_unless_they_are_off(library, tmp_path, setting, huge_pages):
    script = tmp_path / "flags.py"
    script.write_text(BLOCK_FLAGS)
    environment = {key: value for key, value in os.environ.items() if key != "ICH_KERAS_HUGE_PAGES"}
    environment |= {"LD_PRELOAD": str(library)} | ({} if setting is None else {"ICH_KERAS_HUGE_PAGES": setting})
    out = subprocess.run([sys.executable, script], env=environment, capture_output=True, text=True, check=True)
    flags = out.stdout.split()
    assert "rd" in flags and "wr" in flags  # the block's own mapping was found
    assert ("hg" in flags) == huge_pages  # madvise(MADV_HUGEPAGE), as host_memory reads the setting


@pytest.mark.parametrize("setting, cached", [(None, True), (" Auto", True), ("off", False)])
def test_a_preloaded_block_cache_steps_aside_when_turned_off(library, setting, cached):
    # Its blocks start on a huge-page boundary; glibc's mapped chunks start 16 bytes into a page.
    code = ("import ctypes; libc = ctypes.CDLL(None); libc.malloc.restype = ctypes.c_void_p; "
            "libc.malloc.argtypes = [ctypes.c_size_t]; print(libc.malloc(100 << 20) % (2 << 20) == 0)")
    environment = {key: value for key, value in os.environ.items() if key != "ICH_KERAS_BLOCK_CACHE"}
    environment |= {"LD_PRELOAD": str(library)} | ({} if setting is None else {"ICH_KERAS_BLOCK_CACHE": setting})
    out = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(cached)
