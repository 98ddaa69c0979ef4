"""Training-step and inference images/s: ich_keras (Keras 3 / JAX) against timm in PyTorch, in one process.

    python benchmarks/train_throughput.py --models coatnet_0_rw_224 --sizes 64 --batch 8
    python benchmarks/train_throughput.py --models coatnet_0_rw_224 coatnet_2_rw_224 resnet50 \
        vit_base_patch16_224 --sizes 64 224 --batch 8 --torch-compile

The same model (timm's weights converted), batch, input size, float32 and thread count on both sides; a training
step is forward, backward, global-norm clipping to 1.0 and AdamW (lr 1e-4, wd 1e-3) on soft-label cross-entropy.
Frameworks run alternately, `--repeats` rounds of `--steps` steps each, so load from the rest of the machine hits
both alike; each row gives min / median / max images/s over the rounds and the ratio of medians (>1: ich_keras
faster). "first step" is the latency of the first call (tracing + XLA compilation, or torch.compile), which a user
pays on every run.
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

LEARNING_RATE, WEIGHT_DECAY, CLIP_NORM = 1e-4, 1e-3, 1.0


def _batch(batch: int, size: int, classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, size, size, 3)).astype(np.float32)
    labels = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, batch)]
    return images, labels


class KerasRunner:
    """ich_keras model compiled as `ich_keras.fit` compiles it (AdamW with global clipnorm, CE from logits).

    Training steps run through `model.fit`, as `ich_keras.fit` runs them: Keras keeps the model state inside
    the jitted step for a whole `fit` call and writes it back to the variables once at the end (each
    `train_on_batch` call would do that write-back, ~30 ms for CoAtNet-0's 620 variables, every step).
    """

    def __init__(self, model: keras.Model):
        self.model = model
        model.compile(
            optimizer=keras.optimizers.AdamW(LEARNING_RATE, weight_decay=WEIGHT_DECAY, global_clipnorm=CLIP_NORM),
            loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        )

    def train_steps(self, images, labels, steps: int):
        # The same batch `steps` times; fit returns after the last step has finished (its logs are host floats).
        repeat = (steps,) + (1,) * (images.ndim - 1)
        self.model.fit(np.tile(images, repeat), np.tile(labels, (steps, 1)), batch_size=len(images), epochs=1,
                       shuffle=False, verbose=0)

    def infer_steps(self, images, labels, steps: int):
        for _ in range(steps):
            np.asarray(self.model.predict_on_batch(images))


class TorchRunner:
    """The same network in timm, eager or torch.compile'd, with the same optimizer and clipping."""

    def __init__(self, model: torch.nn.Module, compiled: bool):
        self.model = model
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
        self.forward = torch.compile(model) if compiled else model

    def train_steps(self, images, labels, steps: int):
        for _ in range(steps):
            self._train_step(images, labels)

    def infer_steps(self, images, labels, steps: int):
        for _ in range(steps):
            self._infer(images)

    def _train_step(self, images, labels):
        self.model.train()
        x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
        loss = torch.nn.functional.cross_entropy(self.forward(x), torch.from_numpy(labels))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), CLIP_NORM)
        self.optimizer.step()

    def _infer(self, images):
        self.model.eval()
        with torch.no_grad():
            self.forward(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()


def _timed(run_steps, images, labels, steps: int) -> float:
    start = time.perf_counter()
    run_steps(images, labels, steps)
    return time.perf_counter() - start


def benchmark(name: str, size: int, batch: int, steps: int, repeats: int, torch_compile: bool) -> list[dict]:
    """Rows (one per task and PyTorch path) of images/s statistics for one model and input size."""
    classes = 1000
    reference = parity.timm_model(name, classes, size)
    state_dict = parity.random_state_dict(reference)
    reference = parity.timm_model(name, classes, size, state_dict)
    model, _ = convert(name, state_dict, image_size=size)
    runners = {"ich_keras": KerasRunner(model), "timm eager": TorchRunner(reference, compiled=False)}
    if torch_compile:
        compiled = parity.timm_model(name, classes, size, state_dict)
        runners["timm torch.compile"] = TorchRunner(compiled, compiled=True)
    images, labels = _batch(batch, size, classes)

    rows = []
    for task in ("train_step", "infer_step"):
        first = {label: _timed(getattr(r, f"{task}s"), images, labels, 1) for label, r in runners.items()}
        rates = {label: [] for label in runners}
        for _ in range(repeats):
            for label, runner in runners.items():
                rates[label].append(batch * steps / _timed(getattr(runner, f"{task}s"), images, labels, steps))
        ours = statistics.median(rates["ich_keras"])
        for label in runners:
            rows.append({
                "model": name, "size": size, "task": task, "framework": label,
                "min": min(rates[label]), "median": statistics.median(rates[label]), "max": max(rates[label]),
                "first_step_s": first[label], "ratio": ours / statistics.median(rates[label]),
            })
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
          f"{os.cpu_count()} CPUs, torch threads {args.threads}, batch {args.batch}, float32")
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
