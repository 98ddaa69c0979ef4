"""One rule picks the best checkpoint everywhere (`ich_keras.ranking`): the soups' best single checkpoint, the
weights `predict` and `export` use by default, and the checkpoint each row of `results.json` scores."""

import json
import math
import shutil

from ich_keras import checkpoints
from ich_keras.inference import resolve_weights
from ich_keras.ranking import ranked
from ich_keras.rundir import load_run
from ich_keras.ranking import best as best_single
from ich_keras.train import evaluate_test


def test_nan_ranks_last_whichever_way_the_metric_improves():
    val = [{"accuracy": math.nan, "loss": math.nan}, {"accuracy": 0.5, "loss": 2.0}, {"accuracy": 0.7, "loss": 1.0}]
    assert ranked(val, "accuracy") == [2, 1, 0]
    assert ranked(val, "loss") == [2, 1, 0]
    assert ranked([{"accuracy": 0.5, "loss": math.nan}, {"accuracy": 0.5, "loss": 3.0}], "accuracy") == [1, 0]


def _with_val_metrics(trained_run, tmp_path, first_metrics: dict, second_metrics: dict):
    """A copy of the shared run (two kept epochs) whose manifest records these val metrics, ranked by fit's own keep
    rule: loss (k=2) and accuracy (k=1). Returns (run, first epoch, second epoch)."""
    run_dir = shutil.copytree(trained_run, tmp_path / "run")
    path = run_dir / "checkpoints" / "manifest.json"
    manifest = json.loads(path.read_text())
    first, second = sorted(manifest["kept"], key=int)
    manifest["epochs"][first].update(first_metrics)
    manifest["epochs"][second].update(second_metrics)
    manifest["rules"] = [{"metric": "loss", "mode": "min", "k": 2}, {"metric": "accuracy", "mode": "max", "k": 1}]
    manifest["ranked"] = {rule["metric"]: checkpoints.rank_epochs(manifest["epochs"], rule["metric"], rule["mode"],
                                                                  rule["k"]) for rule in manifest["rules"]}
    path.write_text(json.dumps(manifest))  # NaN is written as JSON's NaN, as fit writes it
    return load_run(run_dir), int(first), int(second)


def test_a_runs_best_checkpoint_breaks_ties_by_val_loss_as_the_soups_do(trained_run, tmp_path):
    # Equally accurate on val, the later epoch with the lower loss: fit's keep rule keeps the earlier for accuracy
    # (the later stays kept for its loss), and the best checkpoint is the later one all the same.
    run, first, second = _with_val_metrics(trained_run, tmp_path, {"accuracy": 0.5, "loss": 1.0},
                                           {"accuracy": 0.5, "loss": 0.5})
    assert [c.epoch for c in run.ranked("accuracy")] == [first]
    assert run.best("accuracy").epoch == second
    kept = run.checkpoints
    assert kept[best_single([c.val for c in kept], "accuracy")].epoch == second  # the soups' baseline
    assert resolve_weights(run, None) == run.checkpoint_path(second)  # predict's and export's default
    model = run.build_model()
    assert evaluate_test(run, model, batch_size=8)["accuracy"]["epoch"] == second  # results.json's row


def test_a_diverged_epoch_is_never_the_best(trained_run, tmp_path):
    run, first, second = _with_val_metrics(trained_run, tmp_path, {"accuracy": math.nan, "loss": math.nan},
                                           {"accuracy": 0.1, "loss": 9.0})
    assert run.best("accuracy").epoch == second
    assert run.best("loss").epoch == second
