"""A run whose images moved (another disk, another machine): every command that reads them says so and takes the new
place with --set data.source=DIR, checked against the run's split lists; config.json keeps the old place."""

import json
import shutil

import pytest

from ich_keras import analyze, fit, rundir, soup
from ich_keras.errors import UserError


@pytest.fixture
def moved(trained_run, tmp_path):
    """A copy of the shared run, and a copy of its images in another folder; the old folder is not seen."""
    run = shutil.copytree(trained_run, tmp_path / "run", ignore=shutil.ignore_patterns("analysis"))  # no cache
    config = json.loads((run / "config.json").read_text())
    images = shutil.copytree(config["data"]["source"], tmp_path / "elsewhere" / "photos")
    config["data"]["source"] = str(tmp_path / "gone")  # where the images were when the run was trained
    (run / "config.json").write_text(json.dumps(config))
    return run, images


def test_each_command_names_the_missing_folder_and_the_flag(moved):
    run, _ = moved
    config = (run / "config.json").read_bytes()
    history = (run / "history.csv").read_bytes()
    said = r"data folder is not there .*--set data.source=DIR.*Received: data.source='.*gone'"
    with pytest.raises(UserError, match=said):
        soup.main([str(run), "--uniform", "--quiet"])
    with pytest.raises(UserError, match=said):
        analyze.main([str(run), "--quiet", "--cka-examples", "0"])
    with pytest.raises(UserError, match=said):
        fit.main(["--resume", str(run), "--set", "train.epochs=3", "--quiet"])
    # Nothing written: the resume stopped before its config, history and manifest writes.
    assert (run / "config.json").read_bytes() == config and (run / "history.csv").read_bytes() == history
    # A folder given that is not there either: named as the one given, not as the run's (which told to give one).
    given = r"The folder given for the run's images \(--set data.source=DIR\) does not exist. .*'typo'"
    with pytest.raises(UserError, match=given):
        soup.main([str(run), "--uniform", "--quiet", "--set", "data.source=typo"])
    with pytest.raises(UserError, match=given):
        analyze.main([str(run), "--quiet", "--cka-examples", "0", "--set", "data.source=typo"])
    with pytest.raises(UserError, match=given):
        fit.main(["--resume", str(run), "--set", "train.epochs=3", "--set", "data.source=typo", "--quiet"])
    assert (run / "config.json").read_bytes() == config and (run / "history.csv").read_bytes() == history


def test_a_resume_trains_on_the_images_where_they_are_now(moved):
    run, images = moved
    assert fit.main(["--resume", str(run), "--set", "train.epochs=3", "--set", f"data.source={images}",
                     "--quiet"]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["epochs"] == 3 and saved["data"]["source"].endswith("gone")
    assert json.loads((run / "results.json").read_text())["epochs"] == 3


def test_soup_and_analyze_read_the_images_from_where_they_are_now(moved, monkeypatch):
    run, images = moved
    config = (run / "config.json").read_bytes()
    monkeypatch.chdir(images.parent)  # a relative DIR, from another working directory
    assert soup.main([str(run), "--uniform", "--quiet", "--set", "data.source=photos"]) == 0
    cooked = json.loads((run / "soups/uniform/results.json").read_text())
    assert cooked["test"]["num_examples"] == len(list((images / "test").rglob("*.*")))  # the moved test images
    summary = analyze.main([str(run), "--quiet", "--cka-examples", "0", "--recompute", "--set", "data.source=photos"])
    assert (run / "analysis/report.md").is_file() and not summary["cached"]
    assert (run / "config.json").read_bytes() == config  # one command's setting, not the run's


def test_a_folder_missing_some_images_is_named_with_the_first_missing(moved):
    run, images = moved
    first = sorted((images / "test").rglob("*.*"))[0]
    first.unlink()
    with pytest.raises(UserError, match=rf"1 of the \d+ test images .*\(first: test/{first.parent.name}/"
                                        rf"{first.name}\).*restore them"):
        rundir.load_run(run, str(images)).dataset("test", 4)


def test_only_the_data_folder_may_be_set_beside_a_run(moved):
    run, images = moved
    with pytest.raises(UserError, match=r"data.source=DIR where the run's images are now. .*model.name=x"):
        soup.main([str(run), "--uniform", "--quiet", "--set", f"data.source={images}", "--set", "model.name=x"])
    assert rundir.source_override(["soup.accept=gt", 'data.source="my photos"']) == ("my photos", ["soup.accept=gt"])
