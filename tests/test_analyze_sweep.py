"""`python -m ich_keras.analyze SWEEP_DIR`: the runs of a real tiny sweep (conftest's `tiny_config`), their
checkpoints and the soups across them; points that failed, went stale or were deleted."""

import json
import shutil

import numpy as np
import pytest

from ich_keras import analyze
from ich_keras.errors import UserError
from ich_keras.rundir import load_run


@pytest.mark.slow  # two trainings, a soup and the analysis: 24 s on the busy 2-core CPU machine
def test_analyze_of_a_sweep_takes_its_runs_checkpoints_and_the_soups_across_them(tiny_config, tmp_path, capsys):
    # `analyze SWEEP_DIR` said "Not a run directory (no config.json)". The paper's path: fine-tunes of one
    # 1000-class W0 with new 2-class heads, seeds 0 and 1, trained without soups, then cooked across the runs.
    import shlex

    from ich_keras import models, soup, sweep
    from ich_keras.evaluation import evaluate

    w0, output = tmp_path / "w0.weights.h5", tmp_path / "sweep"
    models.build("coatnet_tiny", 1000, 32).save_weights(w0)
    sweep.main(["--config", str(tiny_config), "--grid", "train.seed=[0,1]", "--set", f"model.init={w0}",
                "--output", str(output), "--no-soup", "--quiet"])
    analyse = [str(output), "--quiet", "--batch-size", "8", "--cka-examples", "4"]
    with pytest.raises(UserError, match=r"The sweep holds no soups across its runs \(soups/\) to analyse: cook them "
                                        r"with `python -m ich_keras.soup cook --runs ") as error:
        analyze.main(analyse)
    command = shlex.split(str(error.value).split("`")[1])  # the exact command the error gives
    soup.main([*command[3:], "--uniform", "--quiet"])

    capsys.readouterr()
    summary = analyze.main(analyse)
    # The first line every command but fit prints: it was missing for a sweep (no config.json of its own).
    assert capsys.readouterr().err.startswith(f"[analyze] {output} (coatnet_tiny): predictions")
    out = output / "analysis"
    assert summary["output_dir"] == str(out)
    labels = ["seed=0/epoch_001", "seed=1/epoch_001"]
    with np.load(out / "predictions.npz") as cache:
        assert [str(n) for n in cache["names"]] == [*labels, "uniform", "soft_voting"]
        assert [str(p) for p in cache["paths"]] == ["seed=0/checkpoints/epoch_001.weights.h5",
                                                    "seed=1/checkpoints/epoch_001.weights.h5",
                                                    "soups/uniform/soup.weights.h5", ""]
    # Each row is its own run's checkpoint, scored on the first run's test split (every run shares it).
    run = load_run(output / "seed=0")
    model = run.build_model()
    direct = {}
    for label in labels:
        point, epoch = label.split("/")
        model.load_weights(output / point / "checkpoints" / f"{epoch}.weights.h5")
        direct[label] = evaluate(run.labels("test"), model.predict(run.dataset("test", 8), verbose=0),
                                 list(run.class_names))
    assert direct[labels[0]]["loss"] != pytest.approx(direct[labels[1]]["loss"])
    metrics = json.loads((out / "metrics.json").read_text())
    for label in labels:
        assert metrics["test"][label]["accuracy"] == pytest.approx(direct[label]["accuracy"])
        assert metrics["test"][label]["loss"] == pytest.approx(direct[label]["loss"], rel=1e-4)
    # CKA against the runs' W0; each run's training curves.
    assert json.loads((out / "cka.json").read_text())["pretrained"] == w0.resolve().as_posix()
    report = (out / "report.md").read_text()
    assert report.count(f"Sweep `{output}` of 2 runs: seed=0, seed=1 (coatnet_tiny, 2 classes") == 1
    for point in ("seed=0", "seed=1"):
        assert f"](training_{point}.png)" in report and (out / f"training_{point}.png").is_file()
    assert (out / "report.html").is_file() and not (output / "seed=0" / "analysis").exists()

    # Cooked with seed=1 first, results.json's paths are relative to seed=1: "checkpoints/epoch_001.weights.h5" is
    # seed=1's file, not the first point's.
    soup.main(["cook", "--runs", str(output / "seed=1"), str(output / "seed=0"), "--uniform", "--quiet"])
    analyze.main(analyse)
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["test"]) == [labels[1], labels[0], "uniform", "soft_voting"]
    for label in labels:
        assert metrics["test"][label]["loss"] == pytest.approx(direct[label]["loss"], rel=1e-4)


def _cook_command(sweep_dir) -> list[str]:
    """The `soup` arguments of the command analyze's error gives for a sweep without soups."""
    import shlex

    with pytest.raises(UserError, match="holds no soups across its runs") as error:
        analyze.main([str(sweep_dir), "--quiet"])
    return shlex.split(str(error.value).split("`")[1])[3:]


def test_analyze_of_a_sweep_moved_gives_a_cook_command_that_works_from_another_directory(tiny_config, tmp_path,
                                                                                         monkeypatch):
    # sweep.json kept --config as typed ("tiny.toml"): from another working directory the command analyze gave
    # stopped with "Config file not found".
    from ich_keras import soup, sweep

    monkeypatch.chdir(tiny_config.parent)
    sweep.main(["--config", tiny_config.name, "--grid", "train.seed=[0]", "--output", "sw", "--no-soup", "--quiet"])
    (tmp_path / "elsewhere").mkdir()
    shutil.move(tmp_path / "sw", tmp_path / "elsewhere" / "sw")
    monkeypatch.chdir(tmp_path / "elsewhere")
    soup.main([*_cook_command(tmp_path / "elsewhere" / "sw"), "--uniform", "--quiet"])
    assert analyze.main([str(tmp_path / "elsewhere" / "sw"), "--quiet", "--cka-examples", "0"])["soup"] == "uniform"


@pytest.mark.slow  # 11 s: a sweep's fits and its analysis
def test_analyze_of_a_sweep_leaves_out_a_point_that_failed(tiny_config, tmp_path, capsys):
    # A diverged point (config.json, no checkpoint, no epoch row) was taken as a run: the cook command analyze gave
    # named it (soup: "The run kept no checkpoints"), and with the soups cooked across the finished points, as the
    # sweep's own error says, analyze stopped on its empty history.csv.
    from ich_keras import soup, sweep

    output = tmp_path / "sw"
    with pytest.raises(UserError, match="1 point"):
        sweep.main(["--config", str(tiny_config), "--grid", "train.learning_rate=[3e-3,1e30]", "--output",
                    str(output), "--no-soup", "--quiet"])
    assert (output / "learning_rate=1e30" / "config.json").is_file()
    command = _cook_command(output)
    assert not any("1e30" in arg for arg in command)
    soup.main([*command, "--uniform", "--quiet"])
    capsys.readouterr()
    analyze.main([str(output), "--quiet", "--cka-examples", "0"])
    assert "not analysed: learning_rate=1e30, not finished" in capsys.readouterr().err
    report = (output / "analysis" / "report.md").read_text()
    assert f"Sweep `{output}` of 1 run: learning_rate=0.003" in report


@pytest.mark.slow  # 8 s: a sweep's fits and its analysis
def test_analyze_of_a_sweep_whose_soups_are_stale_names_each_runs_checkpoints_by_its_point(tiny_config, tmp_path,
                                                                                           capsys):
    # With every soup left out (cooked from a checkpoint a resume's top-k has dropped since), analyze takes every
    # kept checkpoint: they were named "epoch_001" in both runs, an error ("1 name(s) belong to more than one file").
    from ich_keras import sweep

    output = tmp_path / "sw"
    sweep.main(["--config", str(tiny_config), "--grid", "train.seed=[0,1]", "--set", "train.epochs=2", "--set",
                'checkpoint.keep=[{metric="loss",mode="min",k=2}]', "--output", str(output), "--soup", "uniform",
                "--quiet"])
    # What a resume leaves when its new epochs push epoch_002 out of seed=1's top 2 (its file gone, the manifest
    # without it), minus the new epochs.
    folder = output / "seed=1" / "checkpoints"
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["kept"] = {e: f for e, f in manifest["kept"].items() if e != "2"}
    manifest["ranked"] = {m: [e for e in ranked if e != 2] for m, ranked in manifest["ranked"].items()}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "epoch_002.weights.h5").unlink()
    capsys.readouterr()
    analyze.main([str(output), "--quiet", "--cka-examples", "0"])
    assert "left out soups/uniform/" in capsys.readouterr().err
    metrics = json.loads((output / "analysis" / "metrics.json").read_text())
    assert list(metrics["test"]) == ["seed=0/epoch_001", "seed=0/epoch_002", "seed=1/epoch_001", "soft_voting"]
    # The soup left out is not in the report's Table IV either: its best single checkpoint was another.
    assert "Table IV" not in (output / "analysis" / "report.md").read_text()


@pytest.mark.slow  # two trainings, two soups and two analyses: about 40 s on the 2-core CPU machine
def test_reanalysing_a_sweep_of_fewer_runs_removes_the_training_figures_of_the_runs_left_out(tiny_config, tmp_path):
    # Another grid in the same folder (seed 0 only): the soups are cooked across its runs, and the analysis kept
    # training_seed=1.png beside a report that no longer shows it.
    from ich_keras import sweep

    output = tmp_path / "sw"
    argv = ["--config", str(tiny_config), "--output", str(output), "--soup", "uniform", "--quiet"]
    sweep.main([*argv, "--grid", "train.seed=[0,1]"])
    analyse = [str(output), "--quiet", "--batch-size", "8", "--cka-examples", "0"]
    analyze.main(analyse)
    out = output / "analysis"
    assert (out / "training_seed=0.png").is_file() and (out / "training_seed=1.png").is_file()
    others = [out / "training_by_hand.png", out / "notes_seed=1.png", out / "training_seed=1.png.txt"]
    for path in others:  # not what analyze writes: kept
        path.write_bytes(b"mine")
    sweep.main([*argv, "--grid", "train.seed=[0]"])
    analyze.main(analyse)
    assert (out / "training_seed=0.png").is_file() and not (out / "training_seed=1.png").exists()
    assert all(path.read_bytes() == b"mine" for path in others)


@pytest.mark.slow  # two trainings, a soup and the analysis: about 30 s on the 2-core CPU machine
def test_analyze_of_a_sweep_whose_point_was_deleted_names_its_missing_run(tiny_config, tmp_path, capsys):
    # The first point's directory deleted: analyze said the soups were "cooked from the runs of '.../seed=0', which
    # is not a run of this sweep" (a later point's: "cooked from checkpoints the run no longer keeps").
    from ich_keras import sweep

    output = tmp_path / "sw"
    sweep.main(["--config", str(tiny_config), "--grid", "train.seed=[0,1]", "--output", str(output), "--soup",
                "uniform", "--quiet"])
    shutil.rmtree(output / "seed=0")
    capsys.readouterr()
    analyze.main([str(output), "--quiet", "--batch-size", "8", "--cka-examples", "0"])
    err = capsys.readouterr().err
    missing = str(output / "seed=0")
    assert f"[analyze] not analysed: seed=0, whose run directory {missing} is missing" in err
    assert (f"[analyze] left out soups/uniform/: cooked from the run of seed=0, whose directory {missing} is missing; "
            f"cook again across the runs left with `python -m ich_keras.soup cook --runs {output / 'seed=1'} ") in err
    assert "no longer keeps" not in err and "not finished" not in err
    metrics = json.loads((output / "analysis" / "metrics.json").read_text())["test"]
    assert list(metrics) == ["seed=1/epoch_001", "soft_voting"]
