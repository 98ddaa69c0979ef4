"""`python -m ich_keras.soup` end to end on a tiny CoAtNet and a few digits: evaluate, soups, MonoSoup."""

import json
import re
import shutil

import numpy as np
import pytest
from soup_fixtures import TINY_CONFIG, sane

from ich_keras import models, soup, soups
from ich_keras.soups import inputs, provenance, publish
from ich_keras.errors import UserError

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cli")
    (directory / "tiny.toml").write_text(TINY_CONFIG)
    model = models.build("coatnet_tiny", 10, 32)
    paths = []
    for seed in range(3):
        sane(model, seed + 1)
        paths.append(directory / f"epoch_{seed:03d}.weights.h5")
        model.save_weights(paths[-1])
    return directory, paths


@pytest.mark.slow  # about 30 s on a 2-core CPU: compiles a CoAtNet forward, BN and interpolation passes
def test_soup_command_writes_every_output(setup):
    directory, paths = setup
    out = directory / "soups"
    soup.main(["--checkpoints", *map(str, paths), "--config", str(directory / "tiny.toml"), "--uniform",
               "--greedy", "--pruned", "--soft-voting", "--recalibrate-bn", "--bn-batches", "1", "--interpolate",
               "--pretrained", str(paths[0]), "--alphas", "0", "1", "--output", str(out), "--quiet"])
    for method in ("uniform", "greedy", "pruned"):
        results = json.loads((out / method / "results.json").read_text())
        assert len(results["ingredients"]) == 3 and results["ingredients"][0]["val"]["num_examples"] == 10
        assert results["test"]["num_examples"] == 10 and results["soft_voting"]["forward_passes"] == 3
        assert results["bn_recalibrated"]["batches"] == 1
        recipe = json.loads((out / method / "provenance.json").read_text())["parameters"]
        assert (recipe["bn_batches"], recipe["bn_batch_size"]) == (1, 8)  # the batches' size shapes their statistics
        assert [p["alpha"] for p in results["interpolation"]] == [0.0, 1.0]
        assert results["interpolation"][1]["test"]["loss"] == pytest.approx(results["test"]["loss"], rel=1e-5)
        assert "| Best single checkpoint" in (out / method / "results.md").read_text()
        # The steps name ingredients as "chosen" does, not by the path given on the command line.
        assert {step["name"] for step in results["steps"]} <= {p.name for p in paths}
        assert len(results["steps"]) == (3 if method != "uniform" else 0)
        model = models.build("coatnet_tiny", 10, 32)
        model.load_weights(out / method / "soup.weights.h5")  # Keras accepts the written soup
    uniform = json.loads((out / "uniform" / "results.json").read_text())
    np.testing.assert_allclose(soups.read(out / "uniform" / "soup.weights.h5").flat, soups.uniform(paths).flat,
                               atol=1e-6)
    assert uniform["chosen"] == [p.name for p in paths]
    summary = (out / "results.md").read_text()
    for label in ("Uniform soup", "Greedy soup", "Pruned soup", "Soft voting", "BN recalibration"):
        assert label in summary


def test_evaluate_and_monosoup_commands(setup):
    directory, paths = setup
    out = directory / "eval"
    soup.main(["evaluate", "--checkpoints", *map(str, paths), "--config", str(directory / "tiny.toml"),
               "--split", "test", "--output", str(out), "--quiet"])
    entries = json.loads((out / "evaluate" / "test.json").read_text())
    assert [e["name"] for e in entries] == [p.name for p in paths]
    assert len(entries[0]["test"]["confusion_matrix"]) == 10
    assert "Confusion matrix" in (out / "evaluate" / "test.md").read_text()

    (directory / "again").mkdir()  # a second file named as the first: both rows say which file they are
    twin = directory / "again" / paths[0].name
    shutil.copy(paths[1], twin)
    soup.main(["evaluate", "--checkpoints", str(paths[0]), str(twin), "--config", str(directory / "tiny.toml"),
               "--split", "test", "--output", str(out / "twins"), "--quiet"])
    twins = json.loads((out / "twins" / "evaluate" / "test.json").read_text())
    assert len({e["name"] for e in twins}) == 2 and all(e["name"] == e["path"] for e in twins)
    assert twins[1]["test"] == entries[1]["test"]  # the copy scored as the file it copies

    (out / "other").mkdir()
    (out / "other" / ".tmp-not-ours").write_text("another program's temporary file")
    soup.main(["monosoup", "--pretrained", str(paths[0]), "--finetuned", str(paths[1]), "--config",
               str(directory / "tiny.toml"), "--rule", "vetterli", "--output", str(out), "--quiet"])
    assert (out / "other" / ".tmp-not-ours").is_file()  # only its own leftovers are removed
    layers = json.loads((out / "monosoup_vetterli" / "layers.json").read_text())
    assert layers["rule"] == "vetterli" and layers["layers"]
    assert all(0.0 <= s["lambda_low"] <= 1.0 for s in layers["layers"].values())
    results = json.loads((out / "monosoup_vetterli" / "results.json").read_text())
    assert results["test"]["num_examples"] == 10
    models.build("coatnet_tiny", 10, 32).load_weights(out / "monosoup_vetterli" / "soup.weights.h5")
    record = json.loads((out / "monosoup_vetterli" / "provenance.json").read_text())
    assert record["ingredients"][0]["sha256"] == provenance.sha256(paths[1])
    assert record["pretrained"]["sha256"] == provenance.sha256(paths[0])
    assert provenance.summary(record) in (out / "monosoup_vetterli" / "results.md").read_text()  # as cook's say
    assert not list(out.glob(".tmp-*"))  # staged beside the output, then renamed into place
    # Like cook, it holds the lock of the folder it publishes into: a second command there stops at once.
    with publish.locked(out), pytest.raises(UserError, match="Another soup command"):
        soup.main(["monosoup", "--pretrained", str(paths[0]), "--finetuned", str(paths[1]), "--no-eval",
                   "--output", str(out), "--quiet"])


def test_soup_command_rejects_missing_inputs(setup, tmp_path):
    directory, paths = setup
    with pytest.raises(UserError, match="Pass a run directory or --config"):
        soup.main(["--checkpoints", str(paths[0]), "--uniform"])
    with pytest.raises(UserError, match="Not a run directory"):
        soup.main([str(tmp_path), "--uniform"])
    given = ["--config", str(directory / "tiny.toml"), "--output", str(tmp_path / "soups"), "--quiet"]
    with pytest.raises(UserError, match="--interpolate needs the pretrained weights"):
        soup.main(["--checkpoints", *map(str, paths), *given, "--interpolate"])
    # Mistakes in the recipe stop the command before any ingredient is scored, naming the option.
    with pytest.raises(UserError, match=r"Unknown soup method\(s\) \['unifrom'\]"):
        soup.main(["--checkpoints", *map(str, paths), *given, "--set", 'soup.methods=["unifrom", "greedy"]'])
    with pytest.raises(UserError, match=r"--slerp needs at least 2 checkpoints\. Received: 1"):
        soup.main(["--checkpoints", str(paths[0]), *given, "--slerp"])
    with pytest.raises(UserError, match=r"TIES density must lie in \(0, 1\]\. Received: ties_density=2\.0"):
        soup.main(["--checkpoints", *map(str, paths), *given, "--ties", "--pretrained", str(paths[0]),
                   "--ties-density", "2"])
    # A W0 file that is not there (--pretrained, or model.init by default): named before anything is scored.
    missing = str(tmp_path / "moved" / "w0.weights.h5")
    with pytest.raises(UserError, match=r"W0 \(for --model-stock, --interpolate\) are not a file: pass --pretrained"
                                        r".*model\.init.*Received: pretrained='.*moved/w0\.weights\.h5'"):
        soup.main(["--checkpoints", *map(str, paths), *given, "--model-stock", "--interpolate", "--pretrained",
                   missing])
    with pytest.raises(UserError, match=r"W0 \(for --ties\) are not a file.*Received: pretrained='.*moved/w0"):
        soup.main(["--checkpoints", *map(str, paths), *given, "--ties", "--set", f"model.init={missing}"])
    assert not (tmp_path / "soups").exists()


W0_USES = [["cook", "--task-arithmetic"], ["cook", "--ties"], ["cook", "--dare"], ["cook", "--model-stock"],
           ["cook", "--uniform", "--interpolate"], ["monosoup", "--finetuned", "{b}"],
           ["monosoup", "--finetuned", "{b}", "--no-eval"]]


@pytest.mark.parametrize("argv", W0_USES, ids=[" ".join(a) for a in W0_USES])
def test_a_w0_of_another_architecture_is_named_before_anything_is_scored(setup, tmp_path, capsys, argv):
    # cook scored every ingredient (minutes on real data) before the merge found that W0 did not fit.
    from soup_fixtures import conv_model

    from ich_keras import cli

    directory, paths = setup
    w0 = tmp_path / "w0.weights.h5"
    conv_model(num_classes=10).save_weights(w0)
    argv = [arg.format(b=paths[1]) for arg in argv]
    given = ["--pretrained", str(w0), "--output", str(tmp_path / "out")]
    if argv[0] == "cook" or "--no-eval" not in argv:
        given += ["--config", str(directory / "tiny.toml")]
    if argv[0] == "cook":
        given += ["--checkpoints", *map(str, paths)]
    with pytest.raises(SystemExit) as exit_info:  # no --quiet: scoring would say so on stderr
        cli.run(soup.main, [*argv, *given])
    assert exit_info.value.code == cli.USER_ERROR_STATUS
    err = capsys.readouterr().err
    # The first in the model's order; W1's file alone (no run) lists its arrays in HDF5 name order.
    first = (r"head\.fc #0, \(4, 10\) in W0 but \(128, 10\) in .*epoch_001" if "--no-eval" in argv else
             r"stem\.conv1/kernel \(3, 3, 3, 16\), which W0 lacks")
    assert re.search(rf"^error: W0 does not fit .* first differing layer {first}\..* "
                     r"Received: pretrained='.*w0\.weights\.h5'", err, re.MULTILINE), err
    assert "[evaluate]" not in err and "[average]" not in err


def test_a_misspelt_command_is_named_and_a_folder_of_that_name_is_still_a_run(tmp_path, monkeypatch):
    # `soup cok RUN` read as `soup cook cok RUN` and answered "unrecognized arguments: RUN".
    with pytest.raises(UserError, match=r"Unknown soup command 'cok': did you mean 'cook'\?"):
        soup.main(["cok", "runs/demo"])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cok").mkdir()
    with pytest.raises(UserError, match=r"Not a run directory .* run_dir='cok'"):
        soup.main(["cok"])


def test_output_into_another_runs_soups_or_a_run_is_refused(tmp_path):
    # `soup cook runs/a --output runs/b/soups` replaced b's own uniform soup with a's, and `analyze runs/b` then
    # reported a's soup as b's (its ingredients' names, epoch_NNN, exist in b too): wrong numbers, nothing said.
    for name in ("a", "b"):
        (tmp_path / name / "soups").mkdir(parents=True)
        (tmp_path / name / "config.json").write_text("{}")
    with pytest.raises(UserError, match=r"soups folder of another run \(.*b\)"):
        inputs.check_output(tmp_path / "b" / "soups", tmp_path / "a")
    with pytest.raises(UserError, match=r"soups folder of another run"):
        inputs.check_output(tmp_path / "b" / "soups", None)  # soups across runs
    with pytest.raises(UserError, match=r"--output is a run directory"):
        inputs.check_output(tmp_path / "b", tmp_path / "a")
    inputs.check_output(tmp_path / "a" / "soups", tmp_path / "a")  # the run's own: as without --output
    inputs.check_output(tmp_path / "elsewhere" / "soups", tmp_path / "a")
    # A folder of the user's holding a results.md of theirs: cooking there replaced it without a word.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "results.md").write_text("my own notes")
    with pytest.raises(UserError, match=r"--output holds a results.md that no soup command wrote .*mine/results.md"):
        inputs.check_output(mine, tmp_path / "a")
    (mine / "uniform").mkdir()
    (mine / "uniform" / "results.json").write_text("{}")
    inputs.check_output(mine, tmp_path / "a")  # soups cooked there before: their table, written again


# Numbers no sub-command can use: each is an `error:` line naming the option and its value, before the run's data is
# read or anything scored. `check --tolerance -1` used to scan the line and warn of a midpoint "more than -100 points
# below"; a negative seed failed after all the scoring with numpy's traceback.
BAD_NUMBERS = [
    (["check", "{a}", "--tolerance", "-1"], r"--tolerance is a fraction .* Received: tolerance=-1\.0"),
    (["check", "{a}", "--tolerance", "nan"], r"--tolerance .* Received: tolerance=nan"),
    (["check", "{a}", "--tolerance", "5"], r"--tolerance .*0\.05 = 5 points.* Received: tolerance=5\.0"),
    (["check", "{a}", "--points", "0", "1"], r"--points takes three or more .* Received: points=\[0\.0, 1\.0\]"),
    (["check", "{a}", "--points", "0", "0.5", "0.5"], r"--points .*distinct.* Received: points=\[0\.0, 0\.5, 0\.5\]"),
    (["check", "{a}", "--points", "0", "nan", "1"], r"--points .*finite.* Received: points=\[0\.0, nan, 1\.0\]"),
    (["cook", "--uniform", "--bootstrap-resamples", "0"],
     r"--bootstrap-resamples \(soup\.bootstrap_resamples\) must be 1 or more\. Received: bootstrap_resamples=0"),
    (["cook", "--uniform", "--bootstrap-seed", "-1"], r"--bootstrap-seed .* Received: bootstrap_seed=-1"),
    (["cook", "--dare", "--pretrained", "{a}", "--dare-seed", "-2"], r"--dare-seed .* Received: dare_seed=-2"),
    (["cook", "--task-arithmetic", "--pretrained", "{a}", "--lambda", "nan"], r"--lambda .* Received: lam=nan"),
    (["cook", "--learned", "--learned-learning-rate", "inf"], r"--learned-epochs .*--learned-learning-rate .*=inf"),
    (["monosoup", "--pretrained", "{a}", "--finetuned", "{b}", "--R", "nan"], r"--energy \(R, .*Received: R=nan"),
    (["monosoup", "--pretrained", "{a}", "--finetuned", "{b}", "--energy", "1.5"], r"--energy \(R, .*Received: R=1\.5"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_NUMBERS, ids=[" ".join(a) for a, _ in BAD_NUMBERS])
def test_numbers_out_of_range_are_named_before_anything_is_scored(setup, tmp_path, capsys, argv, message):
    from ich_keras import cli

    directory, paths = setup
    argv = [arg.format(a=paths[0], b=paths[1]) for arg in argv]
    given = ["--config", str(directory / "tiny.toml"), "--output", str(tmp_path / "out")]
    if argv[0] == "cook":
        given += ["--checkpoints", *map(str, paths)]
    with pytest.raises(SystemExit) as exit_info:  # no --quiet: a scan or a scoring would say so on stderr
        cli.run(soup.main, [*argv, *given])
    assert exit_info.value.code == cli.USER_ERROR_STATUS
    err = capsys.readouterr().err
    assert re.search(r"^error: " + message, err, re.MULTILINE), err
    assert "scoring" not in err and "[evaluate]" not in err
    assert "cooking" not in err  # the recipe is checked before the command says what it cooks
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # builds and writes a ViT-B/16 (86 M weights)
def test_recalibrate_bn_of_a_model_without_batchnorm_is_refused_before_scoring(tmp_path, capsys):
    # ViT-B/16 normalises with LayerNorm: the recalibration failed with a traceback after every ingredient was scored.
    (tmp_path / "vit.toml").write_text(TINY_CONFIG.replace('"coatnet_tiny"', '"vit_base_patch16_224"'))
    checkpoint = tmp_path / "epoch_001.weights.h5"
    models.build("vit_base_patch16_224", 10, 32).save_weights(checkpoint)
    with pytest.raises(UserError, match=r"--recalibrate-bn \(soup.recalibrate_bn\): vit_base_patch16_224 has no "
                                        r"BatchNormalization layer"):
        soup.main(["--checkpoints", str(checkpoint), "--config", str(tmp_path / "vit.toml"), "--uniform",
                   "--recalibrate-bn", "--output", str(tmp_path / "soups")])
    assert "[evaluate]" not in capsys.readouterr().err  # refused before any ingredient was scored
    assert not (tmp_path / "soups" / "uniform").exists()
    # Soft voting alone is never recalibrated: a recipe asking for recalibration still cooks it.
    soup.main(["--checkpoints", str(checkpoint), "--config", str(tmp_path / "vit.toml"), "--soft-voting",
               "--recalibrate-bn", "--output", str(tmp_path / "soups"), "--quiet"])
    assert json.loads((tmp_path / "soups" / "soft_voting" / "results.json").read_text())["forward_passes"] == 1
