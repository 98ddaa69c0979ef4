"""One way to report a user's mistake: two lines on stderr and exit 2; --debug or ICH_KERAS_DEBUG=1 for the
traceback; a bug keeps its traceback. Run in-process on the real commands (each fails before any model is built)."""

import errno
import json
import os
from pathlib import Path

import pytest

from ich_keras import analyze, cli, curves, fit, predict, soup
from ich_keras.config import Config, config_to_dict
from ich_keras.errors import UserError


def _user_error(main, argv, capsys) -> str:
    """Runs a command as `python -m` would and returns its stderr; it must be a short user error."""
    with pytest.raises(SystemExit) as exit_info:
        cli.run(main, argv)
    assert exit_info.value.code == cli.USER_ERROR_STATUS
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 2
    return err


def test_missing_config_names_the_file(capsys, tmp_path, monkeypatch):
    err = _user_error(fit.main, ["--config", str(tmp_path / "missing.toml")], capsys)
    assert "Config file not found" in err and "missing.toml" in err
    monkeypatch.chdir(tmp_path)
    err = _user_error(fit.main, ["--config", "missing.toml"], capsys)
    assert f"Config file not found (relative to the working directory, {tmp_path})" in err


def test_a_config_that_is_no_toml_file_says_what_it_is(capsys, tmp_path):
    (tmp_path / "c.yaml").write_text("model:\n  name: test_coatnet\n")
    err = _user_error(fit.main, ["--config", str(tmp_path / "c.yaml")], capsys)
    assert "configs are TOML files (configs/*.toml; docs/config.md), not YAML" in err
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(config_to_dict(Config())))
    (run / "classes.json").write_text('["a", "b"]')
    err = _user_error(fit.main, ["--config", str(run / "config.json")], capsys)
    assert f"it is a run's config: continue that run with --resume {run}" in err


def test_a_config_file_given_as_workdir_is_named(capsys, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[model]\nname = "test_coatnet"\n[data]\nimage_size = 32\n')
    err = _user_error(fit.main, ["--config", str(config), "--workdir", str(config)], capsys)
    assert "The --workdir is a file; a run directory is a folder" in err
    err = _user_error(fit.main, ["--config", str(config), "--set", "data.image_size=33"], capsys)
    assert "Received: data.image_size=33" in err  # the key the user set, not the model's argument


def test_unknown_set_key_names_the_key_and_the_allowed_ones(capsys, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[model]\nname = "test_coatnet"\n')
    err = _user_error(fit.main, ["--config", str(config), "--set", "train.epoch=3", "--workdir", str(tmp_path / "r")],
                      capsys)
    assert "'train.epoch'" in err and "epochs" in err
    assert not (tmp_path / "r").exists()


def test_fit_refuses_an_override_of_the_soups_recipe(capsys, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[model]\nname = "test_coatnet"\n[soup]\nmethods = ["uniform"]\n')  # the table itself is fine
    err = _user_error(fit.main, ["--config", str(config), "--set", "soup.no_such_option=3", "--workdir",
                                 str(tmp_path / "r")], capsys)
    assert "[soup] is another command's table (python -m ich_keras.soup reads it)" in err
    assert "soup.no_such_option=3" in err and not (tmp_path / "r").exists()


def test_an_empty_data_source_is_named_not_read_as_the_working_directory(capsys, tmp_path, monkeypatch):
    (tmp_path / "c.toml").write_text('[model]\nname = "test_coatnet"\n')
    monkeypatch.chdir(tmp_path)  # it was read as this folder, whose sub-folders then "looked like class folders"
    err = _user_error(fit.main, ["--config", "c.toml", "--set", "data.source="], capsys)
    assert "Config key data.source must be a folder, \"digits\" or \"tfds:NAME\". Received: data.source=''" in err


def test_wrong_type_in_config_names_key_and_value(capsys, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[train]\nbatch_size = "eight"\n')
    err = _user_error(fit.main, ["--config", str(config)], capsys)
    assert "train.batch_size" in err and "'eight'" in err


def test_analyze_of_a_folder_that_is_no_run(capsys, tmp_path):
    err = _user_error(analyze.main, [str(tmp_path), "--quiet"], capsys)
    assert "Not a run directory" in err and str(tmp_path) in err and "ich_keras.fit" in err
    # fit --resume of a folder without a run: one line, not the usage block of a mistyped flag
    err = _user_error(fit.main, ["--resume", str(tmp_path / "nope")], capsys)
    assert err.startswith(f"error: No run to resume: {tmp_path / 'nope' / 'config.json'} does not exist") and \
        "usage:" not in err


def test_a_run_whose_config_this_version_cannot_read_names_its_config_json(capsys, tmp_path):
    (tmp_path / "config.json").write_text('{"train": {"epochs": 2, "warp_drive": true}}')
    for main, argv in ((analyze.main, [str(tmp_path), "--quiet"]), (fit.main, ["--resume", str(tmp_path)])):
        err = _user_error(main, argv, capsys)
        assert "warp_drive" in err and f"(in {tmp_path / 'config.json'}; written by another version" in err
    # A readable config.json with a bad --set: the error is the override's, not the file's.
    (tmp_path / "config.json").write_text(json.dumps(config_to_dict(Config())))
    err = _user_error(fit.main, ["--resume", str(tmp_path), "--set", "train.epochs=0"], capsys)
    assert "train.epochs" in err and "another version" not in err


def test_a_folder_that_is_no_run_names_the_runs_it_is_in_or_holds(capsys, tmp_path):
    # `curves SWEEP_DIR` said only "Not a run directory (no config.json)".
    for point in ("seed=0", "seed=1"):
        (tmp_path / "sweep" / point / "checkpoints").mkdir(parents=True)
        (tmp_path / "sweep" / point / "config.json").write_text("{}")
    err = _user_error(curves.main, [str(tmp_path / "sweep")], capsys)
    assert "it holds 2 runs (seed=0, seed=1): pass one of them" in err
    err = _user_error(curves.main, [str(tmp_path / "sweep" / "seed=1" / "checkpoints")], capsys)
    assert f"it is inside the run {(tmp_path / 'sweep' / 'seed=1').resolve()}" in err
    assert "there is no such folder" in _user_error(curves.main, [str(tmp_path / "swep")], capsys)
    # A file: "no such folder" was wrong about a path that is there.
    checkpoint = tmp_path / "sweep" / "seed=1" / "checkpoints" / "epoch_001.weights.h5"
    checkpoint.write_bytes(b"")
    err = _user_error(curves.main, [str(checkpoint)], capsys)
    assert f"it is a file inside the run {(tmp_path / 'sweep' / 'seed=1').resolve()}" in err
    (tmp_path / "notes.txt").write_text("")
    assert "it is a file, not a folder" in _user_error(curves.main, [str(tmp_path / "notes.txt")], capsys)


def test_predict_of_a_folder_that_is_no_run(capsys, tmp_path):
    err = _user_error(predict.main, [str(tmp_path), str(tmp_path), "--quiet"], capsys)
    assert "Not a run directory" in err


def test_debug_flag_and_environment_show_the_traceback_and_keep_the_status(tmp_path, monkeypatch, capsys):
    for argv, debug_env in (([str(tmp_path), "--debug"], None), ([str(tmp_path)], "1")):
        if debug_env:
            monkeypatch.setenv(cli.DEBUG_ENV, debug_env)
        with pytest.raises(SystemExit) as exit_info:
            cli.run(analyze.main, argv)
        assert exit_info.value.code == cli.USER_ERROR_STATUS  # what a script checks does not change with --debug
        err = capsys.readouterr().err
        assert err.startswith("Traceback (most recent call last):") and "UserError: Not a run directory" in err
        assert err.strip().splitlines()[-1].startswith("error: Not a run directory")


@pytest.mark.parametrize("setting", ["0", "off", "False", " no "])
def test_debug_environment_off_keeps_the_two_lines(setting, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv(cli.DEBUG_ENV, setting)
    assert "Not a run directory" in _user_error(analyze.main, [str(tmp_path)], capsys)


def test_a_missing_path_is_a_user_error_naming_it(capsys, tmp_path):
    def main(argv):
        open(tmp_path / "absent.csv")  # noqa: SIM115  (what a command does with a path the user named)

    err = _user_error(main, [], capsys)
    assert "No such file or directory" in err and "absent.csv" in err

    (tmp_path / "a_file").write_text("")

    def writes_below_a_file(argv):  # an --output a_file/x.png: its folder is made first, and is a file
        (tmp_path / "a_file").mkdir(parents=True, exist_ok=True)

    err = _user_error(writes_below_a_file, [], capsys)
    assert "File exists" in err and "a_file" in err


def test_an_image_that_no_longer_decodes_is_a_user_error_though_tf_data_carries_it(capsys, tmp_path):
    import numpy as np
    from PIL import Image

    from ich_keras import data, pipeline
    from ich_keras.config import DataConfig

    for name in ("a", "b"):
        (tmp_path / "ds/train" / name).mkdir(parents=True)
        for i in range(4):
            level = 40 * i + (name == "b")  # no copies: a copy would stay in train with its original
            Image.fromarray(np.full((8, 8, 3), level, np.uint8)).save(tmp_path / "ds/train" / name / f"{i}.png")
    examples = data.build_splits(DataConfig(source=str(tmp_path / "ds"), image_size=8)).splits["train"]
    (tmp_path / "ds" / examples.keys[0]).write_bytes(b"overwritten after the run started")

    def main(argv):  # what fit, soup and analyze do when they read a split
        list(pipeline.decoded_dataset(str(tmp_path / "ds"), examples, 8).batch(4))

    err = _user_error(main, [], capsys)
    assert "Cannot decode image file" in err and f"Received: path='{tmp_path / 'ds' / examples.keys[0]}'" in err


@pytest.mark.parametrize("command", [[], ["cook"], ["evaluate"]])
def test_an_unknown_soup_option_is_answered_with_its_commands_usage(command, capsys, tmp_path):
    # `soup RUN_DIR --bogus` names no command: it is cook's option that is unknown, not the top level's.
    with pytest.raises(SystemExit) as exit_info:
        cli.run(soup.main, [*command, str(tmp_path), "--bogus"])
    assert exit_info.value.code == cli.USER_ERROR_STATUS
    err = capsys.readouterr().err
    name = command[0] if command else "cook"
    assert err.startswith(f"usage: python -m ich_keras.soup {name} ")
    assert err.rstrip().endswith(f"python -m ich_keras.soup {name}: error: unrecognized arguments: --bogus")


def test_a_bug_keeps_its_traceback(tmp_path):
    def main(argv):
        raise KeyError("internal")

    with pytest.raises(KeyError):
        cli.run(main, [])


def test_a_read_only_folder_is_a_user_error_and_a_full_disk_a_short_message(capsys, tmp_path):
    def read_only(argv):  # what a read-only mount (a share, a remounted disk) raises on the first write
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "run" / ".lock"))

    err = _user_error(read_only, [], capsys)
    assert f"Read-only file system. Received: path='{tmp_path / 'run' / '.lock'}'" in err

    def full(argv):  # a disk with no space left: /dev/full refuses every write, as a full disk does
        Path("/dev/full").write_text("a checkpoint")

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    with pytest.raises(SystemExit) as exit_info:
        cli.run(full, [])
    assert exit_info.value.code == cli.DISK_FULL_STATUS
    err = capsys.readouterr().err
    assert err.startswith("error: No space left on device: free some space") and "Traceback" not in err


def test_exit_status_is_what_main_returns():
    with pytest.raises(SystemExit) as exit_info:
        cli.run(lambda argv: 1, [])
    assert exit_info.value.code == 1
    with pytest.raises(SystemExit) as exit_info:
        cli.run(lambda argv: None, [])
    assert exit_info.value.code == 0


def test_user_error_is_a_value_error():
    # Existing callers and tests catch ValueError.
    assert issubclass(UserError, ValueError)


def test_ctrl_c_prints_interrupted_and_exits_130():
    import signal
    import subprocess
    import sys
    import time

    # The command's exit handlers still run (a W&B run's, say): the one registered here prints.
    script = ("import atexit, time\nfrom ich_keras import cli\natexit.register(print, 'exit handler ran')\n"
              "cli.run(lambda argv: print('started', flush=True) or time.sleep(60), [])")
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    assert child.stdout.readline() == "started\n"
    time.sleep(0.2)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=30)
    assert child.returncode == cli.INTERRUPTED_STATUS and err.strip().endswith("interrupted"), err
    assert out == "exit handler ran\n"


def test_a_full_disk_under_another_error_is_the_short_message_too(capsys):
    # What a full disk raised when `soup` wrote a soup (h5py's RuntimeError while closing the file, the ENOSPC its
    # context) and when `export` wrote a SavedModel (TensorFlow's ResourceExhaustedError): both were tracebacks.
    import tensorflow as tf

    def h5py_full_context(argv):
        try:
            raise OSError(errno.ENOSPC, "Can't synchronously write data (file write failed: errno = 28)")
        except OSError:
            raise RuntimeError("Disable slist on flush dest failure failed")  # noqa: B904

    def saved_model_full(argv):
        raise tf.errors.ResourceExhaustedError(None, None, "/x/variables/part-00000; No space left on device")

    for main in (h5py_full_context, saved_model_full):
        with pytest.raises(SystemExit) as exit_info:
            cli.run(main, [])
        assert exit_info.value.code == cli.DISK_FULL_STATUS
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "free some space" in err and "Traceback" not in err


def test_text_the_console_cannot_encode_is_printed_escaped_not_a_crash():
    import subprocess
    import sys

    # A class named in Vietnamese, printed by a command whose stdout is ASCII (a cp1252 console, a CI log): fit died
    # at its start-up summary and predict after predicting every image.
    script = "from ich_keras import cli; cli.run(lambda argv: print('class Lễ hội'))"
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert child.returncode == 0, child.stderr
    assert child.stdout == "class L\\u1ec5 h\\u1ed9i\n"


def test_output_piped_into_head_ends_quietly_as_a_filter():
    import subprocess
    import sys

    # `python -m ich_keras.models --list | head -1` and the like were a BrokenPipeError traceback.
    script = "from ich_keras import cli; cli.run(lambda argv: [print(i, flush=True) for i in range(10**6)] and 0)"
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout.readline() == b"0\n"
    child.stdout.close()  # the reader goes away
    _, err = child.communicate(timeout=120)
    assert child.returncode == cli.BROKEN_PIPE_STATUS and err == b"", err.decode()[-600:]
    # A pipe of its own that broke (a library's) is a bug with its traceback, not the end of a `| head`.
    script = ("import subprocess, sys\nfrom ich_keras import cli\n"
              "def main(argv):\n"
              "    child = subprocess.Popen([sys.executable, '-c', ''], stdin=subprocess.PIPE)\n"
              "    child.wait()\n"
              "    child.stdin.write(b'y' * 10**6)\n"
              "    child.stdin.flush()\n"
              "cli.run(main, [])\n")
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert other.returncode == 1 and "BrokenPipeError" in other.stderr, other.stderr[-600:]


def test_a_signal_in_a_deferred_block_ends_the_command_once_the_block_ends():
    import subprocess
    import sys

    # The renames that publish an analysis' files together: Ctrl-C waits for them, then stops the command.
    script = ("import os, signal, time\nfrom ich_keras import cli, interrupts\n"
              "def main(argv):\n"
              "    with interrupts.deferred():\n"
              "        os.kill(os.getpid(), signal.SIGINT)\n"
              "        for _ in range(6):\n"
              "            time.sleep(0.05)\n"
              "        print('block ended', flush=True)\n"
              "    for _ in range(200):\n"
              "        time.sleep(0.05)\n"
              "    print('not interrupted', flush=True)\n"
              "cli.run(main, [])\n")
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert child.stdout == "block ended\n" and child.returncode == cli.INTERRUPTED_STATUS, (child.stdout, child.stderr)


def test_importing_ich_keras_leaves_a_programs_exit_alone(tmp_path):
    import subprocess
    import sys

    # The commands freeze the garbage collector at exit (a faster exit); registered at import, that kept a
    # notebook's or script's unclosed file, held in a reference cycle, from ever being flushed.
    script = ("import sys\nimport ich_keras\n"
              "class Holder:\n"
              "    def __init__(self, path):\n"
              "        self.file, self.me = open(path, 'w'), self\n"
              "holder = Holder(sys.argv[1])\n"
              "holder.file.write('x' * 24)\n")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "out.txt")], check=True, timeout=120)
    assert (tmp_path / "out.txt").read_text() == "x" * 24
