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


def test_a_failed_holder_removes_its_lock_file_and_a_waiting_command_locks_the_file_there(tmp_path):
    # The failed holder deletes its lock file while it still holds it; a command that waited on that file gets a
    # lock on a file no longer at folder/.lock, which locks nothing: it must take the lock again on the file there.
    import threading
    import time

    folder = tmp_path / "new" / "soups"
    inside, leave = threading.Event(), threading.Event()

    def waiting():
        with folder_lock.held(folder, "soup command", "pass another --output", wait=True):
            inside.set()
            leave.wait(10)

    with pytest.raises(RuntimeError), folder_lock.held(folder, "soup command", "pass another --output"):
        waiter = threading.Thread(target=waiting)
        waiter.start()
        time.sleep(0.5)  # the waiter has opened the lock file and waits in flock
        raise RuntimeError("the soup failed")
    assert inside.wait(10)
    try:
        held_there = pytest.raises(UserError, match="Another soup command")  # the waiter holds folder/.lock's lock
        with held_there, folder_lock.held(folder, "soup command", "pass another --output"):
            pass
    finally:
        leave.set()
        waiter.join()
    assert sorted(p.name for p in folder.iterdir()) == [".lock"]  # the waiter succeeded: its lock file stays


def test_a_failed_holder_leaves_nothing_it_made_and_keeps_what_was_there(tmp_path):
    new = tmp_path / "made" / "soups"
    with pytest.raises(KeyboardInterrupt), folder_lock.held(new, "soup command", "pass another --output"):
        assert (new / ".lock").is_file()
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    mine = tmp_path / "mine"
    mine.mkdir()
    with pytest.raises(RuntimeError), folder_lock.held(mine, "soup command", "pass another --output"):
        raise RuntimeError
    assert mine.is_dir() and list(mine.iterdir()) == []
    with pytest.raises(RuntimeError), folder_lock.held(new, "soup command", "pass another --output"):
        (new / "uniform").mkdir()  # a result published before the failure keeps the folder
        raise RuntimeError
    assert sorted(p.name for p in new.iterdir()) == ["uniform"]
    with folder_lock.held(new, "soup command", "pass another --output"):
        pass
    with pytest.raises(RuntimeError), folder_lock.held(new, "soup command", "pass another --output"):
        raise RuntimeError
    assert sorted(p.name for p in new.iterdir()) == [".lock", "uniform"]  # a lock file from before stays
