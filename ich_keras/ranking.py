"""How ich_keras picks the best checkpoint by a validation metric, in every command that picks one.

Best first by the metric; ties broken by lower validation loss, then by position (the earlier epoch); NaN last. It
picks the soups' and `analyze`'s "best single checkpoint" (the baseline every soup is compared with), the weights
`predict` and `export` use by default, and the checkpoint each row of `results.json` scores on test. The latter three
read the val metrics fit recorded in the manifest (computed at `train.precision`), the soups and `analyze` their own
float32 evaluation: after a float32 fit both name the same checkpoint (the demo's epoch 9, README);
after a bfloat16 fit their numbers differ slightly and may choose differently. Which checkpoints a run *keeps* is the
manifest's rule (`ich_keras.checkpoints`), where a tie goes to the earlier epoch.
"""

from __future__ import annotations

import math

from ich_keras.errors import UserError

# Which way each selection metric improves (no sign flipping: loss simply prefers lower).
METRIC_MODES = {"accuracy": "max", "f1": "max", "precision": "max", "recall": "max", "loss": "min"}


def ranked(val_results: list[dict], metric: str) -> list[int]:
    """Indices into `val_results`, best first by `metric` under the rule above.

    Args:
        val_results: per checkpoint its validation metrics (an `evaluate` dict, or a manifest entry), with "loss"
            and `metric`.
        metric: a key of `METRIC_MODES`.
    """
    if metric not in METRIC_MODES:
        raise UserError(f"metric must be one of {sorted(METRIC_MODES)}. Received: metric={metric!r}")
    if not val_results:
        raise ValueError("There is no checkpoint to choose from. Received: val_results=[]")
    mode = METRIC_MODES[metric]
    # Two stable sorts: by loss, then by the metric, so that ties on the metric stay in order of loss.
    by_loss = sorted(range(len(val_results)), key=lambda i: _nan_last(val_results[i]["loss"], "min"))
    return sorted(by_loss, key=lambda i: _nan_last(val_results[i][metric], mode), reverse=mode == "max")


def best(val_results: list[dict], metric: str) -> int:
    """The best checkpoint's index: `ranked`'s first."""
    return ranked(val_results, metric)[0]


def _nan_last(value: float, mode: str) -> float:
    """`value`, or the worst value under `mode` for NaN (a diverged checkpoint ranks last)."""
    if math.isnan(value):
        return -math.inf if mode == "max" else math.inf
    return value
