"""One rule picks the best checkpoint everywhere (`ich_keras.ranking`): the soups' best single checkpoint, the
weights `predict` and `export` use by default, and the checkpoint each row of `results.json` scores."""

import json
import math
import shutil

from ich_keras.inference import resolve_weights
from ich_keras.ranking import ranked
from ich_keras.rundir import load_run
from ich_keras.soups.significance import best_single
from ich_keras.train import evaluate_test


def test_nan_ranks_last_whichever_way_the_metric_improves():
    val = [{"accuracy": math.nan, "loss": math.nan}, {"accuracy": 0.5, "loss": 2.0}, {"accuracy": 0.7, "loss": 1.0}]
    assert ranked(val, "accuracy") == [2, 1, 0]
    assert ranked(val, "loss") == [2, 1, 0]
    assert ranked([{"accuracy": 0.5, "loss": math.nan}, {"accuracy": 0.5, "loss": 3.0}], "accuracy") == [1, 0]


def test_a_runs_best_checkpoint_breaks_ties_by_val_loss_as_the_soups_do(trained_run, tmp_path):
    run_dir = shutil.copytree(trained_run, tmp_path / "run")
    manifest_path = run_dir / "checkpoints" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    first, second = sorted(manifest["kept"], key=int)
    # Both epochs equally accurate on val, the later one with the lower loss: the manifest keeps the earlier first.
    manifest["epochs"][first].update(accuracy=0.5, loss=1.0)
    manifest["epochs"][second].update(accuracy=0.5, loss=0.5)
    manifest["rules"].append({"metric": "accuracy", "mode": "max", "k": 2})
    manifest["ranked"]["accuracy"] = [int(first), int(second)]
    manifest_path.write_text(json.dumps(manifest))
    run = load_run(run_dir)

    assert run.ranked("accuracy")[0].epoch == int(first)  # the keep rule: a tie stays with the earlier epoch
    assert run.best("accuracy").epoch == int(second)
    kept = run.checkpoints
    assert kept[best_single([c.val for c in kept], "accuracy")].epoch == int(second)  # the soups' baseline
    assert resolve_weights(run, None) == run.checkpoint_path(int(second))  # predict's and export's default
    model = run.build_model()
    assert evaluate_test(run, model, batch_size=8)["accuracy"]["epoch"] == int(second)  # results.json's row
