"""Why soups work, from predictions: cross-entropy distances + MDS, bias–variance, CKA, per-class tables.

The modules here are pure functions of arrays; `ich_keras.analysis.runner` (behind `python -m ich_keras.analyze`)
runs the models over a run directory's data and feeds them.
"""

from ich_keras.analysis.bias_variance import (against_reference, geometric_centre, log_loss_decomposition,
                                              main_prediction, zero_one_decomposition)
from ich_keras.analysis.cka import linear_cka
from ich_keras.analysis.distances import cross_entropy_distances, mds_dissimilarities, mds_embedding
from ich_keras.analysis.tables import per_class_markdown, per_class_table

__all__ = [
    "against_reference", "cross_entropy_distances", "geometric_centre", "linear_cka", "log_loss_decomposition",
    "main_prediction", "mds_dissimilarities", "mds_embedding", "per_class_markdown", "per_class_table",
    "zero_one_decomposition",
]
