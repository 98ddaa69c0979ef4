"""`bash benchmarks/gpu_check.sh --dry-run`, as CI runs it: exit status 0 and a report with every section, each
holding real numbers (the GPU run itself needs a GPU; this proves its code on the CPU at tiny sizes)."""

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

timm = pytest.importorskip("timm")
pytest.importorskip("safetensors")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def gpu_check(monkeypatch):
    """benchmarks/gpu_check.py as a module (benchmarks/ is no package: its scripts import each other by name)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module("gpu_check")


@pytest.fixture
def gpu_speed(gpu_check):
    """benchmarks/gpu_speed.py, the check's speed sections."""
    return importlib.import_module("gpu_speed")


def _rows(report: str, title: str) -> list[list[str]]:
    """The body rows of the first table in the report's section whose `## ` heading starts with `title`."""
    section = report.split(f"\n## {title}", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


@pytest.mark.slow  # seven processes, each importing TensorFlow and compiling its own model
@pytest.mark.timm
def test_dry_run_writes_every_section_with_numbers(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_check.sh"), "--dry-run"], capture_output=True,
                          text=True, env={**os.environ, "OUT": str(out), "PYTHON": sys.executable}, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = (out / "gpu_report.md").read_text()
    assert "correctness: **pass**" in report
    assert "| JAX device | cpu: cpu" in report

    parity = _rows(report, "Parity")
    assert parity and all(float(r[4]) <= 1e-4 and r[5] == "100%" and r[-1] == "ok" for r in parity)

    speed = _rows(report, "float32 training speed")
    assert [r[1] for r in speed] == ["ich_keras", "timm eager", "timm torch.compile"]
    assert all(float(r[3]) > 0 and float(r[5]) >= 0 and r[-1] == "n/a" for r in speed)  # no peak FLOP/s on a CPU
    assert float(speed[0][5]) > 1  # ich_keras' first step: tracing and XLA compilation
    assert float(re.search(r"of the lowered step \(`step_flops.py`, ([\d.]+) GFLOP\)", report).group(1)) > 0

    first = _rows(report, "First-step")
    assert first and all(float(r[4]) > float(r[5]) > 0 for r in first)

    # The real path ran beside the checks before it; the timed sections after it, alone.
    assert "\n## Real path: convert, fit, soup, analyze, export (beside parity) (" in report
    path = _rows(report, "Real path")
    assert [r[0] for r in path] == ["images + timm W0", "convert", "fit", "soup", "analyze", "export"]
    assert all(r[-1] == "ok" for r in path) and all(float(r[2]) > 1 for r in path[1:])  # each CLI: a process

    soup = _rows(report, "Uniform soup")
    assert soup[0][1] == "2" and float(soup[0][4]) <= 1e-5 and soup[0][-1] == "ok"

    targets = _rows(report, "Targets")
    assert len(targets) == 3 and targets[1][1:] == ["n/a", "n/a"]
    assert all(r[2] in ("met", "not met", "n/a") for r in targets)


@pytest.mark.timm
def test_only_runs_the_sections_named(gpu_check, tmp_path):
    assert gpu_check.main(["--dry-run", "--only", "soup", "--report", str(tmp_path / "gpu_report.md")]) == 0
    report = (tmp_path / "gpu_report.md").read_text()
    assert "gpu_check.sh --dry-run --only soup`" in report and "correctness: **pass**" in report
    headings = [line for line in report.splitlines() if line.startswith("## ")]
    assert headings[:2] == ["## Machine", "## Targets"] and len(headings) == 3
    assert headings[2].startswith("## Uniform soup of 2 checkpoints (")


@pytest.mark.timm
def test_sections_past_stop_after_are_listed_as_not_run(gpu_check, tmp_path):
    # Nothing checked is no pass: exit status 1.
    argv = ["--dry-run", "--only", "parity", "soup", "--stop-after", "0", "--report", str(tmp_path / "r.md")]
    assert gpu_check.main(argv) == 1
    report = (tmp_path / "r.md").read_text()
    assert "`bash benchmarks/gpu_check.sh --dry-run --only parity soup --stop-after 0`" in report
    assert "correctness: **not run**" in report
    assert ("Not run (started past --stop-after): Parity with timm (float32); Uniform soup of 2 checkpoints."
            in report)


@pytest.mark.timm
def test_an_unknown_section_is_named(gpu_check, capsys):
    assert gpu_check.main(["--dry-run", "--only", "sop"]) == 2
    assert ("unknown section(s) sop; expected some of: parity, path, soup, speed-coatnet_tiny, first-step"
            in capsys.readouterr().err)


def test_a_failed_flop_count_leaves_the_speeds_and_says_why(gpu_check, gpu_speed):
    flops, why = gpu_speed.step_flops_on_cpu("coatnet_huge", gpu_check.DRY)  # MFU n/a, not the section lost
    assert flops is None and why.startswith("step_flops.py exited with status 1: ") and "coatnet_huge" in why


class _FailingRunner:
    """A framework whose first step raises as torch.compile does: the cause (what torch 2.11's inductor raised for
    coatnet_2 in bf16 on an H200) wrapped in an error whose message ends with advice on logging."""

    def train_steps(self, images, labels, steps):
        try:
            raise RuntimeError("(*bias): last dimension must be contiguous")
        except RuntimeError as cause:
            raise RuntimeError("backend='inductor' raised:\nRuntimeError: (*bias): last dimension must be "
                               "contiguous\n\nSet TORCHDYNAMO_VERBOSE=1 for the internal stack trace") from cause


@pytest.mark.timm
def test_a_framework_that_fails_its_first_step_is_named_and_the_others_still_run(gpu_speed):
    runners = gpu_speed.train_throughput.make_runners("coatnet_tiny", 32, only="timm eager")
    runners[gpu_speed.COMPILED] = _FailingRunner()
    images, labels = gpu_speed.train_throughput.random_batch(2, 32, 1000)
    first, failed = gpu_speed.first_steps(runners, images, labels)
    assert failed == {gpu_speed.COMPILED: "RuntimeError: (*bias): last dimension must be contiguous"}
    assert list(runners) == ["timm eager"] and list(first) == ["timm eager"] and first["timm eager"] > 0


@pytest.mark.timm
def test_the_unfused_compiled_fallback_is_the_same_network_without_fused_attention(gpu_check, gpu_speed):
    eager = gpu_speed.train_throughput.make_runners("coatnet_tiny", 32, only="timm eager")["timm eager"]
    runner = gpu_speed.unfused_compiled_runner(eager, gpu_check.DRY)
    attention = [m for m in runner.model.modules() if hasattr(m, "fused_attn")]
    assert attention and not any(m.fused_attn for m in attention)
    assert all(m.fused_attn for m in eager.model.modules() if hasattr(m, "fused_attn")) == timm.layers.use_fused_attn()

    images = gpu_speed.torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32))
    with gpu_speed.torch.no_grad():
        ours, theirs = (r.model.eval()(images).numpy() for r in (runner, eager))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)  # the same weights, attention by another path
    runner.train_steps(images.numpy().transpose(0, 2, 3, 1), np.eye(1000, dtype=np.float32)[[1, 2]], 1)  # compiles
