"""Training-step and inference images/s: ich_keras (Keras 3 / JAX) against timm in PyTorch, in one process.

    python benchmarks/train_throughput.py --models coatnet_0_rw_224 --sizes 64 --batch 8
    python benchmarks/train_throughput.py --models coatnet_0_rw_224 coatnet_2_rw_224 resnet50 \
        vit_base_patch16_224 --sizes 64 224 --batch 8 --torch-compile

The same model (timm's weights converted), batch, input size, precision (`--precisions`, float32 by default;
bfloat16 is Keras' mixed_bfloat16 policy against `torch.autocast`) and thread count on both sides; a training
step is forward, backward, global-norm clipping to 1.0 and AdamW (lr 1e-4, wd 1e-3) on soft-label cross-entropy.
Frameworks run alternately, `--repeats` rounds of `--steps` steps each, so load from the rest of the machine hits
both alike; each row gives min / median / max images/s over the rounds and the ratio of medians (>1: ich_keras
faster). "first step" is the latency of the first call (tracing + XLA compilation, or torch.compile), which a user
pays on every run; "system s" and "page faults" are medians a step of the process's system CPU time and minor page
faults over the rounds. The header shows GLIBC_TUNABLES and LD_PRELOAD: with `--host-memory commands` the script
starts itself again with what the ich_keras commands set (huge pages, the block cache: `ich_keras.host_memory`), for
both frameworks; with `--xla commands` ich_keras compiles with the commands' XLA options on the CPU (LLVM at -O1, the
memory-minimising scheduler: `ich_keras.compile_cache.set_cpu_flags`) instead of XLA's defaults.

By default the frameworks share this process. With `--processes separate` each runs in a process of its own, as a
user of either runs it, the rounds still taking turns: the check that sharing a process costs neither side
(benchmarks/README.md: at 224 px the ratio and ich_keras' system time were the same either way).
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import resource
import statistics
import sys
import time

import torch  # noqa: I001  (before TensorFlow, which keras-hub imports)
import timm  # noqa: F401

import ich_keras  # noqa: F401  (selects the JAX backend before keras is imported)
from ich_keras import compile_cache, host_memory, parity
from ich_keras.convert import convert

import keras
import numpy as np

from recipe import CLIP_NORM, KERAS_POLICIES, LEARNING_RATE, WEIGHT_DECAY, compile_as_fit, random_batch

# Keras' dtype policy and torch's autocast dtype for each precision a benchmark can ask for.
PRECISIONS = {"float32": (KERAS_POLICIES["float32"], None), "bfloat16": (KERAS_POLICIES["bfloat16"], torch.bfloat16)}


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
        self._batch = (None, None, None, None)  # images, labels, and their tensors on the device

    def train_steps(self, images, labels, steps: int):
        for _ in range(steps):
            self._train_step(images, labels)
        self._synchronize()

    def infer_steps(self, images, labels, steps: int):
        for _ in range(steps):
            self._infer(images)

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(self.device)

    def _on_device(self, images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        # Training moves a batch once: the steps reuse it, and a training loop's loader overlaps this copy with the
        # previous step (a synchronous copy of 38 MB at 224 px, batch 64, would weigh on a GPU's step). Inference
        # copies each call, as predict_on_batch does.
        if self._batch[0] is not images or self._batch[1] is not labels:
            self._batch = images, labels, self._tensor(images.transpose(0, 3, 1, 2).copy()), self._tensor(labels)
        return self._batch[2], self._batch[3]

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def _train_step(self, images, labels):
        self.model.train()
        x, y = self._on_device(images, labels)
        with self._autocast():
            loss = torch.nn.functional.cross_entropy(self.forward(x), y)
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


class OwnProcess:
    """A runner built and run in a process of its own (spawned, so it shares nothing with this one).

    `round` asks it for `steps` steps of a task and returns what `timed` measured there.
    """

    def __init__(self, label: str, make_args: tuple, images, labels, threads: int):
        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, label, make_args, images, labels, threads),
                                        daemon=True)
        self._process.start()

    def round(self, task: str, steps: int) -> dict:
        self._connection.send((task, steps))
        return self._connection.recv()

    def close(self) -> None:
        self._connection.send(None)
        self._process.join()


def _serve(connection, label: str, make_args: tuple, images, labels, threads: int) -> None:
    torch.set_num_threads(threads)
    runner = make_runners(*make_args, only=label)[label]
    while (request := connection.recv()) is not None:
        task, steps = request
        connection.send(timed(getattr(runner, f"{task}s"), images, labels, steps))


def timed(run_steps, images, labels, steps: int) -> dict:
    """Wall seconds of `run_steps(images, labels, steps)`, and this process's system CPU seconds and minor page
    faults over it."""
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    run_steps(images, labels, steps)
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return {"seconds": seconds, "system_s": after.ru_stime - before.ru_stime,
            "faults": after.ru_minflt - before.ru_minflt}


def make_runners(name: str, size: int, precision: str = "float32", compile_backend: str | None = None,
                 device: str = "cpu", classes: int = 1000, only: str | None = None) -> dict:
    """{label: runner} for ich_keras, timm eager and (with `compile_backend`) timm torch.compile on the same weights.

    A random timm model (`parity.random_state_dict`, seeded: every process gets the same) converted to ich_keras;
    `precision` "bfloat16" builds the Keras model under the mixed_bfloat16 policy and runs timm under
    `torch.autocast`. `only` builds just the runner of that label.
    """
    policy, amp_dtype = PRECISIONS[precision]
    state_dict = parity.random_state_dict(parity.timm_model(name, classes, size))
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model, _ = convert(name, state_dict, image_size=size)
    finally:
        keras.config.set_dtype_policy(previous)
    builders = {"ich_keras": lambda: KerasRunner(model),
                "timm eager": lambda: TorchRunner(parity.timm_model(name, classes, size, state_dict), None, device,
                                                  amp_dtype)}
    if compile_backend:
        builders["timm torch.compile"] = lambda: TorchRunner(parity.timm_model(name, classes, size, state_dict),
                                                             compile_backend, device, amp_dtype)
    return {label: build() for label, build in builders.items() if only in (None, label)}


def _round(runner, task: str, images, labels, steps: int) -> dict:
    if isinstance(runner, OwnProcess):
        return runner.round(task, steps)
    return timed(getattr(runner, f"{task}s"), images, labels, steps)


def measure(runners: dict, task: str, images, labels, steps: int, repeats: int) -> dict[str, dict]:
    """Per runner label: `first_step_s` (its first call), and over `repeats` rounds of `steps` steps the `rates`
    (images/s), `system_s` and `faults` (a step each).

    Runners take turns within each round, so load from the rest of the machine hits all alike.
    """
    first = {label: _round(r, task, images, labels, 1)["seconds"] for label, r in runners.items()}
    rounds = {label: [] for label in runners}
    for _ in range(repeats):
        for label, runner in runners.items():
            rounds[label].append(_round(runner, task, images, labels, steps))
    return {label: {"first_step_s": first[label],
                    "rates": [len(images) * steps / r["seconds"] for r in rounds[label]],
                    "system_s": [r["system_s"] / steps for r in rounds[label]],
                    "faults": [r["faults"] / steps for r in rounds[label]]} for label in runners}


def summarise(name: str, size: int, task: str, measured: dict[str, dict]) -> list[dict]:
    """One row per runner: min / median / max images/s, first-step seconds, median system seconds and page faults
    a step, and ich_keras' median images/s over its median."""
    ours = statistics.median(measured["ich_keras"]["rates"])
    return [{
        "model": name, "size": size, "task": task, "framework": label,
        "min": min(m["rates"]), "median": statistics.median(m["rates"]), "max": max(m["rates"]),
        "first_step_s": m["first_step_s"], "system_s": statistics.median(m["system_s"]),
        "faults": statistics.median(m["faults"]), "ratio": ours / statistics.median(m["rates"]),
    } for label, m in measured.items()]


def benchmark(name: str, size: int, batch: int, steps: int, repeats: int, torch_compile: bool,
              separate: bool = False, threads: int = 1, precision: str = "float32") -> list[dict]:
    """Rows (one per task and PyTorch path) of images/s statistics for one model, input size and precision; with
    `separate` each framework runs in a process of its own (`threads` torch threads there)."""
    make_args = (name, size, precision, "inductor" if torch_compile else None)
    images, labels = random_batch(batch, size, 1000)
    if separate:
        labels_built = ["ich_keras", "timm eager"] + (["timm torch.compile"] if torch_compile else [])
        runners = {label: OwnProcess(label, make_args, images, labels, threads) for label in labels_built}
    else:
        runners = make_runners(*make_args)
    rows = []
    for task in ("train_step", "infer_step"):
        rows += summarise(name, size, task, measure(runners, task, images, labels, steps, repeats))
    for runner in runners.values():
        if isinstance(runner, OwnProcess):
            runner.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["coatnet_0_rw_224"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[64])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="steps per timed round")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per framework, alternating")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    parser.add_argument("--precisions", nargs="+", choices=tuple(PRECISIONS), default=["float32"],
                        help="bfloat16: Keras' mixed_bfloat16 policy against timm under torch.autocast")
    parser.add_argument("--torch-compile", action="store_true", help="also time torch.compile (slow to compile)")
    parser.add_argument("--processes", choices=("one", "separate"), default="one",
                        help="the frameworks in this process, or each in its own")
    parser.add_argument("--host-memory", choices=("as-started", "commands"), default="as-started",
                        help="this process' malloc as started, or the ich_keras commands' (huge pages, block cache)")
    parser.add_argument("--xla", choices=("default", "commands"), default="default",
                        help="XLA's defaults, or the ich_keras commands' CPU options (compile_cache.set_cpu_flags)")
    args = parser.parse_args()
    if args.xla == "commands":
        compile_cache.set_cpu_flags()  # before JAX starts its backend; a process started below inherits them
    changes = host_memory.command_environment(dict(os.environ)) if args.host_memory == "commands" else {}
    if changes:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, **changes})
    torch.set_num_threads(args.threads)

    print(f"keras {keras.__version__} ({keras.backend.backend()}), torch {torch.__version__}, timm {timm.__version__}, "
          f"{os.cpu_count()} CPUs, torch threads {args.threads}, batch {args.batch}, "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}, LD_PRELOAD={os.environ.get('LD_PRELOAD', '')!r}, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, "
          f"processes: {args.processes}")
    print("| model | px | precision | task | framework | img/s min | median | max | first step s | system s "
          "| page faults | ich_keras / this |")
    print("|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, size, precision in itertools.product(args.models, args.sizes, args.precisions):
        for r in benchmark(name, size, args.batch, args.steps, args.repeats, args.torch_compile,
                           args.processes == "separate", args.threads, precision):
            print(f"| `{r['model']}` | {r['size']} | {precision} | {r['task']} | {r['framework']} | {r['min']:.1f} | "
                  f"{r['median']:.1f} | {r['max']:.1f} | {r['first_step_s']:.1f} | {r['system_s']:.2f} | "
                  f"{r['faults']:.0f} | {r['ratio']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
