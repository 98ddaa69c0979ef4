"""A kernel's gradient on XLA's CPU backend: one contraction over all rows against `contract_leading_axes` (used by
`pointwise_matmul` and `conv_patch_gradient`), which splits many rows into two halves, contracted as a batch of two
and summed, where the result is small.

    python benchmarks/kernel_gradient.py

First the contraction alone, x (rows, in) against the output gradient (rows, out), at the shapes coatnet_0's 1x1
convolutions and stem meet (best of 10 jitted calls, the narrower operand on the left either way; "halves" says
whether the library splits that shape); then
coatnet_0_rw_224's forward + backward with each, in alternating rounds.
"""

from __future__ import annotations

import argparse

import ich_keras  # noqa: F401  (selects the JAX backend before keras is imported)
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from formulations import TRAINING_SHAPES, best_call_ms, in_the_model, max_relative_difference, replaced_and_library
from ich_keras.models import rewrites
from ich_keras.models.rewrites import contract_leading_axes

# (rows, in, out): stage 0's 1x1 convolutions at 224 px, batch 16 (block 0's first at 112 x 112), the stem's second
# convolution's patches there (3 x 3 x 32 in), stage 1's and stage 2's widest; then stage 0 at 64 px, batch 32.
SHAPES = ((16 * 112 * 112, 64, 256), (16 * 56 * 56, 96, 384), (16 * 56 * 56, 384, 96), (16 * 112 * 112, 288, 64),
          (16 * 28 * 28, 192, 768), (16 * 14 * 14, 384, 1536), (32 * 16 * 16, 96, 384), (32 * 16 * 16, 384, 96))
NAMES = ("one contraction", "contract_leading_axes")


def one_contraction(x, grad_out):
    """What the rewrites computed before: every row in one contraction, the narrower operand on the left."""
    narrow_left = x.shape[-1] <= grad_out.shape[-1]
    left, right = (x, grad_out) if narrow_left else (grad_out, x)
    axes = tuple(range(left.ndim - 1))
    gram = lax.dot_general(left, right, ((axes, axes), ((), ())))
    return gram if narrow_left else gram.T


def contraction_alone(rng) -> None:
    print(f"| kernel gradient | rows | in | out | halves | {NAMES[0]} (ms) | {NAMES[1]} (ms) | speed-up | "
          "max rel diff |")
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|")
    for rows, width_in, width_out in SHAPES:
        x = jnp.asarray(rng.standard_normal((rows, width_in)), "float32")
        grad_out = jnp.asarray(rng.standard_normal((rows, width_out)), "float32")
        (a, reference), (b, other) = (best_call_ms(jax.jit(contract), x, grad_out)
                                      for contract in (one_contraction, contract_leading_axes))
        halves = "yes" if rewrites._in_halves(rows, width_in, width_out) else "no"
        print(f"| | {rows} | {width_in} | {width_out} | {halves} | {a:.2f} | {b:.2f} | {a / b:.2f}x | "
              f"{max_relative_difference(reference, other):.1e} |", flush=True)
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("alone", "model"), help="the contraction alone, or coatnet_0 alone "
                        "(default: both, minutes on a 2-core CPU)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    if args.only != "model":
        contraction_alone(rng)
    if args.only != "alone":
        in_the_model(rng, NAMES, replaced_and_library(rewrites, "contract_leading_axes", one_contraction, NAMES),
                     shapes=(*TRAINING_SHAPES, (224, 16)))


if __name__ == "__main__":
    main()
