"""Train-time augmentation as stateless TensorFlow ops (run inside tf.data).

Every random draw takes an explicit seed derived from (train seed, epoch, example or batch index), so an epoch's
augmentation is a pure function of those numbers: a run resumed after `kill -9` sees exactly the batches an
uninterrupted run would have seen. That is why flip, random-resized-crop, MixUp and CutMix are written here with
`tf.random.stateless_*` instead of the stateful keras.layers versions (whose seed-generator state lives outside
the run's saved state). RandAugment, optional, is keras.layers.RandAugment and is not resume-exact.

Images are float32 in [0, 255] until `ich_keras.pipeline` normalises them.
"""

from __future__ import annotations

import tensorflow as tf

from ich_keras.config import AugmentConfig


def _resize(image, size: int):
    image = tf.image.resize(image, (size, size), method="bicubic", antialias=True)
    return tf.clip_by_value(image, 0.0, 255.0)


def random_resized_crop(image, seed, size: int, scale_min: float):
    """Crops a random box of area in [scale_min, 1] of the image and aspect ratio in [3/4, 4/3] (as torchvision's
    RandomResizedCrop), then resizes it back to size x size with bicubic interpolation."""
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(scale_min, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    return _resize(tf.slice(image, begin, crop_size), size)


def augment_example(image, seed, cfg: AugmentConfig, size: int):
    """Per-example augmentation of one (size, size, 3) float32 image.

    Args:
        image: float32 image in [0, 255].
        seed: int32/int64 tensor of shape (2,), unique per example and epoch.
        cfg: which augmentations are on.
        size: output side.

    Returns:
        The augmented (size, size, 3) float32 image.
    """
    seeds = tf.random.experimental.stateless_split(seed, 2)
    if cfg.random_resized_crop:
        image = random_resized_crop(image, seeds[0], size, cfg.crop_scale_min)
    if cfg.flip:
        image = tf.image.stateless_random_flip_left_right(image, seeds[1])
    return tf.ensure_shape(image, (size, size, 3))


def _beta(alpha: float, seed):
    """One Beta(alpha, alpha) draw from two stateless Gamma draws."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    a = tf.random.stateless_gamma([], seeds[0], alpha)
    b = tf.random.stateless_gamma([], seeds[1], alpha)
    return a / (a + b)


def _cutmix_mask(height, width, lam, seed):
    """A (height, width, 1) float mask that is 0 inside a random box of area about (1 - lam) and 1 elsewhere, and
    the exact share of ones, as in timm's `rand_bbox` (the box centre is uniform; the box is clipped)."""
    ratio = tf.sqrt(1.0 - lam)
    cut_h = tf.cast(tf.cast(height, tf.float32) * ratio, tf.int32)
    cut_w = tf.cast(tf.cast(width, tf.float32) * ratio, tf.int32)
    centre = tf.random.stateless_uniform([2], seed, 0.0, 1.0)
    cy = tf.cast(centre[0] * tf.cast(height, tf.float32), tf.int32)
    cx = tf.cast(centre[1] * tf.cast(width, tf.float32), tf.int32)
    y0, y1 = tf.clip_by_value(cy - cut_h // 2, 0, height), tf.clip_by_value(cy + cut_h // 2, 0, height)
    x0, x1 = tf.clip_by_value(cx - cut_w // 2, 0, width), tf.clip_by_value(cx + cut_w // 2, 0, width)
    rows = tf.range(height)[:, None]
    cols = tf.range(width)[None, :]
    inside = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
    mask = 1.0 - tf.cast(inside, tf.float32)
    kept = 1.0 - tf.cast((y1 - y0) * (x1 - x0), tf.float32) / tf.cast(height * width, tf.float32)
    return mask[..., None], kept


def mix_batch(images, labels, seed, cfg: AugmentConfig):
    """MixUp or CutMix on one batch, one of them per batch (timm's `Mixup` in batch mode).

    Each image is mixed with the image at the mirrored position in the batch (timm's `flip`), and so are the
    labels, which must be one-hot floats: with integer labels mixing is meaningless (the reason keras' MixUp
    returns garbage for them).

    Args:
        images: (batch, h, w, 3) float32.
        labels: (batch, num_classes) float32 one-hot or smoothed.
        seed: shape-(2,) seed, unique per batch and epoch.
        cfg: mixup_alpha, cutmix_alpha (0 disables one), mix_prob, switch_prob.

    Returns:
        (images, labels) mixed; unchanged when this batch draws no mixing.
    """
    use_mixup, use_cutmix = cfg.mixup_alpha > 0, cfg.cutmix_alpha > 0
    if cfg.mix_prob == 0 or not (use_mixup or use_cutmix):
        return images, labels
    seeds = tf.random.experimental.stateless_split(seed, 5)
    apply = tf.random.stateless_uniform([], seeds[0]) < cfg.mix_prob
    if use_mixup and use_cutmix:
        cutmix = tf.random.stateless_uniform([], seeds[1]) < cfg.switch_prob
    else:
        cutmix = tf.constant(use_cutmix)
    shape = tf.shape(images)
    flipped_images, flipped_labels = images[::-1], labels[::-1]

    lam_mixup = _beta(cfg.mixup_alpha, seeds[2]) if use_mixup else tf.constant(1.0)
    mixed = lam_mixup * images + (1.0 - lam_mixup) * flipped_images
    if use_cutmix:
        mask, lam_cutmix = _cutmix_mask(shape[1], shape[2], _beta(cfg.cutmix_alpha, seeds[3]), seeds[4])
        cut = mask * images + (1.0 - mask) * flipped_images
    else:
        cut, lam_cutmix = images, tf.constant(1.0)

    lam = tf.where(apply, tf.where(cutmix, lam_cutmix, lam_mixup), 1.0)
    images = tf.where(apply, tf.where(cutmix, cut, mixed), images)
    labels = lam * labels + (1.0 - lam) * flipped_labels
    return images, labels
