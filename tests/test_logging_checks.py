"""A logger or data route whose package is missing fails at once, naming the setting and the install command, and
before anything is written (before this check, log.tensorboard crashed after epoch 1 with TBNotInstalledError).

Each package is made unimportable by a None entry in sys.modules, so these run whether or not the extras are there.
"""

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
