"""`python -m ich_keras.soup` with the merges from W0, provenance, significance and soups across runs, on a tiny
CoAtNet and a few digits; W0 has another class count (a new head), as when fine-tuning from ImageNet."""

import hashlib
import json
import shutil

import numpy as np
import pytest
from soup_fixtures import TINY_CONFIG, sane

from ich_keras import models, soup, soups
from ich_keras.errors import UserError
from ich_keras.inference import resolve_weights
from ich_keras.ranking import ranked
from ich_keras.rundir import load_run
from ich_keras.soups import across_runs
from ich_keras.ranking import best as best_single

CONFIG = TINY_CONFIG


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    directory = tmp_path_factory.mktemp("merge_cli")
    (directory / "tiny.toml").write_text(CONFIG)
    w0 = sane(models.build("coatnet_tiny", 5, 32), 10)  # 5 classes: its head does not fit the 10-class fine-tunes
    w0.save_weights(directory / "w0.weights.h5")
    model = models.build("coatnet_tiny", 10, 32)
    paths = []
    for seed in range(3):
        model.set_weights(w0.get_weights()[:-2] + model.get_weights()[-2:])  # fine-tunes start at W0's body
        for var in model.weights:  # ... and move a little from it
            if "float" in str(var.dtype) and "moving" not in var.path:
                noise = np.random.default_rng(seed).normal(0.0, 0.01, var.shape)
                var.assign(np.asarray(var) + noise.astype("float32"))
        paths.append(directory / f"epoch_{seed:03d}.weights.h5")
        model.save_weights(paths[-1])
    return directory, paths


@pytest.mark.slow  # about 40 s on a 2-core CPU: one CoAtNet forward compiled, seven soups scored
def test_merge_flags_write_soups_provenance_and_significance(setup):
    directory, paths = setup
    out = directory / "soups"
    w0 = directory / "w0.weights.h5"
    soup.main(["--checkpoints", *map(str, paths), "--config", str(directory / "tiny.toml"), "--uniform",
               "--model-stock", "--task-arithmetic", "--ties", "--dare", "--slerp", "--soft-voting", "--pretrained",
               str(w0), "--lambda", "0.5", "--ties-density", "0.3", "--dare-rate", "0.2", "--dare-seed", "4",
               "--bootstrap-resamples", "300", "--output", str(out), "--quiet"])
    expected = {"model_stock": soups.model_stock(paths, w0)[0], "ties": soups.ties(paths, w0, 0.3, 0.5)[0],
                "dare": soups.dare(paths, w0, 0.2, 4, 0.5)[0], "task_arithmetic": soups.task_arithmetic(paths, w0,
                                                                                                         0.5)[0]}
    for method, weights in expected.items():
        np.testing.assert_allclose(soups.read(out / method / "soup.weights.h5").flat, weights.flat, atol=1e-6)
    head = ["layers/dense/vars/0", "layers/dense/vars/1"]
    for method in ("uniform", "model_stock", "task_arithmetic", "ties", "dare", "slerp", "soft_voting"):
        results = json.loads((out / method / "results.json").read_text())
        assert results["test"]["num_examples"] == 10
        significance = results["significance"]
        assert significance["bootstrap"]["resamples"] == 300
        assert significance["bootstrap"]["low"] <= significance["bootstrap"]["difference"] <= \
            significance["bootstrap"]["high"]
        assert 0.0 < significance["mcnemar"]["p_value"] <= 1.0
        record = json.loads((out / method / "provenance.json").read_text())
        assert record["method"] == method and record == results["provenance"]
        assert [i["path"] for i in record["ingredients"]] == [p.name for p in paths]  # relative to the directory
        assert record["ingredients"][2]["sha256"] == hashlib.sha256(paths[2].read_bytes()).hexdigest()
        assert set(record["versions"]) == {"ich_keras", "keras", "jax", "numpy"}
        assert record["classes"] == [str(c) for c in range(10)]  # the digits' class folders, in label order
        markdown = (out / method / "results.md").read_text()
        assert "Provenance (`provenance.json`)" in markdown and "McNemar p" in markdown
        if method in ("model_stock", "task_arithmetic", "ties", "dare"):
            assert record["pretrained"] == {"path": "w0.weights.h5",
                                            "sha256": hashlib.sha256(w0.read_bytes()).hexdigest()}
            assert sorted(results["info"]["new_head"]) == head
        if method != "soft_voting":
            models.build("coatnet_tiny", 10, 32).load_weights(out / method / "soup.weights.h5")
    assert json.loads((out / "ties" / "provenance.json").read_text())["parameters"] == {"density": 0.3, "lambda": 0.5}
    slerp = json.loads((out / "slerp" / "results.json").read_text())
    two_best = ranked([e["val"] for e in slerp["ingredients"]], "accuracy")[:2]
    assert slerp["chosen"] == [slerp["ingredients"][i]["name"] for i in two_best]
    layers = json.loads((out / "model_stock" / "layers.json").read_text())
    assert all(0.0 <= s["t"] <= 1.0 for s in layers.values()) and not set(head) & set(layers)
    summary = (out / "results.md").read_text()
    for label in ("Model Stock", "Task arithmetic", "TIES", "DARE", "SLERP", "McNemar p"):
        assert label in summary


def test_merges_need_pretrained_weights(setup, tmp_path):
    directory, paths = setup
    with pytest.raises(ValueError, match="--model-stock needs the pretrained weights"):
        soup.main(["--checkpoints", *map(str, paths), "--config", str(directory / "tiny.toml"), "--model-stock",
                   "--output", str(tmp_path), "--quiet"])


def fake_run(directory, name, paths, config=CONFIG):
    """A run directory as fit writes it, holding `paths` as its kept checkpoints (epochs 1, 2, ...)."""
    from ich_keras import checkpoints, data, split_lists
    from ich_keras.config import config_to_dict, load_config

    run = directory / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "tiny.toml").write_text(config)
    cfg = load_config(run / "tiny.toml")
    (run / "config.json").write_text(json.dumps(config_to_dict(cfg)))
    split_lists.write_splits(run, data.build_splits(cfg.data))
    manifest = checkpoints.empty_manifest(cfg.checkpoint.keep)
    for epoch, path in enumerate(paths, start=1):
        shutil.copy(path, run / "checkpoints" / checkpoints.checkpoint_name(epoch))
        manifest["kept"][str(epoch)] = checkpoints.checkpoint_name(epoch)
        manifest["epochs"][str(epoch)] = {"accuracy": 0.1, "loss": 2.0}
    (run / "checkpoints" / "manifest.json").write_text(json.dumps(manifest))
    return run


@pytest.mark.slow  # about 20 s: one CoAtNet forward compiled
def test_soups_across_runs_label_ingredients_by_run(setup, capsys):
    directory, paths = setup
    sweep = directory / "sweep"
    fake_run(sweep, "lr_a", paths[:2])
    fake_run(sweep, "lr_b", paths[2:])
    soup.main(["--runs", str(sweep / "lr_*"), "--uniform", "--model-stock", "--pretrained",
               str(directory / "w0.weights.h5"), "--bootstrap-resamples", "50"])
    model = json.loads((sweep / "lr_a" / "config.json").read_text())["model"]["name"]
    err = capsys.readouterr().err
    assert err.startswith(f"[soup] {sweep} ({model}): cooking uniform, model_stock from 3 checkpoints of 2 runs "
                          f"into {sweep / 'soups'}/")
    # Progress lines name each ingredient by its run too: both runs have an epoch_001.
    assert "[evaluate] lr_a/epoch_001 on val (1/6)" in err and "[evaluate] lr_b/epoch_001 on test (6/6)" in err
    assert "[average] reading lr_b/epoch_001 (3/3)" in err
    results = json.loads((sweep / "soups" / "uniform" / "results.json").read_text())
    names = ["lr_a/epoch_001", "lr_a/epoch_002", "lr_b/epoch_001"]
    assert [e["name"] for e in results["ingredients"]] == names and results["chosen"] == names
    # Relative to the first run, the one results.json names: a moved sweep directory keeps finding them.
    assert [e["path"] for e in results["ingredients"]] == [
        "checkpoints/epoch_001.weights.h5", "checkpoints/epoch_002.weights.h5",
        "../lr_b/checkpoints/epoch_001.weights.h5"]
    np.testing.assert_allclose(soups.read(sweep / "soups" / "uniform" / "soup.weights.h5").flat,
                               soups.uniform(paths).flat, atol=1e-6)
    record = json.loads((sweep / "soups" / "model_stock" / "provenance.json").read_text())
    assert [i["name"] for i in record["ingredients"]] == names
    assert record["ingredients"][2]["path"] == "lr_b/checkpoints/epoch_001.weights.h5"
    # W0 lies outside the runs' common parent: absolute, so that it is found wherever the sweep moves.
    assert record["pretrained"]["path"] == (sweep.parent / "w0.weights.h5").resolve().as_posix()
    assert "| `lr_b/epoch_001` |" in (sweep / "soups" / "uniform" / "results.md").read_text()


def test_runs_with_a_run_dir_or_checkpoints_beside_them_are_refused(tmp_path):
    # --runs chose the ingredients and RUN_DIR / --checkpoints went unused without a word (the user's one
    # checkpoint came back as a soup of every kept checkpoint of the runs).
    runs = [str(tmp_path / "a"), str(tmp_path / "b")]
    with pytest.raises(ValueError, match=r"--runs takes every kept checkpoint .*so RUN_DIR would go unused"):
        soup.main(["cook", runs[0], "--runs", *runs, "--uniform", "--quiet"])
    with pytest.raises(ValueError, match=r"so --checkpoints would go unused: pass --runs alone"):
        soup.main(["cook", "--checkpoints", str(tmp_path / "a/checkpoints/epoch_001.weights.h5"), "--runs", *runs,
                   "--uniform", "--quiet"])


def test_checkpoints_of_a_run_of_other_classes_are_refused(setup, tmp_path):
    # The same class count fits the model: another run's head rows were averaged with, and scored as, this run's
    # classes without a word (--runs refuses such runs).
    directory, paths = setup
    home, other = fake_run(tmp_path, "home", paths[:1]), fake_run(tmp_path, "other", paths[1:3])
    classes = json.loads((home / "classes.json").read_text())
    (other / "classes.json").write_text(json.dumps([*classes[:-1], "renamed"]))
    for command in ("cook", "evaluate"):
        with pytest.raises(ValueError, match=r"The weights come from a run of other classes .*other.*'renamed'"):
            soup.main([command, str(home), "--checkpoints", str(home / "checkpoints" / "epoch_001.weights.h5"),
                       str(other / "checkpoints" / "epoch_002.weights.h5"), "--quiet"])
    assert not (home / "soups").exists()
    # A soup of that run, in its soups folder or wherever --output put it (its provenance names its ingredients):
    # the same head, so the same refusal, and the same for predict and export (`resolve_weights`).
    in_its_soups = other / "soups" / "uniform" / "soup.weights.h5"
    elsewhere = tmp_path / "shared_soups" / "uniform" / "soup.weights.h5"
    for soup_file in (in_its_soups, elsewhere):
        soup_file.parent.mkdir(parents=True)
        shutil.copy(other / "checkpoints" / "epoch_002.weights.h5", soup_file)
    renamed = json.loads((other / "classes.json").read_text())
    (elsewhere.parent / "provenance.json").write_text(json.dumps(
        {"root": str(other), "ingredients": [{"path": "checkpoints/epoch_002.weights.h5"}], "classes": renamed}))
    for soup_file in (in_its_soups, elsewhere):
        with pytest.raises(ValueError, match=r"The weights come from a run of other classes .*other.*'renamed'"):
            soup.main(["cook", str(home), "--checkpoints", str(home / "checkpoints" / "epoch_001.weights.h5"),
                       str(soup_file), "--uniform", "--quiet"])
        with pytest.raises(ValueError, match=r"The weights come from a run of other classes .*other.*'renamed'"):
            resolve_weights(load_run(home), soup_file)
    assert resolve_weights(load_run(other), elsewhere) == elsewhere
    # The runs moved since: the root the provenance names is gone, and the classes it lists still tell (the soup
    # was taken as of unknown origin, its "renamed" output read as this run's last class).
    moved = shutil.move(home, tmp_path / "moved_home")
    shutil.move(other, tmp_path / "moved_other")
    with pytest.raises(ValueError, match=r"The weights come from a run of other classes .*provenance\.json.*"
                                         r"'renamed'"):
        resolve_weights(load_run(moved), elsewhere)


def test_checkpoints_of_a_run_with_other_val_images_are_refused(setup, tmp_path):
    # --runs refuses a run whose val split differs (it could have trained on the images the soups are chosen on);
    # the same run's checkpoints named with --checkpoints went in without a word.
    directory, paths = setup
    home = fake_run(tmp_path, "home", paths[:1])
    other = fake_run(tmp_path, "other", paths[1:2], CONFIG.replace("[model]", "split_seed = 5\n[model]"))
    with pytest.raises(ValueError, match=r"comes from a run that cannot be souped with .*home: its val split differs "
                                         r".*as --runs would refuse that run .*other"):
        soup.main(["cook", str(home), "--checkpoints", str(home / "checkpoints" / "epoch_001.weights.h5"),
                   str(other / "checkpoints" / "epoch_001.weights.h5"), "--uniform", "--quiet"])
    assert not (home / "soups").exists()


def test_soups_across_runs_reject_a_run_that_differs(setup):
    directory, paths = setup
    sweep = directory / "mixed"
    fake_run(sweep, "a", paths[:1])
    fake_run(sweep, "b", paths[1:2], CONFIG.replace("image_size = 32", "image_size = 48"))
    fake_run(sweep, "c", paths[1:2], CONFIG.replace("[model]", "split_seed = 5\n[model]"))
    with pytest.raises(ValueError, match=r"Run '.*mixed/b' cannot be souped with '.*mixed/a': its image size"):
        soup.main(["--runs", str(sweep / "a"), str(sweep / "b"), "--uniform", "--quiet"])
    with pytest.raises(ValueError, match=r"mixed/c' cannot be souped .*: its val split differs"):
        soup.main(["--runs", str(sweep / "a"), str(sweep / "c"), "--uniform", "--quiet"])
    with pytest.raises(ValueError, match="No run directory matches"):
        soup.main(["--runs", str(sweep / "z*"), "--uniform", "--quiet"])
    # Fine-tunes of another W0 (the same path spelled elsewhere named another file): refused; another path to the
    # same bytes is the same W0.
    w0, copy, other = directory / "w0.weights.h5", directory / "w0_copy.weights.h5", directory / "other.weights.h5"
    shutil.copy(w0, copy)
    shutil.copy(paths[0], other)
    for name, init in (("d", w0), ("e", copy), ("f", other)):
        fake_run(sweep, name, paths[1:2], CONFIG.replace("[model]", f'[model]\ninit = "{init.as_posix()}"'))
    with pytest.raises(ValueError, match=r"mixed/f' cannot be souped .*: its pretrained init \(model.init\) differs"):
        soup.main(["--runs", str(sweep / "d"), str(sweep / "f"), "--uniform", "--quiet"])
    across_runs.check_compatible([load_run(sweep / "d"), load_run(sweep / "e")])
    # One W0, new heads from two seeds: their average would be one of two unrelated heads.
    fake_run(sweep, "g", paths[1:2], CONFIG.replace("[model]", f'[model]\ninit = "{w0.as_posix()}"\nhead_seed = 3'))
    with pytest.raises(ValueError, match=r"mixed/g' cannot be souped .*: its new head's seed \(model.head_seed\) "
                                         r"differs \(3 vs 0\)"):
        across_runs.check_compatible([load_run(sweep / "d"), load_run(sweep / "g")])
    # A model.init of the runs' class count gives them its own head, drawn from no seed: their head_seed went unused.
    for name, head_seed in (("h", 0), ("i", 3)):
        fake_run(sweep, name, paths[1:2],
                 CONFIG.replace("[model]", f'[model]\ninit = "{paths[0].as_posix()}"\nhead_seed = {head_seed}'))
    across_runs.check_compatible([load_run(sweep / "h"), load_run(sweep / "i")])
    # Runs fit before model.head_seed existed (no head_seed in config.json: it reads as 0) drew their new head from
    # train.seed: two such runs of other seeds, or one beside a head_seed run, hold unrelated heads.
    for name, seed in (("old0", 0), ("old1", 1), ("old0b", 0)):
        run = fake_run(sweep, name, paths[1:2], CONFIG.replace("[model]", f'[model]\ninit = "{w0.as_posix()}"')
                       .replace("[train]", f"[train]\nseed = {seed}"))
        saved = json.loads((run / "config.json").read_text())
        del saved["model"]["head_seed"]
        (run / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"mixed/old1' cannot be souped .*: its new head's seed \(model.head_seed\) "
                                         r"differs \('train.seed 1, a fit from before model.head_seed' vs "
                                         r"'train.seed 0, a fit from before model.head_seed'\)"):
        across_runs.check_compatible([load_run(sweep / "old0"), load_run(sweep / "old1")])
    with pytest.raises(ValueError, match=r"mixed/old0' cannot be souped .*: its new head's seed"):
        across_runs.check_compatible([load_run(sweep / "d"), load_run(sweep / "old0")])
    across_runs.check_compatible([load_run(sweep / "old0"), load_run(sweep / "old0b")])  # one seed, one head


def test_best_single_ties_are_broken_by_val_loss(setup):
    """Two checkpoints with the same predictions (one's logits doubled) tie on val accuracy; the baseline is the
    one with the lower val loss, not the first listed."""
    directory, paths = setup
    model = models.build("coatnet_tiny", 10, 32)
    model.load_weights(paths[0])
    head = model.get_layer("head.fc")
    sharper = directory / "sharper.weights.h5"
    head.set_weights([w * 3.0 for w in head.get_weights()])
    model.save_weights(sharper)
    out = directory / "tie"
    soup.main(["--checkpoints", str(sharper), str(paths[0]), "--config", str(directory / "tiny.toml"), "--uniform",
               "--bootstrap-resamples", "50", "--output", str(out), "--quiet"])
    results = json.loads((out / "uniform" / "results.json").read_text())
    val = [entry["val"] for entry in results["ingredients"]]
    # the first listed has the higher loss, so the old rule (first of the tied) picked it
    assert val[0]["accuracy"] == val[1]["accuracy"] and val[0]["loss"] > val[1]["loss"]
    assert results["best_single"]["name"] == results["ingredients"][best_single(val, "accuracy")]["name"]
    assert results["best_single"]["name"] == results["ingredients"][int(np.argmin([v["loss"] for v in val]))]["name"]


def test_a_soup_recipe_keeps_the_merge_parameters(tmp_path):
    """A [soup] table saves a merge and its parameters; --set and flags override it."""
    from ich_keras import cli
    from ich_keras.soups.runner import SoupOptions

    recipe = tmp_path / "recipe.toml"
    recipe.write_text(CONFIG + '[soup]\nmethods = ["ties", "dare"]\nties_density = 0.4\nlam = 0.7\ndare_seed = 3\n')
    args = soup.parser().parse_args(["cook", "--config", str(recipe), "--set", "soup.dare_rate=0.25", "--dare-seed",
                                     "5"])
    options = SoupOptions(**cli.recipe(SoupOptions, "soup", args))
    assert options.methods == ("ties", "dare") and options.ties_density == 0.4 and options.lam == 0.7
    assert (options.dare_rate, options.dare_seed) == (0.25, 5)


@pytest.mark.slow  # about 20 s: one CoAtNet forward compiled
def test_check_command_scans_the_line_to_the_uniform_soup(setup, capsys):
    directory, paths = setup
    run = fake_run(directory / "checked", "run", paths)
    soup.main(["check", str(run / "checkpoints" / "epoch_001.weights.h5"), "--points", "0", "0.5", "1", "--output",
               str(directory / "check_out"), "--quiet"])  # the run is found from A's path; B is the uniform soup
    report = json.loads((directory / "check_out" / "check.json").read_text())
    assert [p["alpha"] for p in report["points"]] == [0.0, 0.5, 1.0]
    assert report["points"][0]["val"]["num_examples"] == 10
    assert report["warning"] is None  # fine-tunes 0.01 apart around one W0 share a basin
    out = capsys.readouterr().out
    assert "Loss barrier" in out and out.endswith(f"Wrote 1 file:\n  {directory / 'check_out' / 'check.json'}\n")
    with pytest.raises(SystemExit):
        soup.main(["check", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--output OUTPUT also write check.json into this folder (default: nothing is written)" in help_text
    # A file as --output failed with "File exists" after the whole scan; now before anything is scored.
    with pytest.raises(UserError, match=r"--output is a file; check writes check.json into a folder"):
        soup.main(["check", str(paths[0]), "--output", str(paths[1]), "--quiet"])
