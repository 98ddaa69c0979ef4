"""Soups never report something false: outputs are published together under a lock, the
summary mixes no ingredient sets, and analysis reads the ingredients of the run it is given, wherever that run
lies and whatever the working directory."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safety_fixtures import make_run as _make_run
from safety_fixtures import save_ingredient as _save_ingredient
from soup_fixtures import TINY_CONFIG

from ich_keras import checkpoints, models, soup, soups
from ich_keras.soups import report
from ich_keras.soups import summary as table_iv

@pytest.fixture(scope="module")
def ingredients(tmp_path_factory):
    """Three ingredient files and a config for `soup --checkpoints ... --config`."""
    directory = tmp_path_factory.mktemp("ingredients")
    (directory / "tiny.toml").write_text(TINY_CONFIG)
    model = models.build("coatnet_tiny", 10, 32)
    paths = [directory / f"epoch_{seed:03d}.weights.h5" for seed in (1, 2, 3)]
    for seed, path in zip((1, 2, 3), paths):
        _save_ingredient(model, seed, path)
    return directory / "tiny.toml", paths


def _soup(config, paths, out, *methods):
    soup.main(["--checkpoints", *map(str, paths), "--config", str(config), "--output", str(out), "--quiet",
               *(f"--{m}" for m in methods)])


def test_a_second_soup_on_the_same_folder_stops_at_once(ingredients, tmp_path):
    from ich_keras.soups import publish

    config, paths = ingredients
    with publish.locked(tmp_path), pytest.raises(ValueError, match="Another soup command") as error:
        _soup(config, paths, tmp_path, "uniform")
    assert "lock=" in str(error.value) and f"pid {__import__('os').getpid()}" in str(error.value)
    assert not (tmp_path / "uniform").exists()


def test_a_folder_that_holds_no_soup_is_not_replaced(ingredients, tmp_path):
    config, paths = ingredients
    (tmp_path / "uniform").mkdir()
    (tmp_path / "uniform" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds no previous soup") as error:
        _soup(config, paths, tmp_path, "uniform")
    assert str(tmp_path / "uniform") in str(error.value)
    assert [p.name for p in (tmp_path / "uniform").iterdir()] == ["notes.txt"]


def test_a_soup_of_the_previous_soup_of_its_method_is_refused_and_the_file_kept(ingredients, tmp_path):
    # `soup RUN --checkpoints RUN/soups/uniform/soup.weights.h5 ... --uniform` deleted that ingredient when it
    # published, and provenance.json and analyze then named the new soup as its own ingredient.
    config, paths = ingredients
    (tmp_path / "uniform").mkdir()
    previous = tmp_path / "uniform" / "soup.weights.h5"
    shutil.copy(paths[0], previous)
    with pytest.raises(ValueError, match=r"An input of this soup is a file its output replaces .*uniform"):
        _soup(config, [previous, paths[1]], tmp_path, "uniform")
    (tmp_path / "monosoup_variance").mkdir()
    shutil.copy(paths[0], tmp_path / "monosoup_variance" / "soup.weights.h5")
    with pytest.raises(ValueError, match=r"An input of this soup is a file its output replaces"):
        soup.main(["monosoup", "--pretrained", str(paths[1]), "--finetuned",
                   str(tmp_path / "monosoup_variance" / "soup.weights.h5"), "--config", str(config), "--output",
                   str(tmp_path), "--no-eval", "--quiet"])
    assert previous.read_bytes() == paths[0].read_bytes()
    assert sorted(p.name for p in (tmp_path / "uniform").iterdir()) == ["soup.weights.h5"]


def test_an_ingredient_listed_twice_is_named_as_such(ingredients, tmp_path):
    # The message said the name "belongs to more than one file" and listed one path twice.
    config, paths = ingredients
    with pytest.raises(ValueError, match=r"An ingredient is listed more than once: .*epoch_001\.weights\.h5 "
                                         r"\(2 times\)"):
        _soup(config, [paths[0], paths[1], paths[0]], tmp_path, "uniform")
    assert not (tmp_path / "uniform").exists()


def _previous_soup(folder):
    """A method folder as a soup command left it, with a user's notes, plots folder and link added."""
    folder.mkdir(parents=True)
    for name in ("soup.weights.h5", "results.json", "results.md", "layers.json"):
        (folder / name).write_text(f"old {name}")
    (folder / "notes.txt").write_text("mine")
    (folder / "plots").mkdir()
    (folder / "plots" / "loss.png").write_bytes(b"png")
    (folder / "latest").symlink_to("soup.weights.h5")


def test_a_new_soup_replaces_its_outputs_and_keeps_the_users_files(tmp_path):
    from ich_keras.soups import publish

    _previous_soup(tmp_path / "uniform")
    with publish.staged(tmp_path, "uniform") as directory:
        for name in ("soup.weights.h5", "results.json", "results.md"):
            (directory / name).write_text(f"new {name}")
    folder = tmp_path / "uniform"
    assert sorted(p.name for p in folder.iterdir()) == ["latest", "notes.txt", "plots", "results.json",
                                                       "results.md", "soup.weights.h5"]  # the old layers.json went
    assert (folder / "soup.weights.h5").read_text() == "new soup.weights.h5"
    assert (folder / "notes.txt").read_text() == "mine" and (folder / "plots" / "loss.png").read_bytes() == b"png"
    assert (folder / "latest").is_symlink() and (folder / "latest").read_text() == "new soup.weights.h5"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["uniform"]  # no staged folder left


def test_a_soup_that_fails_after_staging_leaves_the_previous_folder_and_no_staged_one(tmp_path):
    from ich_keras.errors import UserError
    from ich_keras.soups import publish

    _previous_soup(tmp_path / "uniform")
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match="bad option"), publish.staged(tmp_path, "uniform") as directory:
        (directory / "soup.weights.h5").write_text("new")
        raise UserError("bad option")
    assert {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["uniform"]

    # An output the soups write but do not list as theirs would be kept as the user's at the next cook: a bug.
    with pytest.raises(AssertionError, match="weights.npz"), publish.staged(tmp_path, "uniform") as directory:
        (directory / "weights.npz").write_text("new")
    assert (tmp_path / "uniform" / "soup.weights.h5").read_text() == "old soup.weights.h5"


def test_a_soup_folder_is_not_replaced_under_the_working_directory_and_a_linked_one_stays_linked(tmp_path,
                                                                                                  monkeypatch):
    from ich_keras.errors import UserError
    from ich_keras.soups import publish

    # Run from inside soups/uniform with a relative path, the publish moved the working directory away and lost the
    # folder (hidden in a staging folder); a linked method folder became a plain one.
    _previous_soup(tmp_path / "soups" / "uniform")
    monkeypatch.chdir(tmp_path / "soups" / "uniform")
    inside = r"The working directory is inside .*uniform, which this command replaces"
    with pytest.raises(UserError, match=inside):  # checked before any ingredient is scored
        publish.check_replaceable(Path("..") / "uniform")
    with pytest.raises(UserError, match=inside), publish.staged(Path(".."), "uniform"):
        pass
    assert (tmp_path / "soups" / "uniform" / "soup.weights.h5").read_text() == "old soup.weights.h5"
    monkeypatch.chdir(tmp_path)
    _previous_soup(tmp_path / "big" / "greedy")
    (tmp_path / "soups" / "greedy").symlink_to(tmp_path / "big" / "greedy")
    with publish.staged(tmp_path / "soups", "greedy") as directory:
        (directory / "soup.weights.h5").write_text("new")
    assert (tmp_path / "soups" / "greedy").is_symlink()
    assert (tmp_path / "big" / "greedy" / "soup.weights.h5").read_text() == "new"
    assert (tmp_path / "big" / "greedy" / "notes.txt").read_text() == "mine"


def test_a_kill_between_a_publishs_two_renames_puts_the_previous_folder_back(tmp_path):
    from ich_keras.soups import publish

    # A kill after the previous folder moved into the staged one and before the new one took its name.
    _previous_soup(tmp_path / ".tmp-uniform-dead" / "previous")
    (tmp_path / ".tmp-uniform-dead" / "uniform").mkdir()
    publish.remove_leftovers(tmp_path, ["uniform"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["uniform"]
    assert (tmp_path / "uniform" / "soup.weights.h5").read_text() == "old soup.weights.h5"
    assert (tmp_path / "uniform" / "notes.txt").read_text() == "mine"


@pytest.mark.slow  # three soup commands on a tiny CoAtNet: about a minute on a 2-core CPU
def test_weights_and_reports_stay_together_and_the_summary_mixes_no_ingredient_sets(ingredients, tmp_path,
                                                                                     monkeypatch):
    config, paths = ingredients
    out = tmp_path / "soups"
    # Leftovers of a killed command: a staged method folder and a half-written file inside a method folder.
    (out / ".tmp-uniform-dead" / "uniform").mkdir(parents=True)
    (out / ".tmp-uniform-dead" / "uniform" / "soup.weights.h5").write_bytes(b"half")
    (out / "greedy").mkdir()
    (out / "greedy" / ".tmp-results.json-dead").write_text("{")
    _soup(config, paths, out, "uniform", "greedy")
    assert sorted(p.name for p in out.iterdir()) == [".lock", "greedy", "results.md", "uniform"]
    assert not list(out.glob("*/.tmp-*"))
    first = json.loads((out / "uniform" / "results.json").read_text())
    assert len(first["ingredients"]) == 3 and first["ingredients_fingerprint"]

    # A kill after the new soup's weights are written and before its report: the folder published before stays
    # whole (its weights are still the soup its results.json describes).
    def killed(results):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "results_markdown", killed)
    with pytest.raises(KeyboardInterrupt):
        _soup(config, paths[:2], out, "uniform")
    monkeypatch.undo()
    assert json.loads((out / "uniform" / "results.json").read_text()) == first
    np.testing.assert_allclose(soups.read(out / "uniform" / "soup.weights.h5").flat, soups.uniform(paths).flat,
                               atol=1e-6)

    # Re-cooking uniform from two ingredients: the summary shows it and leaves out greedy (cooked from three).
    _soup(config, paths[:2], out, "uniform")
    assert not list(out.glob(".tmp-*"))  # the killed command's staged folder was swept
    np.testing.assert_allclose(soups.read(out / "uniform" / "soup.weights.h5").flat,
                               soups.uniform(paths[:2]).flat, atol=1e-6)
    summary = (out / "results.md").read_text()
    rows = [line for line in summary.splitlines() if line.startswith("| ") and "Method" not in line]
    assert len(rows) == 2 and rows[0].startswith("| Best single checkpoint (epoch_00")
    assert rows[1].startswith("| Uniform soup | 2 |")  # two ingredients
    assert "Left out: greedy/" in summary


def test_a_merge_whose_outputs_are_not_finite_is_refused_and_not_published(ingredients, tmp_path):
    # lambda 1e4 moves the weights far from where the model computes: finite weights, NaN logits. Before, the soup
    # table showed an accuracy computed from them and analyze failed later on the NaN.
    config, paths = ingredients
    out = tmp_path / "soups"
    with pytest.raises(ValueError, match=r"The task_arithmetic soup gives non-finite outputs \(NaN or inf\) for "
                                         r"\d+ of \d+ images.*Nothing of it was written"):
        soup.main(["--checkpoints", *map(str, paths[1:]), "--config", str(config), "--output", str(out), "--quiet",
                   "--task-arithmetic", "--pretrained", str(paths[0]), "--lambda", "1e4"])
    assert not out.exists()  # the command made it and it holds no result: its lock file and itself are gone


def test_a_failed_soup_leaves_nothing_it_made_and_keeps_what_was_there(ingredients, tmp_path):
    # A failed `soup cook|monosoup --output NEWDIR` left NEWDIR/.lock behind, so the next look at the folder found an
    # "output" that holds nothing. A W0 of another architecture fails inside the lock, after the folder is made.
    from soup_fixtures import conv_model

    config, paths = ingredients
    other = tmp_path / "other.weights.h5"
    conv_model().save_weights(other)
    monosoup = ["monosoup", "--pretrained", str(other), "--finetuned", str(paths[0]), "--no-eval", "--quiet"]
    with pytest.raises(ValueError, match="W0 does not fit"):
        soup.main([*monosoup, "--output", str(tmp_path / "new" / "soups")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.weights.h5"]  # new/ and new/soups/ are gone too
    # A folder the user had stays (empty as it was); so do a lock file and a soup from before.
    (tmp_path / "mine").mkdir()
    with pytest.raises(ValueError, match="W0 does not fit"):
        soup.main([*monosoup, "--output", str(tmp_path / "mine")])
    assert list((tmp_path / "mine").iterdir()) == []
    _soup(config, paths[:1], tmp_path / "mine", "uniform")
    with pytest.raises(ValueError, match="W0 does not fit"):
        soup.main(["--checkpoints", *map(str, paths), "--config", str(config), "--output", str(tmp_path / "mine"),
                   "--quiet", "--model-stock", "--pretrained", str(other)])
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == [".lock", "results.md", "uniform"]


def test_analyze_reads_the_copied_runs_own_ingredients_from_any_directory(tmp_path, monkeypatch):
    from scipy.special import log_softmax

    from ich_keras.analysis import predictions
    from ich_keras.analysis.subject import load_subject

    monkeypatch.chdir(tmp_path)
    _make_run(tmp_path / "demo")
    soup.main(["demo", "--uniform", "--quiet"])  # the run typed relative to the working directory, as users do
    shutil.copytree(tmp_path / "demo", tmp_path / "copy")
    # The original's checkpoints change (a new training run in the same place); the copy must not notice.
    model = models.build("coatnet_tiny", 10, 32)
    for epoch in (1, 2, 3):
        _save_ingredient(model, 10 + epoch, tmp_path / "demo/checkpoints" / checkpoints.checkpoint_name(epoch))

    own = [str(tmp_path / "copy/checkpoints" / checkpoints.checkpoint_name(e)) for e in (1, 2, 3)]
    for cwd in (tmp_path, tmp_path / "copy" / "checkpoints"):  # where "demo/..." once named the original's files
        monkeypatch.chdir(cwd)
        copy = load_subject(tmp_path / "copy")
        preds, _, _ = predictions.predictions_for(copy, splits=("val",), batch_size=8, progress=False)
        assert [m.path for m in preds.models if m.kind == "ingredient"] == own
    # The numbers are the copy's files' numbers.
    model.load_weights(own[0])
    expected = log_softmax(np.asarray(model.predict(copy.run.dataset("val", 8), verbose=0), np.float64), axis=-1)
    np.testing.assert_allclose(preds.log_probs["val"][0], expected, atol=1e-4)
    stored = json.loads((tmp_path / "copy/soups/uniform/results.json").read_text())["ingredients"]
    assert [i["path"] for i in stored] == [f"checkpoints/epoch_00{e}.weights.h5" for e in (1, 2, 3)]

    # An ingredient missing from the run is an error naming it, never another file.
    (tmp_path / "copy/checkpoints/epoch_002.weights.h5").unlink()
    with pytest.raises(ValueError, match="epoch_002.weights.h5") as error:
        predictions.predictions_for(load_subject(tmp_path / "copy"), splits=("val",), batch_size=8, progress=False)
    assert "missing" in str(error.value)


def test_soups_cooked_with_a_config_store_paths_that_analyze_finds(tmp_path, monkeypatch):
    # Without RUN_DIR the command has no run; its paths must still resolve where its soups/ is read. Before, they
    # were stored relative to the config's folder (configs/), and `analyze runs/demo` found no ingredient.
    from ich_keras.analysis import predictions
    from ich_keras.analysis.subject import load_subject

    monkeypatch.chdir(tmp_path)
    _make_run(tmp_path / "runs" / "demo")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "demo.toml").write_text(TINY_CONFIG)
    names = [checkpoints.checkpoint_name(e) for e in (1, 2, 3)]
    soup.main(["--checkpoints", *(f"runs/demo/checkpoints/{n}" for n in names), "--config", "configs/demo.toml",
               "--uniform", "--quiet"])  # kept checkpoints of a run: their soups go to runs/demo/soups
    results = json.loads((tmp_path / "runs/demo/soups/uniform/results.json").read_text())
    record = json.loads((tmp_path / "runs/demo/soups/uniform/provenance.json").read_text())
    # Absolute: as typed, they would depend on the working directory the command ran in.
    assert results["run_dir"] == record["root"] == (tmp_path / "runs/demo").resolve().as_posix()
    assert [i["path"] for i in results["ingredients"]] == [i["path"] for i in record["ingredients"]] == \
        [f"checkpoints/{n}" for n in names]
    found, _ = predictions.discover(load_subject("runs/demo"))
    assert [Path(m.path).resolve() for m in found if m.kind == "ingredient"] == \
        [(tmp_path / "runs/demo/checkpoints" / n).resolve() for n in names]

    # Loose files (no run): paths relative to the folder holding the output, here weights/ beside weights/soups.
    shutil.copytree(tmp_path / "runs/demo/checkpoints", tmp_path / "weights")
    soup.main(["--checkpoints", *(f"weights/{n}" for n in names), "--config", "configs/demo.toml", "--uniform",
               "--quiet"])
    results = json.loads((tmp_path / "weights/soups/uniform/results.json").read_text())
    assert results["run_dir"] == (tmp_path / "weights").resolve().as_posix()
    assert [i["path"] for i in results["ingredients"]] == names


def test_ingredients_that_share_a_name_are_refused_before_anything_is_scored(tmp_path, monkeypatch):
    # epoch_001 of two runs: keyed by name, their rows, "chosen", provenance's "used" and the analysis' soft voting
    # would silently take one file for the other.
    from ich_keras.analysis import predictions
    from ich_keras.analysis.subject import load_subject
    from ich_keras.rundir import load_run

    monkeypatch.chdir(tmp_path)
    _make_run(tmp_path / "demo")
    _make_run(tmp_path / "other", seeds=(7, 8, 9))
    first, second = "demo/checkpoints/epoch_001.weights.h5", "other/checkpoints/epoch_001.weights.h5"
    with pytest.raises(ValueError, match=r"told apart by name.*--runs.*Received: 'epoch_001\.weights\.h5': "
                                         rf"{first}, {second}"):
        soup.main(["demo", "--checkpoints", first, second, "--uniform", "--quiet"])
    assert not (tmp_path / "demo" / "soups").exists()

    # Two soups cooked into one run from files with one name (each cook on its own is fine): analysis refuses too.
    soup.main(["demo", "--uniform", "--quiet"])
    soup.main(["demo", "--checkpoints", second, "other/checkpoints/epoch_002.weights.h5", "--greedy", "--quiet"])
    with pytest.raises(ValueError, match=r"told apart by name.*cooked from files with one name.*"
                                         r"Received: 'epoch_001': ") as error:
        predictions.discover(load_subject("demo"))
    assert "demo/checkpoints/epoch_001.weights.h5" in str(error.value)
    assert "other/checkpoints/epoch_001.weights.h5" in str(error.value)
    # Rows are kept per model, not per name: the two files give two different rows.
    refs = [predictions.ModelRef("epoch_001", "ingredient", path) for path in (first, second)]
    preds = predictions.predict(load_run("demo"), [*refs, predictions.ModelRef("soft_voting", "ensemble", "")],
                                ("val",), batch_size=8, progress=False)
    assert not np.allclose(preds.log_probs["val"][0], preds.log_probs["val"][1])


@pytest.mark.slow  # two soup commands on a tiny CoAtNet
def test_a_soup_command_stopped_part_way_leaves_no_summary_row_of_a_replaced_soup(ingredients, tmp_path,
                                                                                   monkeypatch):
    """Ctrl-C in a later method used to leave soups/results.md as the previous command wrote it: rows of soups
    that had been replaced since (another set's numbers, a "+ BN recalibration" row), which analyze then copied
    into its report."""
    from ich_keras.analysis import runner as analysis_runner
    from ich_keras.soups import runner

    config, paths = ingredients
    out = tmp_path / "run" / "soups"
    _soup(config, paths, out, "uniform", "greedy")
    assert "| Uniform soup | 3 |" in (out / "results.md").read_text()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "greedy", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _soup(config, paths[:2], out, "uniform", "greedy")  # uniform is published, then greedy is stopped
    monkeypatch.undo()
    assert json.loads((out / "uniform" / "results.json").read_text())["chosen"] == [p.name for p in paths[:2]]
    summary = (out / "results.md").read_text()
    assert "| Uniform soup | 2 |" in summary and "| Uniform soup | 3 |" not in summary
    assert "Left out: greedy/" in summary  # greedy/ still holds the soup of three

    # A kill -9 leaves no chance to rewrite it: analyze makes the table from the method folders.
    (out / "results.md").write_text("# Soups (test)\n\n| Uniform soup | 3 | stale |\n")
    (section, body), = analysis_runner._soups_table(out.parent, {"uniform", "greedy"})
    assert "| Uniform soup | 2 |" in body and "stale" not in body
    (section, body), = analysis_runner._soups_table(out.parent, {"greedy"})  # uniform not analysed: not shown
    assert "Uniform soup" not in body


def test_rows_against_another_best_single_checkpoint_are_left_out_and_analyze_uses_the_tables(tmp_path):
    # A soup cooked again with --greedy-metric loss is compared against the best checkpoint on val loss: Table IV
    # showed it under the other soups' best single checkpoint (on accuracy), its Δ on one baseline and its interval
    # and McNemar p on the other; analyze took its best single checkpoint from the folder first in alphabetical
    # order (greedy/), not the table's.
    from ich_keras import analyze
    from ich_keras.rundir import load_run

    run = _make_run(tmp_path / "run")
    soup.main([str(run), "--uniform", "--greedy", "--quiet"])
    # What a cook on loss writes when another checkpoint is best on val loss (random ingredients tie on accuracy).
    uniform_path = run / "soups" / "uniform" / "results.json"
    uniform = json.loads(uniform_path.read_text())
    other = next(i for i in uniform["ingredients"] if i["name"] != uniform["best_single"]["name"])
    uniform.update(best_single={k: other[k] for k in ("name", "val", "test")},
                   selection={**uniform["selection"], "metric": "loss"})
    uniform_path.write_text(json.dumps(uniform))  # the newest results.json: its baseline is the table's
    table = table_iv.write(run / "soups")
    rows = [line for line in table.splitlines() if line.startswith("| ") and "Method" not in line]
    assert rows[0].startswith(f"| Best single checkpoint ({other['name']})") and rows[1].startswith("| Uniform soup")
    assert len(rows) == 2, table
    greedy_best = json.loads((run / "soups" / "greedy" / "results.json").read_text())["best_single"]["name"]
    assert (f"Left out: greedy/ (against {greedy_best}, best on val accuracy): compared against another best "
            f"single checkpoint") in table

    best = other["name"].removesuffix(".weights.h5")
    assert analyze.main([str(run), "--cka-examples", "0", "--quiet"])["best_single"] == best
    report_md = (run / "analysis" / "report.md").read_text()
    assert f"Best single checkpoint: **{best}**" in report_md
    splits = load_run(run).splits.splits  # and how many images each split's numbers stand on
    assert f"; images: val {len(splits['val'])}, test {len(splits['test'])}." in report_md
