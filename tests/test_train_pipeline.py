"""The train pipeline of a whole run: built in a time that does not grow with the epochs, and a resumed run's batches
are the uninterrupted run's."""

import numpy as np

from ich_keras import augment, data, pipeline
from ich_keras.config import AugmentConfig

MEAN, STD = (0.5,) * 3, (0.2,) * 3


def _digits(count: int) -> data.Examples:
    _, labels, _ = data.load_digits_images()
    return data.Examples(tuple(f"digits/{i}" for i in range(count)), labels[:count], ("array",) * count)


def _train(examples, epochs: int, initial_epoch: int = 0, **kw):
    return pipeline.train_dataset("digits", examples, 10, 16, MEAN, STD, AugmentConfig(), batch_size=4,
                                  steps_per_epoch=kw.pop("steps_per_epoch", 3), seed=5, initial_epoch=initial_epoch,
                                  epochs=epochs, **kw)


def test_the_augmentations_are_traced_once_whatever_the_epochs(monkeypatch):
    # Traced once per epoch, the maps cost 0.15 s an epoch before the first step: 1000 epochs took 2.5 min.
    traced = []
    real = augment.augment_example
    monkeypatch.setattr(augment, "augment_example", lambda *args: traced.append(1) or real(*args))
    for epochs in (2, 20):
        traced.clear()
        _train(_digits(12), epochs)
        assert len(traced) == 1, (epochs, len(traced))


def test_a_resumed_run_sees_the_batches_of_the_uninterrupted_one():
    examples = _digits(12)  # 5 steps of 4 take two passes over 12 images an epoch
    whole = list(_train(examples, 4, steps_per_epoch=5).as_numpy_iterator())
    resumed = list(_train(examples, 4, initial_epoch=2, steps_per_epoch=5).as_numpy_iterator())
    assert len(whole) == 20 and len(resumed) == 10
    for (x, y), (rx, ry) in zip(whole[10:], resumed):
        np.testing.assert_array_equal(x, rx)
        np.testing.assert_array_equal(y, ry)
    assert not np.array_equal(whole[0][0], whole[5][0])  # epochs differ
