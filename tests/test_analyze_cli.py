"""`python -m ich_keras.analyze` end to end on a tiny real run (conftest's `trained_run`: 2 epochs on generated
image files, uniform and greedy soups, soft voting), then the analysis."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from image_folder import make_image_folder
from PIL import Image
from scipy.special import logsumexp

from ich_keras import analyze
from ich_keras.errors import UserError
from ich_keras.rundir import load_run


@pytest.fixture(scope="module")
def analysed_run(trained_run):
    """The shared run analysed once with CKA (writes its `analysis/` folder)."""
    workdir = trained_run
    # The first checkpoint stands in for a pretrained init (a real W0 -> W1 pair of the same architecture).
    # Given relative to the working directory, as typed: cka.json stores it resolved.
    pretrained = os.path.relpath(load_run(workdir).checkpoints[0].path)
    summary = analyze.main([str(workdir), "--pretrained", pretrained, "--cka-examples", "16", "--quiet",
                            "--batch-size", "8"])
    return workdir, summary


def test_analyze_writes_every_output_and_they_agree_with_the_soups(analysed_run):
    workdir, summary = analysed_run
    out = workdir / "analysis"
    for name in ("predictions.npz", "metrics.json", "distances.json", "mds.png", "accuracy.png", "per_class.md",
                 "per_class.json", "bias_variance.md", "bias_variance.json", "cka.json", "cka.png", "report.md"):
        assert (out / name).is_file(), name
    assert not list(out.glob(".tmp-*"))  # atomic writes leave no temporary files behind
    for png in ("mds.png", "accuracy.png", "cka.png"):
        with Image.open(out / png) as image:
            assert image.format == "PNG" and min(image.size) > 300
    report = (out / "report.md").read_text()
    for needle in ("](mds.png)", "](accuracy.png)", "](cka.png)", "Table V", "Bias–variance", summary["best_single"]):
        assert needle in report

    run = load_run(workdir)
    uniform = json.loads((workdir / "soups/uniform/results.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    with np.load(out / "predictions.npz") as cache:
        names = [str(n) for n in cache["names"]]
        ingredients = [Path(i["path"]).name.removesuffix(".weights.h5") for i in uniform["ingredients"]]
        assert names == ingredients + ["greedy", "uniform", "soft_voting"]
        np.testing.assert_array_equal(cache["val_labels"], run.labels("val"))
        log_probs = cache["val_log_probs"]
        assert log_probs.shape == (len(names), len(run.labels("val")), run.num_classes)
        # Soft voting is the log of the ingredients' mean probability.
        members = log_probs[:len(ingredients)]
        expected = logsumexp(members, axis=0) - np.log(len(ingredients))
        np.testing.assert_allclose(log_probs[-1], expected, atol=1e-9)
    # The analysis' own pass scores every model as the soups' pass did (same `evaluate`, same data).
    for ingredient, name in zip(uniform["ingredients"], ingredients):
        for split in ("val", "test"):
            assert metrics[split][name]["accuracy"] == pytest.approx(ingredient[split]["accuracy"])
            assert metrics[split][name]["loss"] == pytest.approx(ingredient[split]["loss"], rel=1e-4)
    assert metrics["test"]["uniform"]["f1"] == pytest.approx(uniform["test"]["f1"])
    assert metrics["test"]["soft_voting"]["accuracy"] == pytest.approx(uniform["soft_voting"]["test"]["accuracy"])

    dist = json.loads((out / "distances.json").read_text())
    matrix = np.array(dist["distances"])
    np.testing.assert_allclose(matrix, matrix.T)
    assert np.array(dist["mds"]).shape == (len(names), 2)

    bv = json.loads((out / "bias_variance.json").read_text())
    log_loss = bv["ingredients"]["log_loss"]
    assert log_loss["bias"] + log_loss["variance"] == pytest.approx(log_loss["total"], abs=1e-6)
    zero_one = bv["ingredients"]["zero_one"]
    assert zero_one["bias"] + zero_one["net_variance"] == pytest.approx(zero_one["total"], abs=1e-6)

    per_class = json.loads((out / "per_class.json").read_text())
    assert list(per_class["classes"]) == list(run.class_names)
    assert per_class["macro"]["uniform"]["accuracy"] == pytest.approx(metrics["val"]["uniform"]["accuracy"])

    cka = json.loads((out / "cka.json").read_text())
    assert cka["pretrained"] == (workdir / "checkpoints" / Path(cka["pretrained"]).name).resolve().as_posix()
    values = np.array(cka["cka"])
    assert values.shape == (len(cka["models"]), len(cka["blocks"])) and cka["models"][1:] == ["greedy", "uniform"]
    assert np.all((values >= 0) & (values <= 1 + 1e-9))


def test_second_analysis_reads_the_prediction_cache(analysed_run):
    workdir, _ = analysed_run
    summary = analyze.main([str(workdir), "--split", "test", "--diagonal", "zero", "--quiet"])
    assert summary["cached"]
    assert json.loads((workdir / "analysis/distances.json").read_text())["split"] == "test"


def test_a_moved_run_analysed_from_another_directory_keeps_its_cache(analysed_run, tmp_path, monkeypatch):
    workdir, _ = analysed_run
    shutil.copytree(workdir, tmp_path / "moved/run")  # copy2 keeps the files' mtimes, as mv and cp -a do
    monkeypatch.chdir(tmp_path / "moved")
    assert analyze.main(["run", "--quiet", "--cka-examples", "0"])["cached"]
    soup = tmp_path / "moved/run/soups/uniform/soup.weights.h5"
    stat = soup.stat()
    os.utime(soup, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # a soup cooked again: predicted again
    assert not analyze.main(["run", "--quiet", "--cka-examples", "0"])["cached"]


def test_a_soup_of_checkpoints_the_run_no_longer_keeps_is_left_out_with_the_command_to_cook_it(analysed_run,
                                                                                                 tmp_path, capsys):
    # `fit --resume` with more epochs: top-k drops checkpoints that an earlier greedy soup was cooked from.
    workdir, _ = analysed_run
    run = tmp_path / "run"
    shutil.copytree(workdir, run)
    results_path = run / "soups/greedy/results.json"
    results = json.loads(results_path.read_text())
    results["ingredients"].append({**results["ingredients"][0], "path": "checkpoints/epoch_099.weights.h5"})
    results_path.write_text(json.dumps(results))
    capsys.readouterr()
    analyze.main([str(run), "--quiet", "--cka-examples", "0"])
    err = capsys.readouterr().err
    assert (f"[analyze] left out soups/greedy/: cooked from checkpoints the run no longer keeps; cook again with "
            f"`python -m ich_keras.soup {run} --greedy`") in err
    metrics = json.loads((run / "analysis/metrics.json").read_text())["test"]
    assert "uniform" in metrics and "greedy" not in metrics


def test_a_monosoup_of_a_checkpoint_the_run_no_longer_keeps_is_left_out_with_the_command_to_make_one(analysed_run,
                                                                                                     tmp_path, capsys):
    # A MonoSoup's results.json lists no ingredients, so one of a W1 a resume's top-k dropped was analysed as if
    # nothing had changed.
    import shlex

    from ich_keras import soup

    workdir, _ = analysed_run
    run = tmp_path / "run"
    shutil.copytree(workdir, run)
    kept = load_run(run).checkpoints
    dropped = run / "checkpoints/epoch_099.weights.h5"  # kept when the MonoSoup was made, dropped since
    shutil.copyfile(kept[-1].path, dropped)
    soup.main(["monosoup", str(run), "--pretrained", str(kept[0].path), "--finetuned", str(dropped), "--rule",
               "vetterli", "--no-eval", "--quiet"])
    dropped.unlink()
    capsys.readouterr()
    analyze.main([str(run), "--quiet", "--cka-examples", "0"])
    err = capsys.readouterr().err
    assert ("[analyze] left out soups/monosoup_vetterli/: a MonoSoup of epoch_099.weights.h5, a checkpoint the run "
            "no longer keeps; make one again from a kept checkpoint with `") in err
    assert "monosoup_vetterli" not in json.loads((run / "analysis/metrics.json").read_text())["test"]
    command = shlex.split(err.split("left out soups/monosoup_vetterli/")[1].split("`")[1])
    best = max(kept, key=lambda c: (c.val["accuracy"], -c.val["loss"]))
    assert command == ["python", "-m", "ich_keras.soup", "monosoup", str(run), "--pretrained", str(kept[0].path),
                       "--finetuned", str(best.path), "--rule", "vetterli", "--no-eval"]
    soup.main([*command[3:], "--quiet"])  # made again from a kept checkpoint: analysed again
    analyze.main([str(run), "--quiet", "--cka-examples", "0"])
    assert "left out" not in capsys.readouterr().err
    assert "monosoup_vetterli" in json.loads((run / "analysis/metrics.json").read_text())["test"]


def _monosoup_made_without_the_run(trained_run, tmp_path) -> Path:
    """A copy of the tiny run, with a MonoSoup of its kept checkpoints made with --config (not the run) into its
    soups folder; returns the copy."""
    from ich_keras import soup

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    kept = load_run(run).checkpoints
    config = tmp_path / "tiny.toml"
    config.write_text('[data]\nimage_size = 32\n[model]\nname = "coatnet_tiny"\n')
    soup.main(["monosoup", "--pretrained", str(kept[0].path), "--finetuned", str(kept[-1].path), "--rule",
               "vetterli", "--config", str(config), "--output", str(run / "soups"), "--no-eval", "--quiet"])
    return run


def test_a_monosoup_made_without_the_run_into_its_soups_folder_is_analysed_after_the_run_moves(trained_run,
                                                                                                 tmp_path, capsys):
    # Made with --config instead of the run, its provenance's paths are relative to the soups folder it went into;
    # after a move that folder no longer matches the recorded root, and W1 was looked for beside the run: stale.
    from ich_keras.analysis import predictions
    from ich_keras.analysis.subject import load_subject

    run = _monosoup_made_without_the_run(trained_run, tmp_path)
    moved = tmp_path / "moved"
    run.rename(moved)
    capsys.readouterr()
    models, _ = predictions.discover(load_subject(moved))
    assert "left out" not in capsys.readouterr().err
    assert "monosoup_vetterli" in [model.name for model in models]


def test_a_monosoup_of_another_runs_checkpoint_finds_its_w1_by_the_recorded_root_after_a_move(
        trained_run, tmp_path, monkeypatch, capsys):
    # A's checkpoint made into B's soups: its provenance's paths are relative to A. Its recorded absolute root goes
    # stale with the move, and the old guess looked beside B, where B's own epoch file of that name lay: the
    # MonoSoup read as made from it, and as not stale once A's file was gone.
    from ich_keras import soup
    from ich_keras.analysis import predictions
    from ich_keras.analysis.subject import load_subject

    for name in ("A", "B"):
        shutil.copytree(trained_run, tmp_path / "runs" / name)
    w0, w1 = (c.path for c in (load_run(tmp_path / "runs/A").checkpoints[i] for i in (0, -1)))
    soup.main(["monosoup", "--pretrained", str(w0), "--finetuned", str(w1), "--rule", "vetterli", "--no-eval",
               "--output", str(tmp_path / "runs/B/soups"), "--quiet"])  # A, the run W1 was kept in, gives the model
    made = tmp_path / "runs/B/soups/monosoup_vetterli"
    results = json.loads((made / "results.json").read_text())
    assert results["provenance"]["root_from_soups"] == "../../A"
    assert json.loads((made / "provenance.json").read_text()) == results["provenance"]

    (tmp_path / "runs").rename(tmp_path / "moved")
    monkeypatch.chdir(tmp_path / "moved/B")
    subject = load_subject(Path("."))
    moved_w1 = tmp_path / "moved/A/checkpoints" / w1.name
    assert [p.resolve() for p in subject.monosoup_finetuned(results)] == [moved_w1]
    assert (Path("checkpoints") / w1.name).is_file()  # B keeps a file of that name: not W1

    moved_w1.unlink()  # A's resume dropped it from its top-k
    capsys.readouterr()
    models, _ = predictions.discover(subject)
    assert ("[analyze] left out soups/monosoup_vetterli/: a MonoSoup of " + w1.name) in capsys.readouterr().err
    assert "monosoup_vetterli" not in [model.name for model in models]


def test_a_monosoup_made_before_its_root_was_recorded_is_still_found_beside_either_root(trained_run, tmp_path):
    """results.json of a MonoSoup made before root_from_soups existed: W1 beside the soups folder it went into."""
    from ich_keras.analysis.subject import load_subject

    run = _monosoup_made_without_the_run(trained_run, tmp_path)
    w1 = load_run(run).checkpoints[-1].path.name
    results = json.loads((run / "soups/monosoup_vetterli/results.json").read_text())
    assert results["provenance"].pop("root_from_soups") == "."
    run.rename(tmp_path / "moved")
    assert load_subject(tmp_path / "moved").monosoup_finetuned(results) == [
        tmp_path / "moved/soups" / f"../checkpoints/{w1}"]


def test_checkpoints_kept_after_the_soups_were_cooked_are_named_with_the_command_to_include_them(analysed_run,
                                                                                                 tmp_path, capsys):
    # `fit --resume` with more epochs after the soups were cooked: the analysis takes the soups' ingredients.
    workdir, _ = analysed_run
    run = tmp_path / "run"
    shutil.copytree(workdir, run)  # keeps the mtimes: every checkpoint older than the soups
    manifest_path = run / "checkpoints/manifest.json"
    manifest = json.loads(manifest_path.read_text())
    first = min(manifest["kept"], key=int)
    manifest["kept"]["99"] = "epoch_099.weights.h5"
    manifest["epochs"]["99"] = manifest["epochs"][first]
    manifest_path.write_text(json.dumps(manifest))
    shutil.copyfile(run / "checkpoints" / manifest["kept"][first], run / "checkpoints/epoch_099.weights.h5")
    capsys.readouterr()
    analyze.main([str(run), "--quiet", "--cka-examples", "0"])
    err = capsys.readouterr().err
    assert (f"[analyze] not analysed: epoch_099.weights.h5, kept after the soups were cooked; cook again with "
            f"`python -m ich_keras.soup {run} --greedy --soft-voting --uniform` to include them") in err
    assert "epoch_099" not in json.loads((run / "analysis/metrics.json").read_text())["test"]
    os.utime(run / "checkpoints/epoch_099.weights.h5", (0, 0))  # older than the soups: left out by choice, unnamed
    analyze.main([str(run), "--quiet", "--cka-examples", "0"])
    assert "not analysed" not in capsys.readouterr().err


def test_analyze_rejects_a_directory_that_is_not_a_run(tmp_path):
    with pytest.raises(ValueError, match="Not a run directory"):
        analyze.main([str(tmp_path), "--quiet"])


def test_a_soup_the_run_does_not_have_is_named_before_anything_is_predicted(trained_run, tmp_path):
    with pytest.raises(UserError, match=r"No soup or model named 'ties'.*'greedy', 'uniform', 'soft_voting'\]"):
        analyze.main([str(trained_run), "--soup", "ties", "--output", str(tmp_path / "analysis"), "--quiet"])
    assert not (tmp_path / "analysis").exists()


def test_a_damaged_prediction_cache_is_computed_again(tmp_path, capsys):
    # A cache cut short (an interrupted copy of the run) stopped every later analysis with BadZipFile.
    from safety_fixtures import make_run

    run = make_run(tmp_path / "run", seeds=(1, 2))
    (run / "analysis").mkdir()
    (run / "analysis/predictions.npz").write_bytes(b"PK\x03\x04 cut short")
    args = [str(run), "--quiet", "--cka-examples", "0", "--batch-size", "4"]
    assert not analyze.main(args)["cached"]
    capsys.readouterr()
    assert analyze.main(args)["cached"]  # written again, whole
    printed = capsys.readouterr().out
    assert ", predictions read from the cache (best single" in printed
    assert "report.md" in printed and "predictions.npz" not in printed  # listed only when written


def test_images_replaced_under_their_names_are_predicted_again(tmp_path, capsys):
    # The cache was keyed on the weights files alone: a photo re-exported under its name, or another data folder
    # given with --set data.source, kept the old predictions.
    from safety_fixtures import make_run

    photos = make_image_folder(tmp_path / "photos", classes=10, per_class=2, size=32, splits=("train", "val", "test"))
    run = make_run(tmp_path / "run", seeds=(1, 2), source=str(photos))
    args = [str(run), "--quiet", "--cka-examples", "0", "--batch-size", "4"]
    assert not analyze.main(args)["cached"]
    with np.load(run / "analysis/predictions.npz") as cache:
        before = cache["test_log_probs"]
    copy = shutil.copytree(photos, tmp_path / "copy")  # copy2: the same files, mtimes kept
    assert analyze.main(args + ["--set", f"data.source={copy}"])["cached"]

    first = copy / load_run(run).splits.splits["test"].keys[0]
    Image.fromarray(np.full((32, 32, 3), 255, np.uint8)).save(first)  # another picture under its name
    assert not analyze.main(args + ["--set", f"data.source={copy}"])["cached"]
    with np.load(run / "analysis/predictions.npz") as cache:
        after = cache["test_log_probs"]
    assert not np.array_equal(after[:, 0], before[:, 0])  # that image's row, predicted from its new pixels
    np.testing.assert_array_equal(after[:, 1:], before[:, 1:])
    assert not analyze.main(args)["cached"]  # the original folder again: its own stamps

    # A run copied without its images: a valid cache of its weights still redraws the analysis, and says so.
    shutil.rmtree(photos)
    shutil.rmtree(copy)
    assert analyze.main(args)["cached"]
    assert "the run's images are not in" in capsys.readouterr().err
    (run / "analysis/predictions.npz").unlink()
    with pytest.raises(UserError, match="data folder is not there"):  # nothing to predict from
        analyze.main(args)


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


def test_an_output_elsewhere_writes_nothing_into_the_run_and_reuses_its_cache(tmp_path):
    # A run someone else owns, or on a read-only share, is analysed with --output; the cache went into the run.
    from safety_fixtures import make_run

    run = make_run(tmp_path / "run", seeds=(1, 2))
    args = [str(run), "--quiet", "--cka-examples", "0", "--batch-size", "4"]
    before = _files(run)
    assert not analyze.main(args + ["--output", str(tmp_path / "mine")])["cached"]
    assert _files(run) == before
    assert (tmp_path / "mine/predictions.npz").is_file() and (tmp_path / "mine/report.md").is_file()
    assert analyze.main(args + ["--output", str(tmp_path / "mine")])["cached"]

    assert not analyze.main(args)["cached"]  # the run's own analysis does not read another folder's cache
    before = _files(run)
    assert analyze.main(args + ["--output", str(tmp_path / "theirs")])["cached"]  # the run's cache, read
    assert _files(run) == before
    assert not (tmp_path / "theirs/predictions.npz").exists()  # nothing new to cache


def test_an_output_folder_with_files_no_analysis_wrote_is_refused_before_anything_is_predicted(trained_run,
                                                                                                tmp_path):
    # `analyze RUN --output mine` replaced the user's own mine/report.md without a word.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my own notes")
    with pytest.raises(UserError, match=r"--output holds files that no analysis wrote, .*\['report.md'\]"):
        analyze.main([str(trained_run), "--output", str(mine), "--quiet"])
    assert (mine / "report.md").read_text() == "my own notes" and sorted(mine.iterdir()) == [mine / "report.md"]


def test_cka_of_a_moved_model_init_says_how_to_give_it(tmp_path, capsys):
    """A run whose model.init moved away (its W0 was a soup of a run moved since) lost its CKA with a note in
    report.md alone; the note and stderr now say to pass --pretrained."""
    from types import SimpleNamespace

    from ich_keras.analysis import runner

    run = SimpleNamespace(config=SimpleNamespace(model=SimpleNamespace(init=str(tmp_path / "gone.weights.h5"))))
    options = runner.AnalysisOptions()
    text = runner._cka_section(run, None, "epoch_001", "val", options, tmp_path)
    assert "were not found" in text and "--pretrained W0.weights.h5" in text
    assert "--pretrained W0.weights.h5" in capsys.readouterr().err


def test_the_command_to_cook_the_soups_again_leaves_out_a_monosoup_which_cook_has_no_flag_for():
    # After `fit --resume` the analysis names the new checkpoints with the command that includes them; with a
    # `soup monosoup` beside the cooked soups it offered `--monosoup-variance`, which `soup cook` refuses.
    from ich_keras import soup
    from ich_keras.analysis.subject import Subject

    command = Subject(Path("runs/r"), (), ("runs/r",)).cook_command(["greedy", "monosoup_variance", "uniform"])
    assert command == "python -m ich_keras.soup runs/r --greedy --uniform"
    soup.parse(["cook", *command.split()[3:]])  # what cook takes (a wrong flag would exit with status 2)


def test_the_command_to_cook_stale_soups_again_cooks_them_as_they_were_cooked(trained_run, tmp_path, capsys):
    # A uniform soup with its WiSE-FT curve from a W0 given with --pretrained (the run has no model.init), left out
    # as stale: the command analyze gave had no --interpolate (no wiseft.png after cooking it again).
    import shlex

    from ich_keras import soup
    from ich_keras.analysis import predictions
    from ich_keras.analysis.subject import load_subject

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    w0 = load_run(run).checkpoints[0].path  # a W0 of the same architecture
    soup.main(["cook", str(run), "--uniform", "--interpolate", "--alphas", "0", "0.5", "1", "--pretrained", str(w0),
               "--recalibrate-bn", "--bn-batches", "1", "--quiet"])
    results_path = run / "soups/uniform/results.json"  # as a resume's top-k leaves it: an ingredient gone
    results = json.loads(results_path.read_text())
    results["ingredients"].append({**results["ingredients"][0], "path": "checkpoints/epoch_099.weights.h5"})
    results_path.write_text(json.dumps(results))
    capsys.readouterr()
    predictions.discover(load_subject(run))
    command = capsys.readouterr().err.split("left out soups/uniform/")[1].split("`")[1]
    assert shlex.split(command) == ["python", "-m", "ich_keras.soup", str(run), "--uniform", "--recalibrate-bn",
                                    "--bn-batches", "1", "--interpolate", "--pretrained", str(w0), "--alphas", "0.0",
                                    "0.5", "1.0"]
    soup.parse(["cook", *shlex.split(command)[3:]])  # what cook takes


def test_soups_of_an_older_soup_outside_the_run_give_the_command_that_cooks_those_soups_again(trained_run, tmp_path):
    # The error said to cook with `soup RUN` alone: the default methods, not the soups that were there.
    from ich_keras.analysis import predictions
    from ich_keras.analysis.subject import load_subject

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    elsewhere = tmp_path / "elsewhere.weights.h5"  # another copy of the run's checkpoint
    shutil.copyfile(load_run(run).checkpoints[0].path, elsewhere)
    results_path = run / "soups/greedy/results.json"  # as an older soup stored it: as typed, no fingerprint
    results = json.loads(results_path.read_text())
    del results["ingredients_fingerprint"]
    results["ingredients"][0]["path"] = str(elsewhere)
    results_path.write_text(json.dumps(results))
    with pytest.raises(UserError, match=rf"points outside the run directory .*Cook the soups again with "
                                        rf"`python -m ich_keras\.soup {run} --greedy --soft-voting --uniform`"):
        predictions.discover(load_subject(run))


def test_soups_cooked_from_runs_not_of_the_sweep_give_the_command_that_cooks_those_soups_again(tmp_path):
    # A sweep whose soups/ came from another sweep's runs: the command cooked the default methods, not these.
    from ich_keras.analysis import predictions
    from ich_keras.analysis.subject import Subject

    for method in ("greedy", "uniform"):
        (tmp_path / "soups" / method).mkdir(parents=True)
        (tmp_path / "soups" / method / "results.json").write_text(json.dumps({
            "method": method, "run_dir": "/elsewhere/seed=7", "ingredients_fingerprint": "f",
            "ingredients": [{"name": "seed=7/epoch_001", "path": "../seed=7/checkpoints/epoch_001.weights.h5"}]}))
    subject = Subject(tmp_path, (), ("--runs", str(tmp_path / "seed=0")), across_runs=True)
    with pytest.raises(UserError, match=r"runs of '/elsewhere/seed=7', which is not a run of this sweep; cook them "
                                        rf"again with `python -m ich_keras\.soup --runs {tmp_path}/seed=0 --greedy "
                                        r"--uniform`"):
        predictions.discover(subject)

