"""Where the cold first step's XLA compilation goes: the parts of a CoAtNet training step compiled on their own.

    python benchmarks/compile_split.py --size 224 --batch 8 --repeats 2
    python benchmarks/compile_split.py --size 64 --parts forward_backward scanned_blocks --repeats 3

Each part is jitted and run in a fresh process, the XLA cache off, the parts in turn over `--repeats` rounds; the
times are JAX's own (`jax_log_compiles`): tracing, lowering to StableHLO, and XLA's compilation; "the rest" of the
first call is its execution and, for the `train_step`, Keras' build of the loss and the optimizer. The system CPU
time of the first call and of a later one shows what writing the working set for the first time costs. Parts:

- `forward_backward`: cross-entropy and its gradient, no optimizer (as `profile_step.py` compiles it);
- `scanned_blocks`: the same, with each stage's blocks after the first (identical in shape) run by one `lax.scan`
  over their stacked weights, so that XLA compiles one block per stage instead of every block;
- `optimizer`: `GroupedAdamW`'s update alone (as `ich_keras.fit` sets it up: a schedule, weight decay, global
  clipnorm) on gradients shaped as the weights;
- `train_step`: Keras' whole `train_step`, as `fit` compiles it (the first `train_on_batch`).

The model's weights come from one seed, so the loss column shows the scanned blocks compute the same function.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import re
import resource
import subprocess
import sys
import time

PARTS = ("forward_backward", "scanned_blocks", "optimizer", "train_step")
MODEL = "coatnet_0_rw_224"


class CompileLog(logging.Handler):
    """Collects the seconds JAX logs for tracing, lowering and compiling `jit(<name>)`."""

    def __init__(self, name: str):
        super().__init__()
        self.patterns = {"trace_s": re.compile(rf"Finished tracing {name} for jit in ([\d.]+) sec"),
                         "lower_s": re.compile(rf"Finished jaxpr to MLIR module conversion jit\({name}\) in ([\d.]+)"),
                         "compile_s": re.compile(rf"Finished XLA compilation of jit\({name}\) in ([\d.]+) sec")}
        self.seconds = dict.fromkeys(self.patterns, 0.0)

    def emit(self, record):
        for key, pattern in self.patterns.items():
            match = pattern.search(record.getMessage())
            if match:
                self.seconds[key] += float(match.group(1))


def scanned_forward(model, stage_depths):
    """logits(trainable, frozen, images): `model` in training mode, each stage's blocks after the first run by one
    `lax.scan` over their stacked weights; every block is a Keras sub-model of `model`'s own layers."""
    import jax
    import jax.numpy as jnp
    import keras

    from ich_keras.analysis.features import BLOCK_END

    ends = [layer.output for layer in model.layers if BLOCK_END.match(layer.name)]  # stem, then every block
    pieces = [keras.Model(model.inputs, ends[0])]
    pieces += [keras.Model(start, end) for start, end in zip(ends, ends[1:])]
    pieces.append(keras.Model(ends[-1], model.outputs))
    # Each piece's weights as slices of the model's lists, found by identity.
    index = {id(v): i for i, v in enumerate(model.trainable_variables)}
    frozen_index = {id(v): i for i, v in enumerate(model.non_trainable_variables)}

    def weights(piece, trainable, frozen):
        return ([trainable[index[id(v)]] for v in piece.trainable_variables],
                [frozen[frozen_index[id(v)]] for v in piece.non_trainable_variables])

    def call(piece, piece_weights, x):
        return piece.stateless_call(*piece_weights, x, training=True)[0]

    def scan_step(block, x, block_weights):
        return call(block, block_weights, x), None

    def logits(trainable, frozen, images):
        x = call(pieces[0], weights(pieces[0], trainable, frozen), images)
        first = 1
        for depth in stage_depths:
            x = call(pieces[first], weights(pieces[first], trainable, frozen), x)
            repeated = pieces[first + 1:first + depth]
            if repeated:
                stacked = jax.tree.map(lambda *a: jnp.stack(a), *[weights(p, trainable, frozen) for p in repeated])
                x, _ = jax.lax.scan(functools.partial(scan_step, repeated[0]), x, stacked)
            first += depth
        return call(pieces[-1], weights(pieces[-1], trainable, frozen), x)

    return logits


def system_seconds() -> float:
    """CPU seconds this process has spent in the kernel: where memory is backed only when first touched
    (`fresh_memory.py`), a first call that writes its working set for the first time spends them there."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


def child(part: str, size: int, batch: int) -> dict:
    import ich_keras  # noqa: F401  (selects the JAX backend before keras is imported)
    import jax
    import jax.numpy as jnp
    import keras

    from ich_keras import compile_cache, models
    from ich_keras.models.coatnet import VARIANTS
    from profile_step import training_loss
    from recipe import compile_as_fit, fit_like_schedule, random_batch

    compile_cache.enable()  # the commands' setting: XLA's backend at -O1 (the cache is off: ICH_KERAS_XLA_CACHE)
    keras.utils.set_random_seed(0)
    model = models.build(MODEL, 10, size)
    images, labels = random_batch(batch, size, 10)
    trainable = [v.value for v in model.trainable_variables]
    frozen = [v.value for v in model.non_trainable_variables]
    if part == "train_step":
        compile_as_fit(model, learning_rate=fit_like_schedule())
        name, run = "train_step", lambda: model.train_on_batch(images, labels)
    elif part == "optimizer":
        compile_as_fit(model, learning_rate=fit_like_schedule())
        model.optimizer.build(model.trainable_variables)
        state = [v.value for v in model.optimizer.variables]

        def update(state, gradients, weights):
            return model.optimizer.stateless_apply(state, gradients, weights)

        name, step = "update", jax.jit(update)
        run = lambda: jax.block_until_ready(step(state, trainable, trainable))  # noqa: E731
    else:
        if part == "scanned_blocks":
            forward = scanned_forward(model, VARIANTS[MODEL].depths)

            def loss(trainable, frozen, images, labels):
                return jnp.mean(-jnp.sum(labels * jax.nn.log_softmax(forward(trainable, frozen, images)), -1))
        else:
            def loss(trainable, frozen, images, labels):
                return training_loss(model)(trainable, frozen, images, labels)[0]
        name, step = "loss", jax.jit(jax.value_and_grad(loss))
        run = lambda: jax.block_until_ready(step(trainable, frozen, images, labels))  # noqa: E731

    log = CompileLog(name)
    logging.getLogger("jax").addHandler(log)
    jax.config.update("jax_log_compiles", True)
    start, system = time.perf_counter(), system_seconds()
    result = run()
    first_s, first_system_s = time.perf_counter() - start, system_seconds() - system
    jax.config.update("jax_log_compiles", False)
    times, system = [], system_seconds()
    for _ in range(3):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    later_system_s = (system_seconds() - system) / 3
    # The first call's loss, before any update (train_on_batch returns it alone: no metrics are compiled).
    loss_value = None if part == "optimizer" else float(result if part == "train_step" else result[0])
    return {**log.seconds, "first_s": first_s, "step_s": sum(times) / 3, "loss": loss_value,
            "first_system_s": first_system_s, "later_system_s": later_system_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        part, size, batch = args.child
        print(json.dumps(child(part, int(size), int(batch))))
        return
    print("| part | px | batch | trace (s) | lower (s) | XLA compile (s) | first call (s) | of it, the rest (s) "
          "| later calls (s) | system CPU s: first call / later ones | loss |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    env = {**os.environ, "ICH_KERAS_XLA_CACHE": "off"}
    for _ in range(args.repeats):
        for part in args.parts:
            out = subprocess.run([sys.executable, __file__, "--child", part, str(args.size), str(args.batch)],
                                 check=True, capture_output=True, text=True, env=env)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            loss = "" if r["loss"] is None else f"{r['loss']:.5f}"
            rest = r["first_s"] - r["trace_s"] - r["lower_s"] - r["compile_s"]
            print(f"| {part} | {args.size} | {args.batch} | {r['trace_s']:.1f} | {r['lower_s']:.1f} | "
                  f"{r['compile_s']:.1f} | {r['first_s']:.1f} | {rest:.1f} | {r['step_s']:.2f} | "
                  f"{r['first_system_s']:.1f} / {r['later_system_s']:.2f} | {loss} |", flush=True)


if __name__ == "__main__":
    main()
