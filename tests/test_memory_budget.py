"""Decodes in threads share a budget of memory: one that does not fit waits for the others, with real threads and
real image files."""

import threading

import numpy as np
from PIL import Image

from ich_keras import image_files
from ich_keras.memory_budget import MemoryBudget, physical_memory_bytes

WAIT_S = 0.3  # long enough for a thread that is not blocked to finish a small decode on a busy machine


def _in_thread(task) -> tuple[threading.Thread, list]:
    results = []
    thread = threading.Thread(target=lambda: results.append(task()), daemon=True)
    thread.start()
    return thread, results


def test_a_hold_that_does_not_fit_waits_until_enough_is_released():
    budget = MemoryBudget(100)
    with budget.hold(60):
        fits, fits_result = _in_thread(lambda: _hold_once(budget, 40))
        fits.join(WAIT_S)
        assert fits_result == [40]  # 60 + 40 <= 100: no wait
        waits, waits_result = _in_thread(lambda: _hold_once(budget, 50))
        waits.join(WAIT_S)
        assert waits.is_alive() and budget.held_bytes == 60
    waits.join(WAIT_S)
    assert waits_result == [50] and budget.held_bytes == 0


def test_a_hold_larger_than_the_whole_budget_runs_alone_rather_than_never():
    budget = MemoryBudget(100)
    with budget.hold(10):
        alone, alone_result = _in_thread(lambda: _hold_once(budget, 500))
        alone.join(WAIT_S)
        assert alone.is_alive()
    alone.join(WAIT_S)
    assert alone_result == [500]


def test_the_budget_is_released_when_the_holder_fails():
    budget = MemoryBudget(100)
    try:
        with budget.hold(80):
            raise OSError("image file is truncated")
    except OSError:
        pass
    assert budget.held_bytes == 0


def test_a_decode_waits_for_room_in_the_decoders_budget(tmp_path, monkeypatch):
    path = tmp_path / "scan.png"
    Image.fromarray(np.full((40, 50, 3), 7, np.uint8)).save(path)
    budget = MemoryBudget(50 * 40 * 16)  # one such decode's estimate
    monkeypatch.setattr(image_files, "DECODE_MEMORY", budget)
    with budget.hold(1):
        decode, decoded = _in_thread(lambda: image_files.decode_image_file(path, 8))
        decode.join(WAIT_S)
        assert decode.is_alive() and not decoded
    decode.join(10)
    assert decoded[0].shape == (20, 25, 3) and budget.held_bytes == 0  # 40 x 50 averaged over 2 x 2 boxes


def test_the_machine_s_memory_is_known():
    assert physical_memory_bytes() >= 1 << 30
    assert image_files.DECODE_MEMORY.capacity_bytes == physical_memory_bytes() // 4


def _hold_once(budget: MemoryBudget, nbytes: int) -> int:
    with budget.hold(nbytes):
        return nbytes
