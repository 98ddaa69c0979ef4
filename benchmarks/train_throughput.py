"""Training-step and inference images/s: ich_keras (Keras 3 / JAX) against timm in PyTorch, in one process.

    python benchmarks/train_throughput.py --models coatnet_0_rw_224 --sizes 64 --batch 8
    python benchmarks/train_throughput.py --models coatnet_0_rw_224 coatnet_2_rw_224 resnet50 \
        vit_base_patch16_224 --sizes 64 224 --batch 8 --torch-compile

The same model (timm's weights converted), batch, input size, float32 and thread count on both sides; a training
step is forward, backward, global-norm clipping to 1.0 and AdamW (lr 1e-4, wd 1e-3) on soft-label cross-entropy.
Frameworks run alternately, `--repeats` rounds of `--steps` steps each, so load from the rest of the machine hits
both alike; each row gives min / median / max images/s over the rounds and the ratio of medians (>1: ich_keras
faster). "first step" is the latency of the first call (tracing + XLA compilation, or torch.compile), which a user
pays on every run. The header shows GLIBC_TUNABLES: run with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` to time both
frameworks with the huge pages the ich_keras commands ask for (`ich_keras.host_memory`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch  # noqa: I001  (before TensorFlow, which keras-hub imports)
import timm  # noqa: F401

import ich_keras  # noqa: F401  (selects the JAX backend before keras is imported)
from ich_keras import parity
from ich_keras.convert import convert

import keras
import numpy as np

from recipe import CLIP_NORM, LEARNING_RATE, WEIGHT_DECAY, compile_as_fit, random_batch

# Keras' dtype policy and torch's autocast dtype for each precision a benchmark can ask for.
PRECISIONS = {"float32": ("float32", None), "bfloat16": ("mixed_bfloat16", torch.bfloat16)}


class KerasRunner:
    """ich_keras model compiled as `ich_keras.fit` compiles it (AdamW with global clipnorm, CE from logits).

    Training steps run through `model.fit`, as `ich_keras.fit` runs them: Keras keeps the model state inside
    the jitted step for a whole `fit` call and writes it back to the variables once at the end (each
    `train_on_batch` call would do that write-back, ~30 ms for CoAtNet-0's 620 variables, every step).
    """

    def __init__(self, model: keras.Model):
        self.model = model
        self._repeated = (None, None, 0, None)  # images, labels, steps, and the two tiled `steps` times
        compile_as_fit(model)

    def train_steps(self, images, labels, steps: int):
        # The same batch `steps` times; fit returns after the last step has finished (its logs are host floats).
        images, labels = self._tiled(images, labels, steps)
        self.model.fit(images, labels, batch_size=len(images) // steps, epochs=1, shuffle=False, verbose=0)

    def infer_steps(self, images, labels, steps: int):
        for _ in range(steps):
            np.asarray(self.model.predict_on_batch(images))

    def _tiled(self, images, labels, steps: int):
        # Tiled once per batch and step count: a copy of hundreds of MB at 224 px is not part of a training step.
        last_images, last_labels, last_steps, tiled = self._repeated
        if images is not last_images or labels is not last_labels or steps != last_steps:
            repeat = (steps,) + (1,) * (images.ndim - 1)
            tiled = np.tile(images, repeat), np.tile(labels, (steps, 1))
            self._repeated = (images, labels, steps, tiled)
        return tiled


class TorchRunner:
    """The same network in timm, eager or torch.compile'd, with the same optimizer and clipping.

    Args:
        model: the timm model.
        compile_backend: None for eager, else the `torch.compile` backend ("inductor" is the default one).
        device: where the model and each batch go ("cpu", "cuda").
        amp_dtype: None for float32, else the `torch.autocast` dtype of the forward pass and the loss.
    """

    def __init__(self, model: torch.nn.Module, compile_backend: str | None = None, device: str = "cpu",
                 amp_dtype: torch.dtype | None = None):
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.amp_dtype = amp_dtype
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
        self.forward = torch.compile(model, backend=compile_backend) if compile_backend else model

    def train_steps(self, images, labels, steps: int):
        for _ in range(steps):
            self._train_step(images, labels)
        self._synchronize()

    def infer_steps(self, images, labels, steps: int):
        for _ in range(steps):
            self._infer(images)

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(self.device)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def _train_step(self, images, labels):
        self.model.train()
        x = self._tensor(images.transpose(0, 3, 1, 2).copy())
        with self._autocast():
            loss = torch.nn.functional.cross_entropy(self.forward(x), self._tensor(labels))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), CLIP_NORM)
        self.optimizer.step()

    def _infer(self, images):
        self.model.eval()
        with torch.no_grad(), self._autocast():
            self.forward(self._tensor(images.transpose(0, 3, 1, 2).copy())).float().cpu().numpy()

    def _synchronize(self):
        # CUDA kernels run asynchronously: a step has finished only when the device says so.
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _timed(run_steps, images, labels, steps: int) -> float:
    start = time.perf_counter()
    run_steps(images, labels, steps)
    return time.perf_counter() - start


def make_runners(name: str, size: int, precision: str = "float32", compile_backend: str | None = None,
                 device: str = "cpu", classes: int = 1000) -> dict:
    """{label: runner} for ich_keras, timm eager and (with `compile_backend`) timm torch.compile on the same weights.

    A random timm model (`parity.random_state_dict`) converted to ich_keras; `precision` "bfloat16" builds the Keras
    model under the mixed_bfloat16 policy and runs timm under `torch.autocast`.
    """
    policy, amp_dtype = PRECISIONS[precision]
    state_dict = parity.random_state_dict(parity.timm_model(name, classes, size))
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model, _ = convert(name, state_dict, image_size=size)
    finally:
        keras.config.set_dtype_policy(previous)
    runners = {"ich_keras": KerasRunner(model)}
    runners["timm eager"] = TorchRunner(parity.timm_model(name, classes, size, state_dict), None, device, amp_dtype)
    if compile_backend:
        compiled = parity.timm_model(name, classes, size, state_dict)
        runners["timm torch.compile"] = TorchRunner(compiled, compile_backend, device, amp_dtype)
    return runners


def measure(runners: dict, task: str, images, labels, steps: int, repeats: int) -> dict[str, dict]:
    """Per runner label: `first_step_s` (its first call) and `rates`, images/s of `repeats` rounds of `steps` steps.

    Runners take turns within each round, so load from the rest of the machine hits all alike.
    """
    first = {label: _timed(getattr(r, f"{task}s"), images, labels, 1) for label, r in runners.items()}
    rates = {label: [] for label in runners}
    for _ in range(repeats):
        for label, runner in runners.items():
            rates[label].append(len(images) * steps / _timed(getattr(runner, f"{task}s"), images, labels, steps))
    return {label: {"first_step_s": first[label], "rates": rates[label]} for label in runners}


def summarise(name: str, size: int, task: str, measured: dict[str, dict]) -> list[dict]:
    """One row per runner: min / median / max images/s, first-step seconds and ich_keras' median over its median."""
    ours = statistics.median(measured["ich_keras"]["rates"])
    return [{
        "model": name, "size": size, "task": task, "framework": label,
        "min": min(m["rates"]), "median": statistics.median(m["rates"]), "max": max(m["rates"]),
        "first_step_s": m["first_step_s"], "ratio": ours / statistics.median(m["rates"]),
    } for label, m in measured.items()]


def benchmark(name: str, size: int, batch: int, steps: int, repeats: int, torch_compile: bool) -> list[dict]:
    """Rows (one per task and PyTorch path) of images/s statistics for one model and input size."""
    runners = make_runners(name, size, compile_backend="inductor" if torch_compile else None)
    images, labels = random_batch(batch, size, 1000)
    rows = []
    for task in ("train_step", "infer_step"):
        rows += summarise(name, size, task, measure(runners, task, images, labels, steps, repeats))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["coatnet_0_rw_224"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[64])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="steps per timed round")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per framework, alternating")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    parser.add_argument("--torch-compile", action="store_true", help="also time torch.compile (slow to compile)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"keras {keras.__version__} ({keras.backend.backend()}), torch {torch.__version__}, timm {timm.__version__}, "
          f"{os.cpu_count()} CPUs, torch threads {args.threads}, batch {args.batch}, float32, "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}")
    print("| model | px | task | framework | img/s min | median | max | first step s | ich_keras / this |")
    print("|---|---:|---|---|---:|---:|---:|---:|---:|")
    for name in args.models:
        for size in args.sizes:
            for r in benchmark(name, size, args.batch, args.steps, args.repeats, args.torch_compile):
                print(f"| `{r['model']}` | {r['size']} | {r['task']} | {r['framework']} | {r['min']:.1f} | "
                      f"{r['median']:.1f} | {r['max']:.1f} | {r['first_step_s']:.1f} | {r['ratio']:.2f} |",
                      flush=True)


if __name__ == "__main__":
    main()
