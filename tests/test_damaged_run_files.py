"""A run file changed after a command wrote it (cut short by a copy, edited by hand) stops the next command with an
error naming the file, before it writes anything; count options below 1 are refused by the commands' parsers."""

import argparse
import shutil

import pytest

from ich_keras import analyze, atomic, cli, predict, resume, soup
from ich_keras.analysis.runner import AnalysisOptions
from ich_keras.analysis.runner import analyze as analyze_run
from ich_keras.errors import UserError
from ich_keras.rundir import load_run


@pytest.fixture
def run_copy(trained_run, tmp_path):
    return shutil.copytree(trained_run, tmp_path / "run")


def test_read_json_names_a_damaged_file(tmp_path):
    path = tmp_path / "results.json"
    atomic.write_json(path, {"accuracy": 0.5})
    assert atomic.read_json(path) == {"accuracy": 0.5}
    path.write_text('{"accuracy": 0.')
    with pytest.raises(UserError, match=r"results.json is not valid JSON .*edited or cut short"):
        atomic.read_json(path)


def test_a_damaged_manifest_or_class_list_is_named(run_copy, tmp_path):
    image = run_copy / "config.json"  # any file: the error comes before it is read
    manifest = run_copy / "checkpoints/manifest.json"
    intact = manifest.read_text()
    manifest.write_text("[1,2")
    # Only the run's fit wrote them, as it went: "start the command that writes it again" sent fit --resume in a
    # circle to the same error.
    restore = r"Restore it from a copy of the run: fit wrote it as the run went, and no command rebuilds it\."
    with pytest.raises(UserError, match=r"manifest.json is not valid JSON .*" + restore):
        predict.main([str(run_copy), str(image), "--quiet"])
    manifest.write_text(intact)
    (run_copy / "classes.json").write_text("[bad")
    with pytest.raises(UserError, match=r"classes.json is not valid JSON .*" + restore):
        load_run(run_copy)


def test_a_deleted_manifest_is_named_with_the_checkpoint_files_left(run_copy):
    # It read as "the run kept none", the files in checkpoints/ not mentioned.
    (run_copy / "checkpoints/manifest.json").unlink()
    files = sorted(p.name for p in (run_copy / "checkpoints").glob("epoch_*.weights.h5"))
    assert files
    for command in (["cook", str(run_copy), "--uniform"], ["check", "--run", str(run_copy), files[0]]):
        with pytest.raises(UserError, match=r"manifest.json is missing, so which of the \d+ checkpoint files .* "
                                            rf"Received: files=\[{files[0]!r}"):
            soup.main([*command, "--quiet"])


def test_a_damaged_soup_result_stops_soup_before_it_cooks(run_copy):
    greedy = run_copy / "soups/greedy"
    (greedy / "results.json").write_text("{bad")
    before = (greedy / "soup.weights.h5").read_bytes()
    uniform = (run_copy / "soups/uniform/soup.weights.h5").stat().st_mtime_ns
    with pytest.raises(UserError, match=r"greedy/results.json is not valid JSON"):
        soup.main([str(run_copy), "--uniform", "--quiet"])
    assert (greedy / "soup.weights.h5").read_bytes() == before
    assert (run_copy / "soups/uniform/soup.weights.h5").stat().st_mtime_ns == uniform  # not cooked again


def test_a_cut_short_run_state_is_named(run_copy):
    state = run_copy / resume.STATE_FILE
    state.write_bytes(state.read_bytes()[:2000])
    with pytest.raises(UserError, match=r"run state .*state.npz cannot be read"):
        resume.load_state(run_copy)


def test_counts_below_one_are_refused(run_copy, capsys):
    assert cli.positive_int("3") == 3
    with pytest.raises(argparse.ArgumentTypeError, match="must be 1 or more"):
        cli.positive_int("0")
    for argv in (["cook", str(run_copy), "--uniform", "--batch-size", "0"],
                 ["evaluate", str(run_copy), "--batch-size", "-1"],
                 ["cook", str(run_copy), "--uniform", "--recalibrate-bn", "--bn-batches", "0"]):
        with pytest.raises(SystemExit) as exit_info:
            soup.main(argv)
        assert exit_info.value.code == 2
        assert "must be 1 or more" in capsys.readouterr().err
    with pytest.raises(UserError, match=r"--learned-epochs \(soup.learned_epochs\) must be 1 or more.*"
                                         r"learned_epochs=0"):  # before any ingredient is scored
        soup.main(["cook", str(run_copy), "--learned", "--learned-epochs", "0"])
    with pytest.raises(SystemExit):
        analyze.main([str(run_copy), "--batch-size", "0"])
    with pytest.raises(UserError, match=r"batch_size must be 1 or more.*batch_size=0"):
        analyze_run(run_copy, AnalysisOptions(batch_size=0))


@pytest.mark.parametrize("text", ["{}", "[1]", '{"rules": [], "epochs": {}, "ranked": {}, "kept": []}'])
def test_a_manifest_of_another_shape_is_a_user_error_naming_it(tmp_path, text):
    # Valid JSON, but not a manifest: KeyError 'kept' or a TypeError traceback in soup, analyze and fit --resume.
    from ich_keras import checkpoints

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "manifest.json").write_text(text)
    with pytest.raises(UserError, match=r"manifest\.json is not a checkpoint manifest"):
        checkpoints.read_manifest(tmp_path)


def test_a_history_cell_that_is_no_number_is_a_user_error_naming_the_file(tmp_path):
    # `python -m ich_keras.curves` on an edited history.csv: ValueError: could not convert string to float: 'abc'.
    from ich_keras.analysis.curves import read_history

    (tmp_path / "history.csv").write_text("epoch,loss\n1,abc\n2,0.5\n")
    with pytest.raises(UserError, match=r"history\.csv holds a value that is not a number .*'abc'.*history\.csv'"):
        read_history(tmp_path)
