"""A folder's lock: a filesystem that cannot lock files is a user error naming the folder, not a traceback."""

import errno
import fcntl

import pytest

from ich_keras import cli, folder_lock
from ich_keras.errors import UserError


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP])
def test_a_filesystem_without_locks_is_named(tmp_path, monkeypatch, capsys, code):
    def no_locks(handle, operation):  # what Lustre without -o flock, or some NFS/FUSE mounts, answer
        raise OSError(code, "no locks here")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    folder = tmp_path / "run"
    no_lock = r"filesystem of .*run cannot lock files .*lock='.*run/\.lock'"
    with pytest.raises(UserError, match=no_lock), folder_lock.held(folder, "fit", "pick another --workdir"):
        pass

    def main(argv):
        with folder_lock.held(folder, "fit", "pick another --workdir"):
            return 0

    with pytest.raises(SystemExit) as exit_info:  # what `python -m ich_keras.fit` shows: two lines, status 2
        cli.run(main, [])
    assert exit_info.value.code == cli.USER_ERROR_STATUS
    assert "cannot lock files" in capsys.readouterr().err


def test_a_lock_a_finished_holder_left_is_free_and_a_held_one_names_its_holder(tmp_path):
    folder = tmp_path / "run"
    in_use = r"Another fit \(pid \d+ on .+\) is writing to"
    with (folder_lock.held(folder, "fit", "pick another --workdir"), pytest.raises(UserError, match=in_use),
          folder_lock.held(folder, "fit", "pick another --workdir")):
        pass
    with folder_lock.held(folder, "soup command", "pass another --output"):  # the lock file stays, the lock does not
        pass
