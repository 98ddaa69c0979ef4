"""Two formulations of one computation timed in one process, for the benchmarks that chose the CPU rewrites
(`conv_kernels.py`, `attention_softmax.py`, `kernel_gradient.py`): alone, best of N jitted calls; and inside
coatnet_0_rw_224, compiled each way and run in alternating rounds."""

from __future__ import annotations

import time
from unittest import mock

import ich_keras  # noqa: F401  (selects the JAX backend before keras is imported)
import jax
import jax.numpy as jnp
import numpy as np

import profile_step
from ich_keras import models


def best_call_ms(run, *args, calls: int = 10) -> tuple[float, object]:
    """(best ms of `calls` calls of `run(*args)` after a first one, that first call's result)."""
    result = jax.block_until_ready(run(*args))
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        jax.block_until_ready(run(*args))
        times.append(time.perf_counter() - start)
    return min(times) * 1000, result


def best_ms(fn, x, w, calls: int = 10) -> tuple[float, tuple]:
    """(best ms of `calls` jitted forward + backward calls, the gradients)."""
    return best_call_ms(jax.jit(jax.grad(lambda x, w: jnp.sum(fn(x, w) ** 2), argnums=(0, 1))), x, w, calls=calls)


def max_relative_difference(reference, other) -> float:
    """Largest |reference - other| over max |reference|, taken per array of two matching pytrees."""
    return max(float(jnp.max(jnp.abs(r - o)) / jnp.max(jnp.abs(r)))
               for r, o in zip(jax.tree.leaves(reference), jax.tree.leaves(other)))


def model_gradient(model, images, labels, inference: bool = False):
    """A call running the compiled gradients of the mean cross-entropy for `model`'s trainable weights, in training
    mode, on these images (with `inference`, the logits in inference mode instead): compiled here, so that what the
    model's layers call now is what it runs."""
    weights = ([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables])
    if inference:
        run = jax.jit(lambda *args: profile_step.inference_logits(model)(*args))
    else:
        run = jax.jit(lambda *args: jax.grad(profile_step.training_loss(model), has_aux=True)(*args)[0])
    run = run.lower(*weights, images, labels).compile()
    return lambda: jax.block_until_ready(run(*weights, images, labels))


TRAINING_SHAPES = ((64, 16), (64, 32), (224, 8))  # (px, batch)


def in_the_model(rng, names: tuple[str, str], make_steps, rounds: int = 5, shapes=TRAINING_SHAPES,
                 task: str = "forward + backward") -> None:
    """coatnet_0_rw_224's `task` two ways (`make_steps(size, images, labels)` -> {name: call}), in alternating
    rounds, at each (px, batch) of `shapes`."""
    print(f"| coatnet_0_rw_224 {task} | px | batch | {names[0]} (ms, median) | {names[1]} (ms, median) | "
          "speed-up | max rel diff |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for size, batch in shapes:
        images = jnp.asarray(rng.standard_normal((batch, size, size, 3)), "float32")
        labels = jax.nn.one_hot(rng.integers(0, 10, batch), 10)
        steps = make_steps(size, images, labels)
        grads = {name: step() for name, step in steps.items()}
        times = {name: [] for name in steps}
        for _ in range(rounds):
            for name, step in steps.items():
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
        a, b = (float(np.median(times[name])) * 1000 for name in names)
        diff = max_relative_difference(*(grads[name] for name in names))
        print(f"| ({rounds} rounds) | {size} | {batch} | {a:.0f} | {b:.0f} | {a / b:.2f}x | {diff:.1e} |", flush=True)


def replaced_and_library(module, attribute: str, replacement, names: tuple[str, str]):
    """`make_steps` for `in_the_model`: coatnet_0_rw_224 compiled with `module.<attribute>` replaced (names[0]) and
    as the library builds it (names[1]). `module` is where the layer looks the name up."""
    def make_steps(size, images, labels):
        model = models.build("coatnet_0_rw_224", 10, size)
        with mock.patch.object(module, attribute, replacement):
            replaced = model_gradient(model, images, labels)
        return {names[0]: replaced, names[1]: model_gradient(model, images, labels)}

    return make_steps
