"""An analysis' outputs are published together into their folder, which stays where it is and keeps what else it
holds (`ich_keras.staging.staged_files`)."""

import json
import os
from pathlib import Path

import pytest

from ich_keras import analyze
from ich_keras.errors import UserError


def test_a_new_analysis_replaces_the_previous_one_whole_or_not_at_all(tmp_path, monkeypatch):
    # Each file was written in place: an analysis stopped half-way (Ctrl-C, a full disk, an error) left report.html
    # of one analysis beside distances.json of another, and a CKA no longer computed stayed beside the new report.
    from safety_fixtures import make_run

    from ich_keras import folder_lock
    from ich_keras.analysis import report as analysis_report

    run = make_run(tmp_path / "run", seeds=(1, 2))
    out = run / "analysis"
    w0 = str(run / "checkpoints" / "epoch_001.weights.h5")
    args = [str(run), "--quiet", "--batch-size", "4"]
    analyze.main(args + ["--pretrained", w0, "--cka-examples", "8"])
    (out / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"}
    assert "cka.json" in before

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt  # after every table and figure of the new analysis was written

    monkeypatch.setattr(analysis_report, "report_markdown", stopped)
    with pytest.raises(KeyboardInterrupt):
        analyze.main(args + ["--split", "test", "--cka-examples", "0"])
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"} == before
    assert not [p.name for p in [*run.iterdir(), *out.iterdir()] if p.name.startswith(".tmp-")]  # staging gone
    monkeypatch.undo()

    analyze.main(args + ["--split", "test", "--cka-examples", "0"])
    assert not (out / "cka.json").exists() and not (out / "cka.png").exists()  # not beside a report without CKA
    assert (out / "notes.txt").read_text() == "mine"  # the user's file stays
    assert json.loads((out / "distances.json").read_text())["split"] == "test"

    another = r"Another analysis \(pid \d+ on .*\) is writing to .*analysis"
    with folder_lock.held(out, "analysis", "pass another --output"), pytest.raises(UserError, match=another):
        analyze.main(args + ["--cka-examples", "0"])


def test_an_analysis_keeps_its_folder_where_it_is_and_what_else_it_holds(tmp_path, monkeypatch):
    # Publishing by replacing the whole folder lost it when the command ran from inside it (`cd RUN/analysis &&
    # analyze ..`), rebuilt an --output holding other things (a run copied there) and replaced a symbolic link.
    from safety_fixtures import make_run

    run = make_run(tmp_path / "run", seeds=(1, 2))
    args = ["--quiet", "--batch-size", "4", "--cka-examples", "0"]
    (run / "analysis").mkdir()
    monkeypatch.chdir(run / "analysis")
    folder = os.stat(".").st_ino
    analyze.main(["..", *args])
    assert os.stat(".").st_ino == folder and Path("report.md").is_file()

    elsewhere = tmp_path / "big" / "analysis_of_run"
    elsewhere.mkdir(parents=True)
    (elsewhere / "mine").mkdir()
    (elsewhere / "mine" / "notes.txt").write_text("kept")
    (run / "linked").symlink_to(elsewhere)
    analyze.main([str(run), "--output", str(run / "linked"), *args])
    assert (run / "linked").is_symlink() and (elsewhere / "report.md").is_file()
    assert (elsewhere / "mine" / "notes.txt").read_text() == "kept"
    with pytest.raises(UserError, match=r"--output is a run directory \(it holds config.json\)"):
        analyze.main([str(run), "--output", str(run), *args])
