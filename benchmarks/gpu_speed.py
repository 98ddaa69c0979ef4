"""The GPU check's speed sections (`benchmarks/gpu_check.py`): training images/s of one model, ich_keras against timm
eager and torch.compile (`train_throughput.py`), and MFU from XLA's FLOP count of the step (`step_flops.py`, on
the CPU)."""

from __future__ import annotations

import copy

import torch  # noqa: I001  (before TensorFlow, which keras-hub imports)

import step_flops
import train_throughput
from gpu_plan import Plan, Result, cause_line, percent, release_memory, table, verdict

import jax
import numpy as np

# bf16 dense peak FLOP/s by `jax.devices()[0].device_kind`; another kind has no MFU.
BF16_PEAK_FLOPS = {"NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H200": 989e12}
TARGET_SPEEDUP, TARGET_MFU = 1.2, 0.35
COMPILED, UNFUSED = "timm torch.compile", "timm torch.compile, attention unfused"  # the speed rows' labels


def unfused_compiled_runner(eager: train_throughput.TorchRunner, plan: Plan) -> train_throughput.TorchRunner:
    """A copy of timm eager's model with its fused attention off, torch.compile'd: torch 2.11's inductor fails in
    the backward of coatnet_2's bf16 attention with a relative-position bias (`(*bias): last dimension must be
    contiguous`, seen on an H200); without `scaled_dot_product_attention` it compiles the attention itself."""
    model = copy.deepcopy(eager.model)
    for module in model.modules():
        if hasattr(module, "fused_attn"):  # timm's attention layers choose their path by it at each call
            module.fused_attn = False
    return train_throughput.TorchRunner(model, plan.compile_backend, plan.device,
                                        train_throughput.PRECISIONS[plan.precision][1])


def first_steps(runners: dict, images: np.ndarray, labels: np.ndarray) -> tuple[dict[str, float], dict[str, str]]:
    """Each runner's first training step in seconds, and the error of each one that raised (removed from
    `runners`); ich_keras' own error is raised."""
    first, failed = {}, {}
    for label, runner in list(runners.items()):
        try:
            first[label] = train_throughput.timed(runner.train_steps, images, labels, 1)["seconds"]
        except Exception as error:
            if label == "ich_keras":
                raise
            failed[label] = cause_line(error)
            del runners[label]
        print(f"   {label}: first step {failed.get(label) or f'{first[label]:.1f} s'}", flush=True)
    return first, failed


def measure_frameworks(name: str, plan: Plan) -> tuple[list[dict], dict[str, str]]:
    """`train_throughput.summarise` rows of one model's training steps, and the error of each framework that failed
    (a failed torch.compile is retried once with timm's attention unfused)."""
    size, batch, steps, repeats = plan.speed
    runners = train_throughput.make_runners(name, size, plan.precision, plan.compile_backend, plan.device)
    images, labels = train_throughput.random_batch(batch, size, 1000)
    first, failed = first_steps(runners, images, labels)
    if COMPILED in failed and "timm eager" in runners:
        retry = {UNFUSED: unfused_compiled_runner(runners["timm eager"], plan)}
        retry_first, retry_failed = first_steps(retry, images, labels)
        runners, first, failed = {**runners, **retry}, {**first, **retry_first}, {**failed, **retry_failed}
    measured = train_throughput.measure(runners, "train_step", images, labels, steps, repeats)
    for label, m in measured.items():
        m["first_step_s"] = first[label]  # `measure`'s own first call came after the one timed here
    del runners
    release_memory()
    return train_throughput.summarise(name, size, "train_step", measured), failed


def step_flops_on_cpu(name: str, plan: Plan) -> tuple[float | None, str]:
    """The FLOPs of one training step, counted in a CPU process once the timings are done (nothing runs beside
    them), and "" or why there is no count: MFU is then n/a, and the measured speeds stay."""
    size, batch, _, _ = plan.speed
    try:
        return step_flops.result(step_flops.start(name, size, batch, plan.precision)), ""
    except RuntimeError as error:
        return None, str(error)


def check_speed(plan: Plan, name: str) -> Result:
    """Training images/s of one model against timm eager and torch.compile, and MFU; the plan's target model also
    reports the targets. A framework that fails is named under the table; the others are still measured."""
    size, batch, steps, repeats = plan.speed
    peak = BF16_PEAK_FLOPS.get(jax.devices()[0].device_kind)
    if plan.device == "cuda":
        torch.backends.cudnn.benchmark = True  # timm's usual training setting
    summary, failed = measure_frameworks(name, plan)
    flops, no_count = step_flops_on_cpu(name, plan)
    count = f"no count: {no_count}" if flops is None else f"{flops / 1e9:.2f} GFLOP"
    # The same network whatever the framework: one FLOP count for every row.
    mfu = {r["framework"]: flops * r["median"] / batch / peak if peak and flops else None for r in summary}
    rows = [[f"`{name}`", r["framework"], f"{r['min']:.1f}", f"{r['median']:.1f}", f"{r['max']:.1f}",
             f"{r['first_step_s']:.2f}", f"{r['ratio']:.2f}", percent(mfu[r["framework"]])] for r in summary]
    header = ["model", "framework", "img/s min", "median", "max", "first step s", "ich_keras / this", "MFU"]
    lines = [
        f"Training step (forward, backward, clip, AdamW), {plan.precision} (Keras' policy "
        f"`{train_throughput.PRECISIONS[plan.precision][0]}`, the same dtype in torch's autocast), {size} px, "
        f"batch {batch}, {repeats} alternating rounds of {steps} steps; torch.compile backend "
        f"`{plan.compile_backend}`. MFU: the FLOPs of forward + backward by XLA's cost analysis of the lowered step "
        f"(`step_flops.py`, {count}) x median steps/s over the bf16 peak "
        f"({'n/a' if peak is None else f'{peak / 1e12:.0f} TFLOP/s'}).",
        "", *table(header, rows),
        *[f"\n`{label}` failed at its first step: {error}" for label, error in failed.items()],
    ]
    if name != plan.target_model:
        return Result(lines)
    compiled = next((r for r in summary if r["framework"] in (COMPILED, UNFUSED)), None)
    ours = mfu["ich_keras"]
    targets = [
        (f"`{name}` {plan.precision} training, ich_keras / torch.compile >= {TARGET_SPEEDUP}x",
         "n/a" if compiled is None else f"{compiled['ratio']:.2f}x ({compiled['framework']})",
         verdict(None if compiled is None else compiled["ratio"] >= TARGET_SPEEDUP)),
        (f"`{name}` {plan.precision} training MFU >= {TARGET_MFU:.0%}", percent(ours),
         verdict(None if ours is None else ours >= TARGET_MFU)),
    ]
    return Result(lines, True, targets)
