"""A logger or data route whose package is missing fails at once, naming the setting and the install command, and
before anything is written (before this check, log.tensorboard crashed after epoch 1 with TBNotInstalledError).

Each package is made unimportable by a None entry in sys.modules, so these run whether or not the extras are there.
"""

import dataclasses
import sys

import pytest

from ich_keras import analyze, soup
from ich_keras.errors import UserError
from ich_keras.train import run
from logging_fixtures import tiny_config


@pytest.mark.parametrize("logger", ["tensorboard", "wandb"])
def test_fit_without_the_logger_package_fails_before_writing(tmp_path, monkeypatch, logger):
    monkeypatch.setitem(sys.modules, logger, None)
    workdir = tmp_path / "run"
    expected = rf"log\.{logger}=True needs the {logger} package: pip install -e '\.\[{logger}\]'"
    with pytest.raises(UserError, match=expected):
        run(tiny_config(log={logger: True}), workdir)
    assert not workdir.exists()


@pytest.mark.parametrize("command", [soup.main, analyze.main])
def test_wandb_flag_without_wandb_fails_before_any_work(tmp_path, monkeypatch, command):
    monkeypatch.setitem(sys.modules, "wandb", None)
    # The run directory does not even exist: the package check comes first.
    with pytest.raises(UserError, match=r"--wandb needs the wandb package"):
        command([str(tmp_path / "run"), "--wandb", "--quiet"])
    assert not (tmp_path / "run").exists()


def test_tfds_source_without_tensorflow_datasets_names_the_source(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    monkeypatch.setenv("ICH_KERAS_TFDS_DIR", str(tmp_path / "cache"))
    expected = r"tensorflow-datasets package: pip install -e '\.\[tfds\]'.*data\.source='tfds:beans'"
    with pytest.raises(UserError, match=expected):
        run(tiny_config(source="tfds:beans"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # 10 s: a 1-epoch fit, then the resume
@pytest.mark.tensorboard
def test_a_logger_folder_that_cannot_be_written_stops_a_resume_before_anything_is_written(tmp_path):
    # TensorFlow's summary writer failed in a read-only folder with a traceback (here, a file in the folder's place:
    # no events and no word), after the resume of a finished run had deleted its results.json and written the new
    # epoch count into config.json.
    from ich_keras.rundir import load_run

    workdir = tmp_path / "run"
    run(tiny_config(epochs=1), workdir)
    (workdir / "tensorboard").write_text("a file where the events would go")
    before = {name: (workdir / name).read_bytes() for name in ("config.json", "results.json")}
    saved = load_run(workdir).config
    extended = dataclasses.replace(saved, train=dataclasses.replace(saved.train, epochs=2),
                                   log=dataclasses.replace(saved.log, tensorboard=True))
    with pytest.raises(UserError, match=r"log\.tensorboard=True writes into .*tensorboard/train, but .*tensorboard "
                                        r"is a file, not a folder; move that file away, or .*--set log\.tensorboard="
                                        r"false"):
        run(extended, workdir, resume_run=True)
    assert {name: (workdir / name).read_bytes() for name in before} == before
