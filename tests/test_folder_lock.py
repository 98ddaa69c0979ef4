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


def test_soup_and_analyze_refuse_a_run_a_fit_is_still_training(tmp_path):
    # They read the kept checkpoints, which the fit deletes as better epochs arrive: a missing file midway, or a soup
    # of a snapshot the next epoch makes stale.
    from ich_keras import analyze, soup

    run = tmp_path / "run"
    folder_lock.check_not_held(run, "souping")  # no lock file: nothing to wait for
    still = r"A fit \(pid \d+ on .+\) is still writing .*run: the checkpoints it keeps change every epoch; wait for it"
    with folder_lock.held(run, "fit", "pick another --workdir"):
        with pytest.raises(UserError, match=still + r" to end before souping it"):
            soup.main([str(run), "--uniform", "--quiet"])
        with pytest.raises(UserError, match=still):
            soup.main(["--runs", str(run), "--uniform", "--quiet"])
        with pytest.raises(UserError, match=still + r" to end before analysing it"):
            analyze.main([str(run), "--quiet"])
    folder_lock.check_not_held(run, "souping")  # the fit ended: its lock file stays, the lock does not
