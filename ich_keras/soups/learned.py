"""Learned soup (model-soups): per-layer mixing coefficients fitted on validation data.

The soup is W[l] = sum_i softmax(alpha[:, l])_i W_i[l] for each layer l (a `vars` group of the weights file), with
alpha (N, layers) starting at zero, i.e. at the uniform soup, and a few Adam steps on the validation cross-entropy.
Unlike the other recipes it must hold all N ingredients at once (N x one checkpoint in float32, plus the gradient
of the forward pass); `SoupResult.info["memory"]` reports that need.
"""

from __future__ import annotations

import resource
import sys

import jax
import jax.numpy as jnp
import numpy as np

from ich_keras.errors import UserError
from ich_keras.progress import note
from ich_keras.soups.averaging import Reader
from ich_keras.soups.forward import Evaluator, to_int_labels
from ich_keras.soups.methods import SoupResult
from ich_keras.weight_files import Layout, WeightSet, empty_flat


def _spans(layout: Layout) -> tuple[list[str], list[tuple[int, int, int]]]:
    """Layer groups with float variables, and contiguous (start, stop, group index) runs of the flat vector."""
    groups, spans = {}, []
    for v in layout.variables:
        if not v.is_float or v.size == 0:
            continue
        g = groups.setdefault(v.group, len(groups))
        if spans and spans[-1][2] == g and spans[-1][1] == v.offset:
            spans[-1] = (spans[-1][0], v.offset + v.size, g)
        else:
            spans.append((v.offset, v.offset + v.size, g))
    return list(groups), spans


def learned(ingredients, model, val_data, *, epochs: int = 3, learning_rate: float = 0.05, class_names=None,
            progress: bool = False) -> SoupResult:
    """Fits per-layer softmax mixing coefficients over the ingredients on validation data.

    Args:
        ingredients: `.weights.h5` paths, Keras models, `WeightSet`s or dicts of one architecture.
        model: a built Keras model of that architecture.
        val_data: re-iterable of (images, labels) validation batches; each full batch is one Adam step per epoch.
        epochs: passes over `val_data`.
        learning_rate: Adam step size on the coefficients' logits.
        class_names: names in label order.
        progress: print the loss after each epoch.

    Returns:
        A `SoupResult` with `chosen` = all ingredients, `val` the fitted soup's validation metrics and `info`
        {"coefficients": {layer: [N weights]}, "memory": {...}, "losses": [mean loss per epoch], "epochs",
        "learning_rate"}.
    """
    if epochs < 1 or learning_rate <= 0:
        raise UserError(f"epochs must be >= 1 and learning_rate > 0. Received: epochs={epochs}, "
                        f"learning_rate={learning_rate}")
    reader = Reader(ingredients)
    layout = reader.layout
    n = len(reader)
    # (N, P) float32: the one place a soup recipe holds every ingredient.
    stacked = np.empty((n, layout.size), dtype=np.float32)
    for i in range(n):
        stacked[i] = np.asarray(reader.mix(None, i, 1.0))
    stacked = jnp.asarray(stacked)
    groups, spans = _spans(layout)
    evaluator = Evaluator(model, layout, class_names)
    constants = evaluator.constants()
    others = {k: np.asarray(a) for k, a in reader.others.items()}

    def mix(alpha):
        coefficients = jax.nn.softmax(alpha, axis=0)  # (N, groups), each column sums to 1
        return jnp.concatenate([coefficients[:, g] @ stacked[:, a:b] for a, b, g in spans])  # (P,)

    def loss_fn(alpha, images, labels):
        trainable, non_trainable = evaluator.variables(mix(alpha), others, constants)
        logits, _ = model.stateless_call(trainable, non_trainable, images, training=False)
        log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        return -jnp.mean(jnp.take_along_axis(log_p, labels[:, None], axis=-1))

    @jax.jit
    def adam_step(alpha, m, v, t, images, labels):
        loss, grad = jax.value_and_grad(loss_fn)(alpha, images, labels)
        m = 0.9 * m + 0.1 * grad
        v = 0.999 * v + 0.001 * grad**2
        step = learning_rate * (m / (1 - 0.9**t)) / (jnp.sqrt(v / (1 - 0.999**t)) + 1e-8)
        return alpha - step, m, v, loss

    alpha = jnp.zeros((n, len(groups)), jnp.float32)
    m, v, t, losses = jnp.zeros_like(alpha), jnp.zeros_like(alpha), 0, []
    for epoch in range(epochs):
        batch_size, epoch_losses = None, []
        for images, labels in val_data:
            batch_size = batch_size or len(images)
            if len(images) < batch_size:
                continue  # a short last batch would compile the gradient again
            t += 1
            alpha, m, v, loss = adam_step(alpha, m, v, np.float32(t), np.asarray(images), to_int_labels(labels))
            epoch_losses.append(float(loss))
        losses.append(float(np.mean(epoch_losses)) if epoch_losses else float("nan"))
        note("learned", f"epoch {epoch + 1}/{epochs}: val loss {losses[-1]:.4f}", progress)
    flat = empty_flat(layout.size)
    flat[:] = np.asarray(jax.jit(mix)(alpha))
    soup = WeightSet(layout, flat, reader.others)
    coefficients = np.asarray(jax.nn.softmax(alpha, axis=0))
    memory = {
        "one_checkpoint_bytes": layout.nbytes,
        "stacked_ingredients_bytes": int(n * layout.size * 4),
        "peak_rss_bytes": peak_rss_bytes(),
    }
    info = {"coefficients": {g: coefficients[:, j].tolist() for j, g in enumerate(groups)},
            "memory": memory, "losses": losses, "epochs": epochs, "learning_rate": learning_rate}
    return SoupResult(soup, list(range(n)), evaluator.evaluate(soup, val_data), [], info)


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
