"""tf.data pipelines from `ich_keras.data.Examples`: decode, resize, (augment), normalise, batch, prefetch.

Every image is decoded to RGB, resized to size x size with antialiased bicubic interpolation (the aspect ratio is
not kept: heritage photos are squashed to the square, not cropped) and rounded to uint8, so an image reads the same
whether it came from the in-memory cache or from disk. Then pixels are scaled to [0, 1] and normalised with the model's
mean/std.

Every file is decoded by `ich_keras.image_files.decode_image_file` (PIL) in a `tf.numpy_function`: the decoder the data
check, predict and a PIL-based deployment use, so one image gives one set of pixels everywhere (TensorFlow's own
decoders return palette indices for 8-bit BMPs, fail on 1-bit ones and round JPEG pixels differently). An image far
larger than the output is made smaller in the decoder first (`image_files.REDUCED_DECODE_MARGIN`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from ich_keras import augment
from ich_keras.config import AugmentConfig
from ich_keras.data import DIGITS, Examples, load_digits_images
from ich_keras.errors import UserError
from ich_keras.image_files import decode_image_file, describe_error

AUTOTUNE = tf.data.AUTOTUNE


def _decode_path(path, size: int) -> np.ndarray:
    path = path.decode() if isinstance(path, bytes) else str(path)
    try:
        return decode_image_file(path, size)
    except Exception as error:  # noqa: BLE001  (any decode failure: name the file, whatever PIL raised)
        # The file passed the data check when the split lists were made, so it changed since.
        raise UserError(f"Cannot decode image file ({describe_error(error)}); it was readable when the "
                        f"run's split lists were made. Restore it, or start a new run. Received: path={path!r}"
                        ) from None


def _decode_file(path, size: int):
    image = tf.numpy_function(lambda p: _decode_path(p, size), [path], tf.uint8, stateful=False)
    return tf.ensure_shape(image, (None, None, 3))


def resize_uint8(image, size: int):
    image = tf.image.resize(tf.cast(image, tf.float32), (size, size), method="bicubic", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def decoded_dataset(source: str, examples: Examples, image_size: int, workers: int = 0) -> tf.data.Dataset:
    """Unbatched (uint8 (size, size, 3) image, int64 label) in the order of `examples`.

    Args:
        source: the resolved data source (an ImageFolder directory or "digits").
        examples: keys, labels and decoders of one split.
        image_size: output side.
        workers: parallel decode calls; 0 lets tf.data choose.
    """
    parallel = workers or AUTOTUNE
    labels = tf.constant(examples.labels, dtype=tf.int64)
    if source == DIGITS:
        images, _, _ = load_digits_images()
        index = np.asarray([int(key.split("/", 1)[1]) for key in examples.keys], dtype=np.int64)
        ds = tf.data.Dataset.from_tensor_slices((images[index], labels))
    else:
        # The split lists' decoder column ("tf" in older runs) is ignored: every file goes through PIL.
        paths = [str(Path(source) / key) for key in examples.keys]
        ds = tf.data.Dataset.from_tensor_slices((paths, labels))
        ds = ds.map(lambda path, label: (_decode_file(path, image_size), label), num_parallel_calls=parallel)
    return ds.map(lambda image, label: (resize_uint8(image, image_size), label), num_parallel_calls=parallel)


def normalize(images, mean, std):
    """uint8 or [0, 255] float images -> (x / 255 - mean) / std, float32."""
    mean = tf.constant(mean, tf.float32)
    std = tf.constant(std, tf.float32)
    return (tf.cast(images, tf.float32) / 255.0 - mean) / std


def eval_dataset(
    source: str,
    examples: Examples,
    image_size: int,
    mean,
    std,
    batch_size: int,
    cache: bool = False,
    workers: int = 0,
) -> tf.data.Dataset:
    """Deterministic, unshuffled, unaugmented batches of (normalised float32 images, int64 labels).

    Args:
        source, examples, image_size, workers: as in `decoded_dataset`.
        mean, std: the model's normalisation (per channel, for pixels in [0, 1]).
        batch_size: the last batch may be smaller.
        cache: keep decoded images in memory after the first pass.

    Returns:
        A `tf.data.Dataset` in the order of `examples`.
    """
    ds = decoded_dataset(source, examples, image_size, workers)
    if cache:
        ds = ds.cache()
    ds = ds.batch(batch_size).map(lambda images, labels: (normalize(images, mean, std), labels))
    return ds.prefetch(AUTOTUNE)


class DecodedSplit:
    """A split decoded once and held in memory as uint8 batches, a quarter of the normalised images' size (0.15 GB
    per 1000 images at 224 px), for what passes over one split many times (soups, the analysis). Iterating yields
    (normalised float32 images, int64 labels) batches, computed as `eval_dataset` computes them, bit for bit."""

    def __init__(self, batches: list[tuple[np.ndarray, np.ndarray]], mean, std):
        self.batches = batches
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)

    def __iter__(self):
        for images, labels in self.batches:
            yield (images.astype(np.float32) / np.float32(255.0) - self.mean) / self.std, labels


def decoded_split(source: str, examples: Examples, image_size: int, mean, std, batch_size: int,
                  workers: int = 0) -> DecodedSplit:
    """`eval_dataset`'s batches, decoded now and held as a `DecodedSplit`."""
    ds = decoded_dataset(source, examples, image_size, workers).batch(batch_size).prefetch(AUTOTUNE)
    return DecodedSplit(list(ds.as_numpy_iterator()), mean, std)


def train_dataset(
    source: str,
    examples: Examples,
    num_classes: int,
    image_size: int,
    mean,
    std,
    aug: AugmentConfig,
    batch_size: int,
    steps_per_epoch: int,
    seed: int,
    initial_epoch: int,
    epochs: int,
    cache: bool = True,
    workers: int = 0,
) -> tf.data.Dataset:
    """Shuffled, augmented batches of (normalised float32 images, float32 one-hot labels) for epochs
    `initial_epoch` .. `epochs - 1`, exactly `steps_per_epoch` full batches each.

    Epoch e's shuffle and augmentation seeds derive from (seed, e) only, so a resumed run starting at
    `initial_epoch = e` sees the same batches as an uninterrupted run; with `aug.rand_augment` only up to
    RandAugment, whose draws a resume does not replay. Pass `steps_per_epoch` to `model.fit` too.
    """
    parallel = workers or AUTOTUNE
    n = len(examples)
    if cache:
        # Decoded once; later epochs shuffle the cached images (the shuffle buffer holds one epoch of them).
        cached = decoded_dataset(source, examples, image_size, workers).cache()

    if aug.rand_augment:
        import keras

        # Stateful (keras seed generator): the one augmentation here that a resumed run does not replay exactly.
        # float32 whatever the global dtype policy: fit builds this dataset under train.precision's mixed policy,
        # and bfloat16 batches would not mix with the float32 arithmetic of `augment.mix_batch`. The seed wraps
        # into the uint32 range the seed generator takes (train.seed < 2**32, but + initial_epoch may pass it).
        rand_augment = keras.layers.RandAugment(
            value_range=(0, 255), factor=aug.rand_augment_magnitude, seed=(seed + initial_epoch) % 2**32,
            dtype="float32", data_format="channels_last",  # NHWC batches, whatever ~/.keras/keras.json says
        )

    # Passes over the train split one epoch needs (more than one when steps_per_epoch asks for more batches).
    passes = -(-steps_per_epoch * batch_size // n)

    def one_pass(epoch: int, index: int):
        # No reshuffle_each_iteration: keras may open an iterator before training (to peek at shapes), and with
        # reshuffling that would move the order of the first epoch run, so a resumed run would differ.
        if cache:
            return cached.shuffle(
                n, seed=(seed * 1_000_003 + epoch) * 1_000 + index, reshuffle_each_iteration=False
            )
        # Without a cache, shuffle the file list before decoding: memory stays flat.
        order = np.random.default_rng([seed, epoch, index]).permutation(n)
        return decoded_dataset(source, examples.subset(order), image_size, workers)

    examples_per_epoch = steps_per_epoch * batch_size

    def one_epoch(epoch: int):
        # (epoch's seed, index in the epoch, example): the seeds travel with the examples, so the maps below are
        # traced once for the whole run (traced per epoch, they cost 0.15 s an epoch before the first step).
        ds = one_pass(epoch, 0)
        for index in range(1, passes):
            ds = ds.concatenate(one_pass(epoch, index))
        epoch_seed = tf.data.Dataset.from_tensors(tf.constant(seed * 1_000_003 + epoch, tf.int64)).repeat()
        return tf.data.Dataset.zip((epoch_seed, tf.data.Dataset.range(examples_per_epoch),
                                    ds.take(examples_per_epoch)))

    def per_example(epoch_seed, index, example):
        image, label = example
        image = augment.augment_example(tf.cast(image, tf.float32), tf.stack([epoch_seed, index]), aug, image_size)
        return epoch_seed, index, image, tf.one_hot(label, num_classes, dtype=tf.float32)

    def per_batch(epoch_seeds, indices, images, labels):
        if aug.rand_augment:
            images = rand_augment(images, training=True)
        # Batch seeds live in another stream than example seeds (negative second component).
        batch_index = indices[0] // batch_size
        return augment.mix_batch(images, labels, tf.stack([epoch_seeds[0], -1 - batch_index]), aug)

    # One dataset per epoch, chained: Python-int seeds per epoch (Dataset.shuffle rejects tensor seeds once a
    # global seed is set), and all epochs share the one in-memory cache. Each epoch holds whole batches, so the
    # batches of the chain never straddle two epochs.
    ds = one_epoch(initial_epoch)
    for epoch in range(initial_epoch + 1, epochs):
        ds = ds.concatenate(one_epoch(epoch))
    ds = ds.map(per_example, num_parallel_calls=parallel).batch(batch_size, drop_remainder=True)
    ds = ds.map(per_batch, num_parallel_calls=parallel)
    ds = ds.map(lambda images, labels: (normalize(images, mean, std), labels), num_parallel_calls=parallel)
    return ds.prefetch(AUTOTUNE)
