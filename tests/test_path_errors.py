"""A path that is not what a command expects gets a message saying what it is and what to do: a folder given for
a file, a weights file made for another image size or architecture, a kept checkpoint deleted by hand."""

import re
import shlex
import shutil
from pathlib import Path

import pytest

from ich_keras import analyze, cli, export, fit, models, predict, soup
from ich_keras.config import read_toml
from ich_keras.errors import UserError
from ich_keras.init_weights import load_weights
from ich_keras.rundir import load_run
from soup_fixtures import conv_model


def _stderr(main, argv, capsys) -> str:
    """A command's stderr as `python -m` prints a user error (exit status 2)."""
    with pytest.raises(SystemExit) as exit_info:
        cli.run(main, argv)
    assert exit_info.value.code == cli.USER_ERROR_STATUS
    return capsys.readouterr().err


def test_a_folder_given_for_a_file_is_named_as_a_folder(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text('[model]\nname = "coatnet_tiny"\n')
    with pytest.raises(UserError, match=r"config path is a folder; pass a TOML file.*path='.*'"):
        read_toml(tmp_path)
    err = _stderr(fit.main, ["--config", str(tmp_path)], capsys)
    assert "is a folder" in err and "not found" not in err
    err = _stderr(fit.main, ["--config", str(config), "--set", f"model.init={tmp_path}", "--workdir",
                             str(tmp_path / "run")], capsys)
    assert f"model.init={str(tmp_path)!r} is a folder, not a .weights.h5 file" in err and "does not exist" not in err
    assert not (tmp_path / "run").exists()
    with pytest.raises(UserError, match=r"weights path is a folder; pass a .weights.h5 file"):
        load_weights(conv_model(), tmp_path)


def test_a_relative_path_that_is_not_there_says_it_was_read_from_the_working_directory(tmp_path, capsys,
                                                                                       monkeypatch):
    # A shipped config's "../shared/data/ahe64" is relative to where the command runs, not to the config's folder.
    config = tmp_path / "configs" / "c.toml"
    config.parent.mkdir()
    config.write_text('[data]\nsource = "../photos"\n[model]\nname = "coatnet_tiny"\ninit = "W0.weights.h5"\n')
    (tmp_path / "photos").mkdir()  # beside the config's folder, which is not where the path is read from
    monkeypatch.chdir(tmp_path)
    err = _stderr(fit.main, ["--config", str(config), "--workdir", str(tmp_path / "run")], capsys)
    assert f"data.source='../photos' does not exist (relative to the working directory, {tmp_path})" in err
    assert f"model.init='W0.weights.h5' does not exist (relative to the working directory, {tmp_path})" in err
    assert not (tmp_path / "run").exists()


def test_weights_of_another_image_size_name_the_layer_and_where_they_are_resized(tmp_path):
    path = tmp_path / "at64.weights.h5"
    models.build("coatnet_tiny", 3, 64).save_weights(path)
    with pytest.raises(UserError) as error:  # weights used as themselves; an init is resized (test_init_resize.py)
        load_weights(models.build("coatnet_tiny", 3, 32), path, new_head=False)
    message = str(error.value)
    assert ("stages.2.blocks.0.attn.rel_pos/relative_position_bias_table is (49, 1) in the file, (9, 1) in the model"
            in message)
    assert "fit resizes its model.init to data.image_size" in message and "vars/0" not in message


def test_a_deleted_kept_checkpoint_is_named_with_a_way_on_that_works(trained_run, tmp_path, capsys):
    run = shutil.copytree(trained_run, tmp_path / "run", ignore=shutil.ignore_patterns("analysis"))
    deleted = run / "checkpoints/epoch_001.weights.h5"
    deleted.unlink()
    advice = {}
    for name, main, argv in (("analyze", analyze.main, [str(run), "--quiet"]),
                             ("cook", soup.main, [str(run), "--quiet"]),
                             ("evaluate", soup.main, ["evaluate", str(run), "--quiet"])):
        err = _stderr(main, argv, capsys)
        assert "A kept checkpoint listed in" in err and f"missing={[str(deleted)]}" in err, name
        advice[name] = re.search(r"`python -m ich_keras\.soup (.*?)`", err).group(1)
    assert advice["analyze"] == advice["cook"] == f"cook {run} --checkpoints {run}/checkpoints/epoch_002.weights.h5"
    assert advice["evaluate"].startswith("evaluate ")
    soup.main([*shlex.split(advice["cook"]), "--quiet"])  # the advice, as given: the soups now leave the file out
    analyze.main([str(run), "--quiet", "--cka-examples", "0"])
    assert (run / "analysis/report.md").is_file()


def test_a_deleted_best_checkpoint_is_named_by_predict_export_and_soups_across_runs(trained_run, tmp_path, capsys):
    run = shutil.copytree(trained_run, tmp_path / "run", ignore=shutil.ignore_patterns("analysis"))
    other = shutil.copytree(run, tmp_path / "other")
    best = load_run(run).best("loss").path  # the run ranks loss only: the default weights
    best.unlink()
    photos = Path(load_run(run).config.data.source) / "test"
    for main, argv in ((predict.main, [str(run), str(photos), "--quiet"]),
                       (export.main, [str(run), "--format", "savedmodel", "--output", str(tmp_path / "x")])):
        err = _stderr(main, argv, capsys)
        assert "The best checkpoint by val loss, listed in the run's manifest, is missing" in err
        assert f"--weights. Received: path={str(best)!r}" in err
    err = _stderr(soup.main, ["cook", "--runs", str(other), str(run), "--uniform", "--quiet"], capsys)
    assert f"put the file back, or leave {run} out of --runs. Received: missing={[str(best)]}" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "soups").exists()


def test_pretrained_weights_named_for_cka_that_are_not_a_file_stop_analyze(tmp_path, capsys):
    err = _stderr(analyze.main, [str(tmp_path), "--pretrained", str(tmp_path), "--quiet"], capsys)
    assert ("The pretrained weights for CKA is a folder, not a .weights.h5 file. "
            f"Received: pretrained={str(tmp_path)!r}") in err
    err = _stderr(analyze.main, [str(tmp_path), "--pretrained", "w0.weights.h5", "--quiet"], capsys)
    assert "The pretrained weights for CKA does not exist. Received: pretrained='w0.weights.h5'" in err


def test_a_resume_names_class_folders_added_since_the_run_started(trained_run, tmp_path, capsys):
    # A class folder added to the data after the run started: the resume trained on the run's own classes, as
    # documented, without a word about the new folder.
    from ich_keras import run_start

    source = Path(load_run(trained_run).config.data.source)
    moved = shutil.copytree(source, tmp_path / "images")  # the run's images, moved, and a class folder added
    shutil.copytree(moved / "train" / "class_0", moved / "train" / "zebra")
    run_start.load_resumed(trained_run, str(moved))
    assert capsys.readouterr().out == (f"Note: {moved / 'train'} holds 1 class folder(s) this run does not know "
                                       f"(zebra): a resume trains on the run's own split lists and classes; a new "
                                       f"run would take them\n")
    shutil.rmtree(moved / "train" / "zebra")
    run_start.load_resumed(trained_run, str(moved))
    assert capsys.readouterr().out == ""


def test_a_fit_and_a_soup_of_one_run_never_run_together(trained_run, tmp_path):
    # A resume checked nothing of the soups: `fit --resume RUN --set train.epochs=N` during `soup RUN` deleted the
    # checkpoints the soup was cooking from. Whichever of the two comes second now stops, touching nothing.
    import dataclasses

    from ich_keras import folder_lock
    from ich_keras.soups.runner import SoupOptions, run_soups
    from ich_keras.train import run

    copy = shutil.copytree(trained_run, tmp_path / "run")
    before = sorted(p.name for p in (copy / "checkpoints").iterdir())
    saved = load_run(copy).config
    extended = dataclasses.replace(saved, train=dataclasses.replace(saved.train, epochs=saved.train.epochs + 1))
    soup_is_cooking = r"A soup command \(pid \d+ on .+\) is still writing .*run/soups: it reads the run's kept " \
        r"checkpoints, which a fit deletes as better epochs arrive; wait for it to end before training it further"
    with (folder_lock.held(copy / "soups", "soup command", "pass another --output"),
          pytest.raises(UserError, match=soup_is_cooking)):
        run(extended, copy, resume_run=True)
    assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == before
    # A fit that took the run's lock after the soup's first look at it (in `soup`'s input checks): the soup sees it
    # once it holds its own folder's lock, before it reads a checkpoint.
    paths = [c.path for c in load_run(copy).checkpoints]
    fit_is_training = r"A fit \(pid \d+ on .+\) is still writing .*run: the checkpoints it keeps change every " \
        r"epoch; wait for it to end before souping it"
    with folder_lock.held(copy, "fit", "pick another --workdir"), pytest.raises(UserError, match=fit_is_training):
        run_soups(load_run(copy), paths, SoupOptions(methods=("uniform",), progress=False), tmp_path / "soups")
    assert not (tmp_path / "soups" / "uniform").exists()
    # A soup with --output elsewhere, or an analysis: the runs they read stay locked shared for the whole command
    # (`folder_lock.reading`), so a fit that starts meanwhile stops, naming them rather than the last fit.
    with folder_lock.reading():
        folder_lock.check_not_held(copy, "souping")
        with pytest.raises(UserError, match=r"A command is reading .*run \(a soup or an analysis of the run"):
            run(extended, copy, resume_run=True)
    assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == before
    with folder_lock.held(copy, "fit", "pick another --workdir"):  # released when the command ends
        pass
