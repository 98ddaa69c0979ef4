"""`bash benchmarks/gpu_check.sh --dry-run`, as CI runs it: exit status 0 and a report with every section, each
holding real numbers (the GPU run itself needs a GPU; this proves its code on the CPU at tiny sizes)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("timm")
pytest.importorskip("safetensors")

ROOT = Path(__file__).resolve().parents[1]


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
    assert float(re.search(r"of the traced step \(([\d.]+) GFLOP\)", report).group(1)) > 0

    first = _rows(report, "First-step")
    assert first and all(float(r[4]) > float(r[5]) > 0 for r in first)

    path = _rows(report, "Real path")
    assert [r[0] for r in path] == ["images + timm W0", "convert", "fit", "soup", "analyze", "export"]
    assert all(r[-1] == "ok" for r in path) and all(float(r[2]) > 1 for r in path[1:])  # each CLI: a process

    soup = _rows(report, "Uniform soup")
    assert soup[0][1] == "2" and float(soup[0][4]) <= 1e-5 and soup[0][-1] == "ok"

    targets = _rows(report, "Targets")
    assert len(targets) == 3 and targets[1][1:] == ["n/a", "n/a"]
    assert all(r[2] in ("met", "not met", "n/a") for r in targets)


@pytest.mark.timm
def test_only_runs_the_sections_named(tmp_path):
    done = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_check.sh"), "--dry-run", "--only", "soup"],
                          capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = (tmp_path / "gpu_report.md").read_text()
    assert "gpu_check.sh --dry-run --only soup`" in report
    headings = [line for line in report.splitlines() if line.startswith("## ")]
    assert headings[:2] == ["## Machine", "## Targets"] and len(headings) == 3
    assert headings[2].startswith("## Uniform soup of 2 checkpoints (")


@pytest.mark.timm
def test_an_unknown_section_is_named(tmp_path):
    done = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_check.sh"), "--dry-run", "--only", "sop"],
                          capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable})
    assert done.returncode == 2
    assert "unknown section(s) sop; expected some of: parity, speed-coatnet_tiny" in done.stderr
