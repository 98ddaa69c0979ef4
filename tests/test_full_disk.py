"""A disk that fills up while a file is written: a short error naming the file, nothing left behind, no crash.

The weights-file case writes onto a small tmpfs (root, where mounting is allowed; skipped elsewhere); how
`atomic_path` names the error is checked on any disk."""

import errno
import os
import subprocess
import sys
import textwrap

import pytest

from ich_keras import atomic


def test_a_full_disk_names_the_file_being_written_not_its_temporary(tmp_path):
    target = tmp_path / "state.npz"
    with pytest.raises(OSError) as raised, atomic.atomic_path(target) as temp:
        temp.write_bytes(b"part")
        # What h5py raised: its own long message, the temporary file's name inside it.
        raise OSError(errno.ENOSPC, f"Can't synchronously write data (file write failed: filename = '{temp}')")
    assert (raised.value.errno, raised.value.filename) == (errno.ENOSPC, str(target))
    assert raised.value.strerror == os.strerror(errno.ENOSPC)
    assert not list(tmp_path.iterdir())


def test_a_read_only_folder_names_the_file_not_its_temporary(tmp_path, monkeypatch):
    real_open = os.open

    def read_only(path, flags, *args):  # what creating the temporary file raises on a read-only disk
        if ".tmp-" in str(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(OSError) as raised:
        atomic.write_json(tmp_path / "config.json", {})
    assert (raised.value.errno, raised.value.filename) == (errno.EROFS, str(tmp_path / "config.json"))


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs at tmp_path/disk, unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip() or 'not root'})")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def test_a_weights_file_larger_than_the_free_space_is_a_short_error(small_disk):
    # HDF5 writing straight to a full disk printed pages of "Exception ignored" and then crashed the process (a
    # segmentation fault closing a file whose flush had failed); the file is now built in memory and written whole.
    script = textwrap.dedent(f"""
        import keras
        from ich_keras.init_weights import save_model_weights
        inputs = keras.Input((4,))
        model = keras.Model(inputs, keras.layers.Dense(75_000)(inputs))  # 1.5 MB of weights, 512 KiB of disk
        try:
            save_model_weights(model, {str(small_disk / "epoch_001.weights.h5")!r})
        except OSError as error:
            print(error.errno, error.filename, error.strerror, sep="|")
    """)
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.strip() == f"{errno.ENOSPC}|{small_disk / 'epoch_001.weights.h5'}|No space left on device"
    assert "Exception ignored" not in child.stderr
    assert not list(small_disk.iterdir())  # no temporary file left
