"""The GPU check behind `bash benchmarks/gpu_check.sh`: one report that proves the GPU path, or its CPU dry run.

    bash benchmarks/gpu_check.sh              # one H100/H200, <= 8 min: $OUT/gpu_report.md (./gpu_report.md)
    bash benchmarks/gpu_check.sh --dry-run    # the same code on the CPU at tiny sizes, nothing installed (CI)
    bash benchmarks/gpu_check.sh --only parity soup --stop-after 420   # some sections, none started after 420 s

Run it through the shell script: it installs the CUDA wheels when they are missing and keeps JAX from reserving
most of the GPU's memory (the CLIs of the real path run in processes of their own beside this one). Sections:

- parity: every model converted from a random timm model (`ich_keras.parity`), logits against timm's on the same
  device in float32, TF32 off on both sides; fails when max |Δlogit| > 1e-4 x max |logit| or top-1 differs.
- speed-MODEL (a section per model, the target first): bf16 training images/s at 224 px, ich_keras (`model.fit`)
  against timm eager and torch.compile under autocast (`train_throughput.py`, rounds alternating), and MFU: the
  FLOPs of forward + backward from XLA's cost analysis of the lowered step (`step_flops.py`, on the CPU after the
  timings) over the measured step time, against the chip's bf16 peak.
- soup: the uniform soup of 8 perturbed coatnet_2 checkpoints (`ich_keras.soups.uniform`) against numpy's mean.
- path: convert -> fit (configs/coatnet0.toml, a few hundred steps) -> soup -> analyze -> export, each the CLI a
  user runs, on a generated ImageFolder and a random-weight timm W0.
- first-step: a fresh process's first training step, XLA cache cold then warm (`first_step.py`).

They run in the order parity, path, soup, the target model's speed, first-step, the other speed models; the real
path beside parity (its commands are processes of their own, mostly compiling on the host's CPUs: it starts first
and is waited for at its place), every timed section alone. Each failure is kept to its
own row or section, and the report is rewritten after each section. The plans and what the sections share are in
`gpu_plan.py`, the speed sections in `gpu_speed.py`.

Exit status 1 when a correctness check fails; speed targets are reported (met / not met), never enforced.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch  # noqa: I001  (before TensorFlow, which keras-hub imports)
import timm

import first_step
from gpu_plan import DRY, REAL, Plan, Result, cause_line, release_memory, table, verdict
from gpu_speed import check_speed
from ich_keras import models, parity, soups
from ich_keras.convert import convert
from ich_keras.errors import UserError

import h5py
import jax
import keras
import numpy as np
import safetensors.numpy

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from image_folder import make_image_folder  # noqa: E402  (a test helper: tests/ is not a package)

PARITY_TOLERANCE = parity.TOLERANCE  # max |Δlogit| over max |logit|, as the parity tests assert
SOUP_TOLERANCE = 1e-5  # float32 accumulation errs by ~1e-7; an ingredient left out moves the mean by ~1e-3


@contextlib.contextmanager
def full_float32():
    """float32 matmuls and convolutions in full precision on both sides (a GPU's default TF32 is not float32)."""
    saved = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = torch.backends.cudnn.conv.fp32_precision = "ieee"
    try:
        with jax.default_matmul_precision("highest"):
            yield
    finally:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = saved


class OnDevice(torch.nn.Module):
    """A torch model run on `device` for callers that pass and expect CPU tensors (as `parity.compare` does)."""

    def __init__(self, model: torch.nn.Module, device: str):
        super().__init__()
        self.device = torch.device(device)
        self.model = model.to(self.device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.to(self.device)).cpu()


def parity_row(name: str, size: int, device: str) -> tuple[list, bool | None]:
    """One model against timm: its table row, and passed (None, not checked, where the installed timm lacks it)."""
    start = time.perf_counter()
    try:
        state_dict = parity.random_state_dict(parity.timm_model(name, 1000, size))
    except UserError as error:  # an older timm: the row says to upgrade it, not that the port is wrong
        return [f"`{name}`", size, "", "", "", "", "", f"not checked: {error}"], None
    reference = OnDevice(parity.timm_model(name, 1000, size, state_dict), device)
    model, _ = convert(name, state_dict, image_size=size)
    with full_float32():
        r = parity.compare(model, reference, size, batch=4)
    passed = parity.disagreement(r, PARITY_TOLERANCE) is None
    return [f"`{name}`", size, f"{r['max_abs_diff']:.2e}", f"{r['max_abs_reference']:.3f}",
            f"{r['relative_error']:.2e}", f"{r['top1_agreement']:.0%}", f"{time.perf_counter() - start:.0f}",
            "ok" if passed else "FAILED"], passed


def check_parity(plan: Plan) -> Result:
    """Every model of the plan against timm on the same device, float32, batch 4; a model that raises fails its
    own row, and the others still run."""
    rows, ok = [], True
    for name, size in plan.parity:
        try:
            row, passed = parity_row(name, size, plan.device)
        except Exception as error:
            row, passed = [f"`{name}`", size, "", "", "", "", "", f"FAILED: {cause_line(error)}"], False
        ok &= passed is True  # a model the installed timm lacks is not proven equal either
        rows.append(row)
        print(f"   {name}: {row[-1]}", flush=True)
        release_memory()
    header = ["model", "px", "max abs Δlogit", "max abs logit", "relative", "top-1 agree", "s", "result"]
    note = f"Passes at relative <= {PARITY_TOLERANCE:g} with identical top-1; 4 random images, timm on `{plan.device}`."
    return Result([note, "", *table(header, rows)], ok)


def check_first_step(plan: Plan) -> Result:
    """A fresh process's first and second training step (float32), the XLA cache cold then warm."""
    name, size, batch = plan.first_step
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for label in plan.first_step_caches:
            r = first_step.run(name, size, batch, cache)
            rows.append([f"`{name}`", size, batch, label, f"{r['first_s']:.1f}", f"{r['second_s']:.3f}"])
    note = "`benchmarks/first_step.py`: build, compile as fit does, time `train_on_batch` twice; float32."
    return Result([note, "", *table(["model", "px", "batch", "XLA cache", "first step s", "second step s"], rows)])


def path_steps(plan: Plan, work: Path) -> list[tuple[str, list[str], Path]]:
    """(step, `python -m` arguments, what it must leave behind) for each CLI of the real path."""
    run, w0, exported = work / "run", work / f"{plan.path_model}.weights.h5", work / "soup_savedmodel"
    soup = "soups/uniform/soup.weights.h5"
    sets = [f'data.source="{work / "images"}"', f"data.image_size={plan.path_size}",
            f'model.name="{plan.path_model}"', f'model.init="{w0}"', f'train.precision="{plan.precision}"',
            *plan.path_sets]
    return [
        ("convert", ["ich_keras.convert", "--model", plan.path_model, "--checkpoint", str(work / "timm.safetensors"),
                     "--output", str(w0), "--image-size", str(plan.path_size)], w0),
        ("fit", ["ich_keras.fit", "--config", str(ROOT / "configs/coatnet0.toml"), "--workdir", str(run), "--quiet",
                 *[arg for s in sets for arg in ("--set", s)]], run / "results.json"),
        ("soup", ["ich_keras.soup", str(run), "--uniform", "--greedy", "--quiet"], run / soup),
        ("analyze", ["ich_keras.analyze", str(run), "--quiet"], run / "analysis/report.md"),
        # SavedModel: the format that needs no extra, and ONNX's conversion takes twice as long.
        ("export", ["ich_keras.export", str(run), "--weights", soup, "--format", "savedmodel",
                    "--output", str(exported)], exported / "ich_keras_export.json"),
    ]


def prepare_path(plan: Plan, work: Path) -> None:
    """The generated ImageFolder and a 1000-class timm W0 with random weights (what a user downloads)."""
    classes, per_class = plan.path_images
    make_image_folder(work / "images", classes=classes, per_class=per_class, size=plan.path_size)
    state_dict = parity.random_state_dict(parity.timm_model(plan.path_model, 1000, plan.path_size))
    safetensors.numpy.save_file(state_dict, work / "timm.safetensors")


def check_real_path(plan: Plan, work: Path) -> Result:
    """The CLIs one after another, as a user runs them, each timed; a failed step skips the rest."""
    # A fresh XLA cache: the first run a user makes, while later steps may reuse what fit compiled.
    env = {**os.environ, "ICH_KERAS_XLA_CACHE": str(work / "xla_cache")}
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    prepare_path(plan, work)
    rows = [["images + timm W0", "(in process)", f"{time.perf_counter() - start:.2f}", "ok"]]
    details, failed = [], False
    for step, args, output in path_steps(plan, work):
        if failed:
            rows.append([step, f"`python -m {args[0]}`", "", "skipped"])
            continue
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env, cwd=work)
        failed = done.returncode != 0 or not output.exists()
        rows.append([step, f"`python -m {args[0]}`", f"{time.perf_counter() - start:.1f}",
                     "FAILED" if failed else "ok"])
        print(f"   {step}: {rows[-1][2]} s, {rows[-1][3]}", flush=True)
        if failed:
            details += ["", f"`{step}` exit status {done.returncode}; last lines of its output:", "```",
                        *(done.stdout + done.stderr).strip().splitlines()[-15:], "```"]
    classes, per_class = plan.path_images
    note = (f"`{plan.path_model}` at {plan.path_size} px, configs/coatnet0.toml with "
            + ", ".join(f"`{s}`" for s in (f'train.precision="{plan.precision}"', *plan.path_sets))
            + f"; {classes} classes x {per_class} generated images in train and test; seconds include each process's "
              "start-up and compilation.")
    return Result([note, "", *table(["step", "command", "s", "result"], rows), *details], not failed)


def perturbed_copies(base: soups.WeightSet, folder: Path, count: int) -> list[Path]:
    """`count` checkpoints: `base` plus N(0, 0.01) noise on every float variable, each with its own seed."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        noise = np.random.default_rng(i).standard_normal(base.layout.size, dtype=np.float32)
        paths.append(soups.save(soups.WeightSet(base.layout, np.asarray(base.flat) + 0.01 * noise, base.others),
                                folder / f"epoch_{i:03d}.weights.h5"))
    return paths


def largest_deviation(soup: soups.WeightSet, paths: list[Path], keys: list[str]) -> float:
    """max |soup - numpy mean of the files| over `keys`, the files read afresh with h5py."""
    deviation = 0.0
    for key in keys:
        stacked = []
        for path in paths:
            with h5py.File(path, "r") as f:
                stacked.append(f[key][()])
        deviation = max(deviation, float(np.abs(soup[key] - np.mean(stacked, axis=0)).max()))
    return deviation


def check_soup(plan: Plan, work: Path) -> Result:
    """Times `soups.uniform` over perturbed copies of one model's weights and checks it on three variables."""
    name, size, count = plan.soup
    base = soups.read(models.build(name, 1000, size))
    paths = perturbed_copies(base, work / "soup", count)
    start = time.perf_counter()
    soup = soups.uniform(paths)
    seconds = time.perf_counter() - start
    floats = [v for v in base.layout.variables if v.is_float]
    keys = [floats[0].key, max(floats, key=lambda v: v.size).key, floats[-1].key]
    deviation = largest_deviation(soup, paths, keys)
    ok = deviation <= SOUP_TOLERANCE
    rows = [[f"`{name}`", count, f"{paths[0].stat().st_size / 2**20:.1f}", f"{seconds:.2f}", f"{deviation:.1e}",
             "ok" if ok else "FAILED"]]
    note = ("`ich_keras.soups.uniform` over checkpoints written beforehand (page cache warm); checked against "
            "numpy's mean of the same files on three variables (the first, the largest, the last).")
    header = ["model", "checkpoints", "MiB each", "uniform soup s", "max abs Δ vs numpy", "result"]
    return Result([note, "", *table(header, rows)], ok)


def machine_lines(plan: Plan) -> list[str]:
    """Device, versions and host of this run."""
    device = jax.devices()[0]
    cuda = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    rows = [["mode", plan.name], ["JAX device", f"{device.platform}: {device.device_kind} (x{jax.device_count()})"],
            ["torch device", f"{plan.device} ({cuda}); intra-op threads: {torch.get_num_threads()}"],
            ["versions", f"jax {jax.__version__}, keras {keras.__version__}, torch {torch.__version__}, "
                         f"timm {timm.__version__}, Python {platform.python_version()}"],
            ["host", f"{platform.node()}, {os.cpu_count()} CPUs"]]
    return table(["what", "value"], rows)


def run_section(title: str, check, *args) -> tuple[str, Result, float]:
    """Runs one check; an exception fails the section and its traceback goes into the report."""
    print(f"== {title}", flush=True)
    start = time.perf_counter()
    try:
        result = check(*args)
    except Exception:
        result = Result(["FAILED with an exception:", "", "```", *traceback.format_exc().splitlines()[-20:], "```"],
                        False)
    seconds = time.perf_counter() - start
    print(f"== {title}: {seconds:.0f} s, {'ok' if result.ok else 'FAILED'}", flush=True)
    return title, result, seconds


def report(plan: Plan, command: str, sections: list[tuple[str, Result, float]], total_s: float,
           not_run: list[str]) -> str:
    """The markdown report: `command`, machine, targets, then one part per section; `not_run` lists the sections
    skipped for --stop-after."""
    ok = all(result.ok for _, result, _ in sections)
    correctness = ("pass" if ok else "FAIL") if sections else "not run"
    targets = [t for _, result, _ in sections for t in result.targets]
    budget = plan.time_budget_s
    targets.append((f"all sections <= {budget} s (installs and imports not counted)", f"{total_s:.0f} s",
                    verdict(total_s <= budget)))
    lines = [f"# GPU check: {plan.name}", "",
             f"`{command}`, "
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {total_s:.0f} s; correctness: "
             f"**{correctness}**.", "", "## Machine", "", *machine_lines(plan), "", "## Targets", "",
             "Reported, not enforced: the exit status says only whether the correctness checks passed."
             + (" A dry run's numbers come from tiny models on a CPU and say nothing about a GPU." if plan is DRY
                else ""), "", *table(["target", "measured", "status"], targets)]
    if not_run:
        lines += ["", "Not run (started past --stop-after): " + "; ".join(not_run) + "."]
    for title, result, seconds in sections:
        lines += ["", f"## {title} ({seconds:.0f} s{'' if result.ok else ', FAILED'})", "", *result.lines]
    return "\n".join(lines) + "\n"


def sections(plan: Plan, work: Path) -> dict[str, tuple]:
    """{name: (title, check, *args)} in the order they run: the correctness checks first (the real path beside
    parity), then the timed sections, the target model's first, so that a run cut short still reports them."""
    ordered = [plan.target_model, *(name for name in plan.speed_models if name != plan.target_model)]
    first, *others = [(f"speed-{name}", (f"{plan.precision} training speed and MFU: `{name}`", check_speed, plan, name))
                      for name in ordered]
    return dict([
        ("parity", ("Parity with timm (float32)", check_parity, plan)),
        ("path", ("Real path: convert, fit, soup, analyze, export", check_real_path, plan, work / "path")),
        ("soup", (f"Uniform soup of {plan.soup[2]} checkpoints", check_soup, plan, work)),
        first,
        ("first-step", ("First-step latency", check_first_step, plan)),
        *others,
    ])


# Started at once beside the sections before it in the order (parity, where it runs), and waited for at its
# place: its commands compile on the host's CPUs while parity uses little of them; every section after it runs
# alone (they are timed: the soup's seconds too).
BESIDE = "path"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes")
    parser.add_argument("--report", type=Path, default=Path("gpu_report.md"))
    parser.add_argument("--workdir", type=Path, help="keep the generated files here (default: a temporary folder)")
    parser.add_argument("--only", nargs="+", metavar="SECTION",
                        help="run only these sections (parity, speed-MODEL, soup, path, first-step; default: all)")
    parser.add_argument("--stop-after", type=float, metavar="SECONDS",
                        help="start no section after this many seconds (for a machine lent for a fixed time)")
    args = parser.parse_args(argv)
    plan = DRY if args.dry_run else REAL
    if plan is REAL and (jax.default_backend() != "gpu" or not torch.cuda.is_available()):
        print(f"error: the GPU check needs JAX and torch on a GPU. Received: jax backend {jax.default_backend()!r}, "
              f"torch.cuda.is_available() {torch.cuda.is_available()}", file=sys.stderr)
        return 2
    if plan.torch_threads:
        torch.set_num_threads(plan.torch_threads)
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        work = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu_check_")))
        work.mkdir(parents=True, exist_ok=True)
        planned = sections(plan, work)
        unknown = sorted(set(args.only or ()) - set(planned))
        if unknown:
            print(f"error: unknown section(s) {', '.join(unknown)}; expected some of: {', '.join(planned)}",
                  file=sys.stderr)
            return 2
        args.report.parent.mkdir(parents=True, exist_ok=True)
        command = " ".join(["bash benchmarks/gpu_check.sh", *(["--dry-run"] if args.dry_run else []),
                            *(["--only", *args.only] if args.only else []),
                            *(["--stop-after", f"{args.stop_after:g}"] if args.stop_after is not None else [])])
        chosen = {name: section for name, section in planned.items() if args.only is None or name in args.only}
        done, not_run = [], []
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            names = list(chosen)
            beside = None
            if BESIDE in names and names.index(BESIDE) > 0:
                title, check, *check_args = chosen[BESIDE]
                title = f"{title} (beside {', '.join(names[:names.index(BESIDE)])})"
                beside = pool.submit(run_section, title, check, *check_args)
            for name, (title, check, *check_args) in chosen.items():
                if name == BESIDE and beside is not None:
                    done.append(beside.result())
                elif args.stop_after is not None and time.perf_counter() - start > args.stop_after:
                    not_run.append(title)
                else:
                    done.append(run_section(title, check, *check_args))
                # Written after every section: a run cut short (a lease, a timeout) keeps what it measured.
                args.report.write_text(report(plan, command, done, time.perf_counter() - start, not_run))
    text = args.report.read_text()
    print(text)
    return 0 if done and all(result.ok for _, result, _ in done) else 1


if __name__ == "__main__":
    sys.exit(main())
