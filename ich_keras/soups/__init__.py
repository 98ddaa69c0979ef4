"""Model soups on any same-architecture Keras weights: uniform, greedy, pruned, learned, MonoSoup; merges from a
pretrained W0 (Model Stock, task arithmetic, TIES, DARE) and SLERP; soft voting; WiSE-FT interpolation; BatchNorm
recalibration.

Ingredients are `.weights.h5` paths (read with h5py, no model built per ingredient), Keras models, `WeightSet`s or
{key: array} dicts; keys are the dataset paths Keras writes in `.weights.h5`. Example:

    soup = ich_keras.soups.uniform(["runs/x/checkpoints/epoch_007.weights.h5", ...])
    ich_keras.soups.save(soup, "soup.weights.h5")      # model.load_weights accepts it
    result = ich_keras.soups.greedy(paths, model, val_batches, metric="accuracy", accept="ge")
"""

from ich_keras.soups.averaging import running_mean
from ich_keras.soups.bn import recalibrate_bn
from ich_keras.soups.forward import Evaluator, batched, cache, soft_voting
from ich_keras.soups.learned import learned
from ich_keras.soups.methods import SoupResult, evaluate_ingredients, greedy, interpolate, pruned, uniform
from ich_keras.soups.model_stock import model_stock
from ich_keras.soups.monosoup import monosoup
from ich_keras.soups.slerp import slerp
from ich_keras.soups.task_vectors import dare, task_arithmetic, ties
from ich_keras.weight_files import Layout, WeightSet, as_source, as_weight_set, model_variables, read, save


def load_into(model, weights) -> None:
    """Assigns `weights` to `model`'s variables (what `model.load_weights` would do with the saved soup).

    Args:
        model: a built Keras model of the weights' architecture.
        weights: a `WeightSet` (e.g. a soup) or any other ingredient: a `.weights.h5` path, a model, a dict.
    """
    weights = as_weight_set(weights)
    layout = as_source(model).layout()
    weights.layout.check_matches(layout, weights.layout.name or "the soup", f"model {model.name!r}")
    for key, variable in model_variables(model):
        variable.assign(weights[key])


__all__ = [
    "Evaluator", "Layout", "SoupResult", "WeightSet", "batched", "cache", "dare", "evaluate_ingredients", "greedy",
    "interpolate", "learned", "load_into", "model_stock", "monosoup", "pruned", "read", "recalibrate_bn",
    "running_mean", "save", "slerp", "soft_voting", "task_arithmetic", "ties", "uniform",
]
