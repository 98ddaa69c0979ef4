"""What the GPU check's sections share (`benchmarks/gpu_check.py`): the plans of the real run and of its CPU dry
run, a section's result, and the markdown and clean-up helpers every section uses."""

from __future__ import annotations

import gc
from dataclasses import dataclass, field

import torch  # noqa: I001  (before TensorFlow, which keras-hub imports)

from ich_keras import models

import keras


@dataclass(frozen=True)
class Plan:
    """What each section runs: the real check on one GPU, or its dry run on the CPU."""

    name: str
    device: str  # torch's device; JAX takes its default one
    precision: str  # of the speed section and of fit
    torch_threads: int  # torch's intra-op threads in this process; 0 keeps torch's default
    parity: tuple[tuple[str, int], ...]  # (model, px)
    speed_models: tuple[str, ...]  # one section each, the target model's first
    target_model: str  # the speed model that carries the targets
    speed: tuple[int, int, int, int]  # px, batch, steps a round, rounds
    compile_backend: str  # torch.compile's backend
    first_step: tuple[str, int, int]  # model, px, batch
    first_step_caches: tuple[str, ...]  # fresh processes, in turn, sharing one XLA cache
    path_model: str
    path_size: int
    path_images: tuple[int, int]  # classes, images per class in train and in test
    path_sets: tuple[str, ...]  # fit overrides of configs/coatnet0.toml beyond data, model and px
    soup: tuple[str, int, int]  # model, px, checkpoints
    time_budget_s: int


REAL = Plan(
    name="GPU", device="cuda", precision="bfloat16", torch_threads=0,
    parity=tuple((name, 224) for name in models.model_names()),
    speed_models=("coatnet_2_rw_224", "coatnet_0_rw_224"), target_model="coatnet_2_rw_224",
    speed=(224, 64, 25, 3), compile_backend="inductor",
    first_step=("coatnet_0_rw_224", 224, 16), first_step_caches=("cold", "warm"),  # the real path's model and batch
    path_model="coatnet_0_rw_224", path_size=224, path_images=(4, 40),
    path_sets=("train.epochs=3", "train.steps_per_epoch=96"),  # 288 batches of 16, 36 updates of 128
    soup=("coatnet_2_rw_224", 224, 8), time_budget_s=480,
)
# Tiny sizes, float32, torch.compile without inductor and one torch thread. On a CPU without bf16 units XLA's bf16
# fit takes twice float32's time and torch's bf16 autocast runs at 0.3 img/s; inductor's C++ compilation alone takes
# minutes; and on 2 cores torch's second OpenMP thread waits on XLA's threads in the same process (timm eager at
# 1 img/s instead of 68).
DRY = Plan(
    name="dry run (CPU)", device="cpu", precision="float32", torch_threads=1, parity=(("coatnet_tiny", 32),),
    speed_models=("coatnet_tiny",), target_model="coatnet_tiny", speed=(32, 2, 2, 2), compile_backend="aot_eager",
    first_step=("coatnet_tiny", 32, 2), first_step_caches=("cold",),
    path_model="coatnet_tiny", path_size=32, path_images=(3, 6),
    path_sets=("train.epochs=2", "train.steps_per_epoch=2", "train.batch_size=4", "train.grad_accum_steps=2",
               "data.cache=true"),
    soup=("coatnet_tiny", 32, 2), time_budget_s=180,
)


@dataclass
class Result:
    """A section's markdown, whether its correctness checks passed, and its targets (target, measured, met)."""

    lines: list[str]
    ok: bool = True
    targets: list[tuple[str, str, str]] = field(default_factory=list)


def table(header: list[str], rows: list[list]) -> list[str]:
    """Markdown table lines; a column of numbers (int, float, "12.5%", "1.20x") is right-aligned."""

    def numeric(cell) -> bool:
        try:
            float(str(cell).rstrip("%x"))
        except ValueError:
            return False
        return True

    columns = zip(*rows) if rows else [()] * len(header)
    rules = ["---:" if column and all(map(numeric, column)) else "---" for column in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rules) + "|"]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def verdict(met: bool | None) -> str:
    """A target's status: met, not met, or n/a where it could not be measured."""
    return "n/a" if met is None else ("met" if met else "not met")


def percent(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{fraction:.1%}"


def release_memory() -> None:
    """Frees what a finished section held, so the next one (or a CLI's process) finds the device's memory."""
    keras.backend.clear_session()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def cause_line(error: BaseException) -> str:
    """An exception as one table cell: its innermost cause's type and first line (torch.compile wraps the cause in
    a `BackendCompilerFailed` whose message ends with advice on its own logging)."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = [line for line in str(error).splitlines() if line.strip()] or [""]
    return f"{type(error).__name__}: {lines[0].strip()}".replace("|", "/")
