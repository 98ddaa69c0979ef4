"""Atomic writes: the final file gets the permissions a plain open() gives, and a failed write leaves nothing."""

import os
import stat

import pytest

from ich_keras import atomic


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_a_written_file_has_the_permissions_of_a_plain_open(tmp_path, umask):
    previous = os.umask(umask)
    try:
        atomic.write_text(tmp_path / "atomic.txt", "x")
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(previous)
    mode = stat.S_IMODE((tmp_path / "atomic.txt").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == 0o666 & ~umask


def test_a_failed_write_leaves_the_previous_file_and_no_temporary_one(tmp_path):
    path = tmp_path / "results.json"
    atomic.write_json(path, {"accuracy": 0.5})
    with pytest.raises(RuntimeError), atomic.atomic_path(path, suffix=".json") as temp:
        temp.write_text('{"accuracy": 0.')
        raise RuntimeError("killed mid-write")
    assert atomic.read_json(path) == {"accuracy": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_json_keeps_non_ascii_text_readable(tmp_path):
    atomic.write_json(tmp_path / "classes.json", ["Lễ hội", "múa rối nước"])
    assert "Lễ hội" in (tmp_path / "classes.json").read_text(encoding="utf-8")
    assert atomic.read_json(tmp_path / "classes.json") == ["Lễ hội", "múa rối nước"]
    latin1 = os.fsdecode(b"f\xeate.jpg")  # a file name that is not UTF-8: its byte as a lone surrogate
    atomic.write_json(tmp_path / "names.json", [latin1])
    assert atomic.read_json(tmp_path / "names.json") == [latin1]
