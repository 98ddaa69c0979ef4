"""Publishing outputs together: `staging.staged_files` (an analysis' files) and its checks."""

import pytest

from ich_keras import staging
from ich_keras.errors import UserError


def test_files_are_published_together_and_owned_ones_not_written_again_go(tmp_path):
    out = tmp_path / "analysis"
    out.mkdir()
    for name in ("report.md", "cka.json", "notes.txt"):
        (out / name).write_text(f"old {name}")
    with staging.staged_files(out, {"report.md", "cka.json"}.__contains__) as folder:
        (folder / "report.md").write_text("new")
        assert (out / "report.md").read_text() == "old report.md"  # nothing published before the block ends
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "report.md"]
    assert (out / "report.md").read_text() == "new" and (out / "notes.txt").read_text() == "old notes.txt"


def test_a_folder_in_the_way_stops_the_publish_before_any_file_moves(tmp_path):
    out = tmp_path / "analysis"
    (out / "report.md").mkdir(parents=True)  # a folder where a file is to go
    (out / "metrics.json").write_text("old")
    in_the_way = r"holds folders where files are to be published.*\['report.md'\]"
    owned = {"metrics.json", "report.md"}.__contains__
    with pytest.raises(UserError, match=in_the_way), staging.staged_files(out, owned) as folder:
        (folder / "metrics.json").write_text("new")
        (folder / "report.md").write_text("new")
    assert (out / "metrics.json").read_text() == "old"  # not half published
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]


def test_temporaries_are_removed_inside_the_folder_only(tmp_path):
    out = tmp_path / "soups" / "greedy"  # an --output another command's folder sits beside
    (out / ".tmp-staged-dead").mkdir(parents=True)
    (tmp_path / "soups" / ".tmp-greedy-live").mkdir()  # a running soup's staging folder, under another lock
    assert staging.remove_temporaries(out) == [out / ".tmp-staged-dead"]
    assert (tmp_path / "soups" / ".tmp-greedy-live").is_dir()
