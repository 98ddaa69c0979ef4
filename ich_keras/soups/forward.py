"""One compiled forward function for many weight sets.

`Evaluator` jits `model.stateless_call` with the weights as an *argument* (the flat float32 vector plus the non-float
variables), so evaluating ingredient after ingredient, or soup candidate after candidate, reuses one executable:
only a new input shape compiles again, and the last partial batch is padded so it does not. `num_traces` counts
how often the function was traced; a test pins it at 1 during a greedy soup.
"""

from __future__ import annotations

import collections.abc

import jax
import jax.numpy as jnp
import numpy as np

from ich_keras.evaluation import check_finite_outputs, evaluate, pad_batch
from ich_keras.weight_files import Layout, ModelSource, WeightSet, model_variables


class Evaluator:
    """Runs `model` with any weight set of `layout` and scores it with `ich_keras.evaluation.evaluate`.

    Args:
        model: a built Keras model returning logits.
        layout: the ingredients' layout; it must match the model's variables exactly.
        class_names: names in label order for the per-class numbers (default "0", "1", ...).
    """

    def __init__(self, model, layout: Layout, class_names: list[str] | None = None):
        layout.check_matches(ModelSource(model).layout(), layout.name or "the ingredients", f"model {model.name!r}")
        self.model = model
        self.layout = layout
        self.class_names = class_names
        key_of = {id(var): key for key, var in model_variables(model)}
        # Per model variable: its key in the weight set, or None for state the weights file does not hold
        # (seed generators), which keeps the model's current value.
        self.trainable_keys = [key_of.get(id(v)) for v in model.trainable_variables]
        self.non_trainable_keys = [key_of.get(id(v)) for v in model.non_trainable_variables]
        self.num_traces = 0
        self._forward = jax.jit(self._forward_impl)

    def constants(self):
        """Current values of the model variables that no weight set provides, as (trainable, non-trainable)."""
        def pick(variables, keys):
            return [None if k else v.value for v, k in zip(variables, keys)]

        return (pick(self.model.trainable_variables, self.trainable_keys),
                pick(self.model.non_trainable_variables, self.non_trainable_keys))

    def variables(self, flat, others, constants):
        """Traceable: the model's (trainable, non-trainable) variable values from a flat vector and the others."""
        def value(var, key, constant):
            if key is None:
                return constant
            v = self.layout.by_key[key]
            if not v.is_float:
                return jnp.asarray(others[key]).astype(var.dtype)
            # (P,) -> slice -> the variable's shape and dtype (float16/bfloat16 variables get theirs back).
            return jax.lax.slice(flat, (v.offset,), (v.offset + v.size,)).reshape(v.shape).astype(var.dtype)

        trainable = [value(var, k, c) for var, k, c in
                     zip(self.model.trainable_variables, self.trainable_keys, constants[0])]
        non_trainable = [value(var, k, c) for var, k, c in
                         zip(self.model.non_trainable_variables, self.non_trainable_keys, constants[1])]
        return trainable, non_trainable

    def _forward_impl(self, flat, others, constants, images):
        self.num_traces += 1  # runs only while tracing, i.e. once per compilation
        trainable, non_trainable = self.variables(flat, others, constants)
        logits, _ = self.model.stateless_call(trainable, non_trainable, images, training=False)
        return logits.astype(jnp.float32)

    def predict(self, weights: WeightSet, batches) -> tuple[np.ndarray, np.ndarray]:
        """Logits of `weights` on every batch.

        Args:
            weights: a `WeightSet` of `self.layout`.
            batches: a re-iterable of (images, labels) batches (numpy, tf.data, lists): images normalised as the
                model takes them (`Run.in_memory` gives them so: pixels / 255, then (x - mean) / std with
                `models.entry(name).mean/std`); labels integers, (n,) or (n, 1), or one-hot rows.

        Returns:
            (labels (n,) int64, logits (n, num_classes) float32).
        """
        if isinstance(batches, collections.abc.Iterator):  # a generator: the first ingredient would use it up
            raise ValueError("Expected re-iterable evaluation data (a list, a tf.data.Dataset, `Run.in_memory`), "
                             f"scored once per ingredient. Received: a one-shot {type(batches).__name__}; wrap it "
                             "in list(...)")
        constants = self.constants()
        flat = weights.flat
        others = {k: np.asarray(a) for k, a in weights.others.items()}
        labels, logits, batch_size = [], [], None
        for images, batch_labels in batches:
            images = np.asarray(images)
            if images.dtype.kind in "biu":  # raw pixels: scored as they are, they rank the ingredients at random
                raise ValueError(f"Expected normalised float images (pixels / 255, then (x - mean) / std with the "
                                 f"model's `ich_keras.models.entry(name).mean/std`, as `Run.in_memory` gives "
                                 f"them). Received: images of dtype {images.dtype}")
            batch_size = batch_size or images.shape[0]
            images, n = pad_batch(images, batch_size)
            out = self._forward(flat, others, constants, images)
            logits.append(np.asarray(out)[:n])
            labels.append(to_int_labels(batch_labels))
        if not logits:
            raise ValueError("The evaluation data holds no batches. Received: an empty dataset")
        return np.concatenate(labels), np.concatenate(logits)

    def evaluate(self, weights: WeightSet, batches) -> dict:
        """`ich_keras.evaluation.evaluate` of `weights` on `batches`."""
        labels, logits = self.predict(weights, batches)
        return evaluate(labels, logits, self.class_names)

    def predict_each(self, reader, datasets: dict, before=None, describe=None):
        """Every ingredient of `reader` on every dataset, one ingredient's weights in memory at a time: what scoring
        ingredients one by one means everywhere (soups, their selection, the analysis).

        Args:
            reader: an `averaging.Reader` of this evaluator's layout.
            datasets: {split: re-iterable of (images, labels) batches}.
            before: called as before(index, split) as each pass starts (progress lines).
            describe: describe(index) -> (what the error below calls the ingredient, advice to append); default
                its file and no advice.

        Yields:
            (index, {split: (labels (n,) int64, logits (n, num_classes) float32)}), in ingredient order.

        Raises:
            UserError naming the ingredient when its outputs hold NaN or inf (`check_finite_outputs`): finite
            weights can still not compute, and no number is made of such outputs.
        """
        for index in range(len(reader)):
            name, advice = describe(index) if describe is not None else (reader.name(index), "")
            weights, outputs = None, {}
            for split, data in datasets.items():
                if before is not None:
                    before(index, split)
                if weights is None:  # read after the first progress line: a bad file's error follows its name
                    weights = reader.alone(index)
                labels, logits = self.predict(weights, data)
                check_finite_outputs(logits, name, advice)
                outputs[split] = (labels, logits)
            yield index, outputs


def to_int_labels(labels) -> np.ndarray:
    """(n,) int64 class indices from integer labels, (n,) or an (n, 1) column (Keras' datasets give those), or
    from one-hot / soft label rows (n, num_classes)."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] > 1:
        labels = labels.argmax(axis=-1)
    return labels.astype(np.int64).reshape(-1)


def batched(images: np.ndarray, labels: np.ndarray, batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Splits in-memory (images, labels) into a list of batches, which is re-iterable."""
    if len(images) != len(labels):
        raise ValueError(f"Expected as many labels as images. Received: {len(images)} images, {len(labels)} labels")
    return [(images[i:i + batch_size], labels[i:i + batch_size]) for i in range(0, len(images), batch_size)]


def cache(batches) -> list[tuple[np.ndarray, np.ndarray]]:
    """Materialises a dataset's batches as numpy once, so greedy search does not re-decode images each step."""
    return [(np.asarray(x), np.asarray(y)) for x, y in batches]


def soft_voting(logits_per_model) -> np.ndarray:
    """Mean of the models' softmax probabilities, returned as log-probabilities.

    Log-probabilities are valid logits (softmax(log p) = p), so `evaluate` scores the vote, loss included.

    Args:
        logits_per_model: N arrays of (n, num_classes) logits on the same examples, or one (N, n, num_classes)
            array.

    Returns:
        (n, num_classes) float64 log of the mean probabilities.
    """
    if isinstance(logits_per_model, np.ndarray) and logits_per_model.ndim != 3:
        raise ValueError(f"Expected a list of (n, num_classes) logits, one per model, or an (models, n, num_classes) "
                         f"array (one model: [logits]). Received: an array of shape {logits_per_model.shape}")
    if len(logits_per_model) == 0:
        raise ValueError("Soft voting needs at least one model. Received: none")
    mean = np.zeros(np.shape(logits_per_model[0]), dtype=np.float64)
    for logits in logits_per_model:
        if np.shape(logits) != mean.shape:
            raise ValueError(f"All logits must have shape {mean.shape}. Received: {np.shape(logits)}")
        shifted = np.asarray(logits, np.float64) - np.max(logits, axis=-1, keepdims=True)
        probabilities = np.exp(shifted)
        mean += probabilities / probabilities.sum(axis=-1, keepdims=True)
    mean /= len(logits_per_model)
    return np.log(np.maximum(mean, np.finfo(np.float64).tiny))
