"""The command `python -m ich_keras.analyze` gives to cook stale soups again: it cooks them as they were cooked (the
settings their results.json and provenance record), on conftest's tiny shared run (`trained_run`)."""

import json
import shlex
import shutil
from pathlib import Path

import pytest

from ich_keras.rundir import load_run

# What a soup's settings show in results.json (the rest, such as peak memory, varies between cooks).
COMPARED = ("selection", "chosen", "val", "test", "significance", "forward_passes")


def _settings(results: dict) -> dict:
    info = {k: v for k, v in results.get("info", {}).items() if k != "memory"}
    record = results["provenance"]
    return {**{k: results.get(k) for k in COMPARED}, "info": info, "parameters": record["parameters"],
            "pretrained": record["pretrained"]}


@pytest.mark.slow  # 12 s: cooks nine soups twice
def test_the_command_to_cook_stale_soups_again_gives_every_setting_they_were_cooked_with(trained_run, tmp_path,
                                                                                           capsys):
    # The command carried the methods, --interpolate and --recalibrate-bn only: soups cooked with greedy on loss,
    # pruned's own rule, a learned soup's epochs, the merges' lambda / density / rate / seed / t, or another
    # bootstrap came back cooked with the defaults.
    from ich_keras import soup
    from ich_keras.analysis import predictions
    from ich_keras.analysis.subject import load_subject

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)  # its uniform, greedy and soft voting soups were cooked with the defaults
    w0 = load_run(run).checkpoints[0].path  # a W0 of the same architecture (the run has no model.init)
    soup.main(["cook", str(run), "--greedy", "--pruned", "--learned", "--task-arithmetic", "--ties", "--dare",
               "--slerp", "--greedy-metric", "loss", "--accept", "gt", "--prune-accept", "ge", "--learned-epochs",
               "1", "--learned-lr", "0.01", "--lambda", "0.7", "--ties-density", "0.5", "--dare-rate", "0.3",
               "--dare-seed", "3", "--slerp-t", "0.25", "--bootstrap-resamples", "50", "--bootstrap-seed", "2",
               "--pretrained", str(w0), "--quiet"])
    methods = ["uniform", "greedy", "pruned", "learned", "task_arithmetic", "ties", "dare", "slerp", "soft_voting"]
    cooked = {m: json.loads((run / "soups" / m / "results.json").read_text()) for m in methods}
    for method in methods:  # as a resume's top-k leaves them: an ingredient gone
        results = dict(cooked[method])
        results["ingredients"] = [*results["ingredients"],
                                  {**results["ingredients"][0], "path": "checkpoints/epoch_099.weights.h5"}]
        (run / "soups" / method / "results.json").write_text(json.dumps(results))
    capsys.readouterr()
    predictions.discover(load_subject(run))
    command = capsys.readouterr().err.split("cook again with `")[1].split("`")[0]

    # uniform and soft voting were cooked by another command (on accuracy, 2000 resamples): a command of their own
    first, second = (shlex.split(part) for part in command.split(" && "))
    assert first == ["python", "-m", "ich_keras.soup", str(run), "--dare", "--greedy", "--learned", "--pruned",
                     "--slerp", "--task-arithmetic", "--ties", "--greedy-metric", "loss", "--accept", "gt",
                     "--prune-accept", "ge", "--pretrained", str(w0), "--learned-epochs", "1",
                     "--learned-learning-rate", "0.01", "--lambda", "0.7", "--ties-density", "0.5", "--dare-rate",
                     "0.3", "--dare-seed", "3", "--slerp-t", "0.25", "--bootstrap-resamples", "50",
                     "--bootstrap-seed", "2"]
    assert second == ["python", "-m", "ich_keras.soup", str(run), "--soft-voting", "--uniform"]
    for argv in (first, second):  # run as printed (in this process: `python -m ich_keras.soup` calls soup.main)
        soup.main([*argv[3:], "--quiet"])
    for method in methods:
        again = json.loads((run / "soups" / method / "results.json").read_text())
        assert _settings(again) == _settings(cooked[method]), method


def test_soups_no_one_command_cooks_as_they_were_get_a_command_each():
    # TIES's lambda 0.5 and task arithmetic's default 1/N = 0.5 come from one --lambda; greedy on loss beside a
    # uniform soup scored against the best checkpoint on accuracy cannot.
    from ich_keras.analysis.subject import Subject

    def results(method, metric="accuracy", **parameters):
        return {"method": method, "selection": {"metric": metric, "accept": "ge"},
                "provenance": {"parameters": parameters, "ingredients": [{}, {}]}}

    subject = Subject(Path("runs/r"), (), ("runs/r",))
    merged = {"ties": results("ties", density=0.2, **{"lambda": 0.5}),
              "task_arithmetic": results("task_arithmetic", **{"lambda": 0.5})}
    assert subject.cook_command(["task_arithmetic", "ties"], merged) == (
        "python -m ich_keras.soup runs/r --task-arithmetic --ties --lambda 0.5")
    split = {"uniform": results("uniform"), "greedy": results("greedy", "loss")}
    assert subject.cook_command(["greedy", "uniform"], split) == (
        "python -m ich_keras.soup runs/r --greedy --greedy-metric loss && python -m ich_keras.soup runs/r --uniform")


def test_the_command_gives_the_batch_size_where_it_decided_the_soup():
    # The learned soup's steps and BN recalibration's batches depend on the batch size; the other soups do not.
    from ich_keras.analysis.subject import Subject

    subject = Subject(Path("runs/r"), (), ("runs/r",))  # no run read: the baseline is SoupOptions' (batch 32)
    learned = {"method": "learned", "provenance": {"parameters": {"epochs": 3, "learning_rate": 0.05,
                                                                  "batch_size": 8}}}
    recalibrated = {"method": "uniform", "bn_recalibrated": {"batches": 2},
                    "provenance": {"parameters": {"recalibrate_bn": True, "bn_batches": 2, "bn_batch_size": 16}}}
    assert subject.cook_command(["learned"], {"learned": learned}) == (
        "python -m ich_keras.soup runs/r --learned --batch-size 8")
    assert subject.cook_command(["uniform"], {"uniform": recalibrated}) == (
        "python -m ich_keras.soup runs/r --uniform --recalibrate-bn --bn-batches 2 --batch-size 16")


def test_the_command_gives_a_setting_the_sweeps_recipe_would_change():
    # A sweep's cook reads its config's [soup] recipe: a soup cooked on accuracy needs the flag the recipe overrides.
    from ich_keras.analysis.subject import Subject

    subject = Subject(Path("sw"), (), ("--runs", "sw/a", "--config", "sw.toml"), across_runs=True,
                      recipe={"greedy_metric": "f1", "recalibrate_bn": True})
    greedy = {"method": "greedy", "selection": {"metric": "accuracy", "accept": "ge"}, "provenance": {}}
    assert subject.cook_command(["greedy"], {"greedy": greedy}) == (
        "python -m ich_keras.soup --runs sw/a --config sw.toml --greedy --greedy-metric accuracy --no-recalibrate-bn")
