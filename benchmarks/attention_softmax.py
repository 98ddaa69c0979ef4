"""The attention's softmax normalised before its product with v (softmax, then matmul) against after it
(`softmax_weighted_values`: exponentials, matmul, then each row divided by its sum), on XLA's CPU backend.

    python benchmarks/attention_softmax.py

First the attention's core alone (softmax over (B, heads, N, N) logits, product with (B, heads, N, d) values) at
shapes coatnet_0 meets, its forward pass and its forward + backward, best of 10 jitted calls each; then
coatnet_0_rw_224's inference and its forward + backward with `RelPosAttention` each way, in alternating rounds.
"""

from __future__ import annotations

import argparse
from unittest import mock

import ich_keras  # noqa: F401  (selects the JAX backend before keras is imported)
import jax
import jax.numpy as jnp
import numpy as np

from formulations import TRAINING_SHAPES, best_call_ms, best_ms, in_the_model, max_relative_difference, model_gradient
from ich_keras import models
from ich_keras.models import layers
from ich_keras.models.attention_kernels import softmax_weighted_values

# (B, heads, N, d): stage 2 at 224 px, batch 16 and 8; stage 3 at 224 px, batch 16; stage 2 at 64 px, batch 32.
SHAPES = ((16, 12, 196, 32), (8, 12, 196, 32), (16, 24, 49, 32), (32, 12, 16, 32))
NAMES = ("softmax, then matmul", "normalised after")


def softmax_then_values(logits, values):
    """What `RelPosAttention` computed before: the softmax's weights, then their product with the values."""
    return jax.nn.softmax(logits, axis=-1).astype(values.dtype) @ values


def forward_ms(attend, logits, values) -> tuple[float, jax.Array]:
    """(best ms of 10 jitted calls of `attend`, its output)."""
    return best_call_ms(jax.jit(attend), logits, values)


def attention_alone(rng) -> None:
    print(f"| attention core | (B, heads, N, d) | pass | {NAMES[0]} (ms) | {NAMES[1]} (ms) | speed-up | "
          "max rel diff |")
    print("|---|---|---|---:|---:|---:|---:|")
    for batch, heads, tokens, width in SHAPES:
        logits = jnp.asarray(rng.standard_normal((batch, heads, tokens, tokens)), "float32")
        values = jnp.asarray(rng.standard_normal((batch, heads, tokens, width)), "float32")
        for task, timed in (("forward", forward_ms), ("forward + backward", best_ms)):
            (a, reference), (b, other) = (timed(attend, logits, values)
                                          for attend in (softmax_then_values, softmax_weighted_values))
            print(f"| | {(batch, heads, tokens, width)} | {task} | {a:.2f} | {b:.2f} | {a / b:.2f}x | "
                  f"{max_relative_difference(reference, other):.1e} |", flush=True)
    print()


def in_coatnet(rng) -> None:
    for task, inference, shapes in (("inference", True, ((64, 16), (224, 16))),
                                    ("forward + backward", False, (*TRAINING_SHAPES, (224, 16)))):
        def make_steps(size, images, labels, inference=inference):
            model = models.build("coatnet_0_rw_224", 10, size)
            with mock.patch.object(layers, "softmax_weighted_values", softmax_then_values):
                before = model_gradient(model, images, labels, inference)
            return {NAMES[0]: before, NAMES[1]: model_gradient(model, images, labels, inference)}

        in_the_model(rng, NAMES, make_steps, shapes=shapes, task=task)
        print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("alone", "model"), help="the attention's core alone, or coatnet_0 alone "
                        "(default: both, minutes on a 2-core CPU)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    if args.only != "model":
        attention_alone(rng)
    if args.only != "alone":
        in_coatnet(rng)


if __name__ == "__main__":
    main()
