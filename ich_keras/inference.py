"""Predict with a trained run on new photos or arrays, with the run's own evaluation preprocessing.

    import ich_keras

    model = ich_keras.load("runs/demo", weights="soups/greedy/soup.weights.h5")
    result = model.predict(["photos/", "extra.jpg"])      # files and folders (walked recursively)
    result.top_k(3)                                       # [[(class name, probability), ...] per image]
    result.errors                                         # [(path, reason)] for files that are not images
    model.predict(uint8_images).probabilities             # (n, num_classes); arrays of any size are resized

Files are decoded by `ich_keras.image_files.decode_image_file` (PIL, the one decoder of every command; a file that
does not decode becomes an error naming it) and resized and normalised as `ich_keras.pipeline` does for
`python -m ich_keras.soup evaluate`, so the same weights on the same images give the same numbers.
"""

from __future__ import annotations

import functools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ich_keras import image_files, split_lists, weights_origin
from ich_keras.copies import Fingerprint, copies_in, thumbnail
from ich_keras.evaluation import check_finite_outputs, pad_batch, softmax
from ich_keras.rundir import Run, load_run
from ich_keras.errors import UserError
from ich_keras.progress import Phase

TTA_MODES = ("none", "flip")


@dataclass(frozen=True)
class Predictions:
    """What `Predictor.predict` returns.

    `paths` names the row of each image ("array[i]" for array inputs); `errors` lists (path, reason) for the inputs
    that could not be read (they have no row); `left_out` the files found in folders that are not named like images
    (`image_files.IMAGE_SUFFIXES`: RAW files, sidecars, notes), not read.
    """

    paths: tuple[str, ...]
    probabilities: np.ndarray
    class_names: tuple[str, ...]
    errors: tuple[tuple[str, str], ...] = field(default=())
    left_out: tuple[str, ...] = field(default=())
    # Per row, the key of the run's train image it is a copy of (`ich_keras.copies`), or "": a prediction for an
    # image training saw says little about new photos. Arrays by their thumbnails alone; none for runs made before
    # train fingerprints were kept.
    copies_of_train: tuple[str, ...] = field(default=())

    @property
    def labels(self) -> np.ndarray:
        """(n,) index of the most probable class."""
        return self.probabilities.argmax(axis=-1)

    @property
    def classes(self) -> list[str]:
        """The most probable class name of each image."""
        return [self.class_names[i] for i in self.labels]

    def top_k(self, k: int = 5) -> list[list[tuple[str, float]]]:
        """Per image, the k most probable (class name, probability) pairs, most probable first.

        Args:
            k: how many; capped at the number of classes.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1. Received: k={k}")
        # Stable sort on -p: ties keep label order, so the first entry always equals `labels`.
        order = np.argsort(-self.probabilities, axis=-1, kind="stable")[:, :k]
        return [[(self.class_names[c], float(p[c])) for c in row] for p, row in zip(self.probabilities, order)]


def collect_files(inputs) -> tuple[list[Path], list[tuple[str, str]], list[Path]]:
    """Expands files and directories (walked recursively, hidden entries skipped) into a list of files.

    A file named as an input is read whatever its name; in a directory, only the files named like images are.

    Args:
        inputs: paths of files or directories, in the order they should be predicted.

    Returns:
        (files in input order, each directory's files sorted; [(path, reason)] for inputs that do not exist and
        directories without any image; the directories' files not named like images, but for those also named as
        inputs). The predict command stops on an input that does not exist before it gets here.
    """
    files, errors, left_out = [], [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = image_files.visible_files(path)
            images = [f for f in found if image_files.named_like_image(f)]
            left_out += [f for f in found if not image_files.named_like_image(f)]
            if not images:
                others = f" ({image_files.describe_left_out([str(f) for f in found])})" if found else ""
                errors.append((str(path), f"directory holds no image files{others}"))
            files += images
        elif os.path.lexists(path):  # a file, a broken link, a FIFO or device: the decoder names each as such
            files.append(path)
        else:
            errors.append((str(path), "no such file or directory"))
    named = {Path(item).resolve() for item in inputs if os.path.lexists(item)}  # read whatever their names
    return files, errors, [f for f in left_out if f.resolve() not in named]


def resolve_weights(run: Run, weights: str | Path | None) -> Path:
    """The weights file to load: `weights` as given, else relative to the run directory; by default the best
    checkpoint by validation accuracy (the first ranked metric if the run does not rank accuracy), ties broken by
    lower validation loss as for the soups' best single checkpoint (`Run.best`).

    Raises:
        UserError (a ValueError) naming the path when it exists neither as given nor inside the run directory, or
        names two different files there (a relative path started from another run), or comes from a run of other
        classes (`weights_origin.check_classes`), or naming the run when it kept no checkpoint to default to.
    """
    if weights is None:
        ranked = run.manifest.get("ranked", {})
        metric = "accuracy" if ranked.get("accuracy") else next((m for m, e in ranked.items() if e), None)
        if metric is None:
            raise UserError(f"The run kept no checkpoint; name a weights file (--weights). "
                            f"Received: run_dir={str(run.path)!r}")
        best = run.best(metric).path
        if not best.is_file():  # deleted by hand: nothing writes a kept checkpoint again
            raise UserError(f"The best checkpoint by val {metric}, listed in the run's manifest, is missing: put it "
                            f"back, or name other weights with --weights. Received: path={str(best)!r}")
        return best
    given, in_run = Path(weights), run.path / weights
    if given.is_file() and in_run.is_file() and not given.samefile(in_run):
        # Started inside another run (`predict ../b --weights soups/greedy/soup.weights.h5` from runs/a): the file
        # of the working directory would load silently into this run's model, under this run's class names.
        raise UserError(f"The weights name two different files, one from the working directory ({given.resolve()}) "
                        f"and one inside the run directory ({in_run}); give the one you mean with a path that "
                        f"names only it. Received: weights={str(weights)!r}")
    for candidate in (given, in_run):
        if candidate.is_file():
            weights_origin.check_classes(candidate, run)
            return candidate
    folder = next((candidate for candidate in (given, in_run) if candidate.is_dir()), None)
    if folder is not None:  # `--weights soups`: the folder of the soups, not one soup's file
        raise UserError(f"The weights path is a folder; pass a .weights.h5 file (a soup's is "
                        f"soups/METHOD/soup.weights.h5). Received: weights={str(weights)!r}, folder={str(folder)!r}")
    raise UserError(
        f"Weights file not found, neither as given nor inside the run directory {str(run.path)!r}. "
        f"Received: weights={str(weights)!r}"
    )


def _check_pixels(image: np.ndarray, i: int) -> None:
    """An (h, w, 3) RGB image of values in [0, 255]; floats scaled to [0, 1] would predict as near-black images."""
    if image.ndim != 3 or image.shape[-1] != 3:
        raise UserError(f"Expected RGB images of shape (h, w, 3). Received: images[{i}].shape={image.shape}")
    if image.dtype.kind not in "uif":
        raise UserError(f"Expected uint8 or float pixels. Received: images[{i}].dtype={image.dtype}")
    if image.dtype.kind == "f" and not np.isfinite(image).all():  # NaN passes every range comparison
        raise UserError(f"Expected finite pixels. Received: images[{i}] holds NaN or inf")
    low, high = (image.min(), image.max()) if image.size else (0, 255)
    if image.dtype.kind == "f" and 0 < high <= 1.0:  # all black is black in either scale
        raise UserError(f"Expected pixels in [0, 255]; these floats look scaled to [0, 1] (multiply by 255). "
                        f"Received: images[{i}] in [{low:g}, {high:g}]")
    if low < 0 or high > 255:
        raise UserError(f"Expected pixels in [0, 255]. Received: images[{i}] in [{low:g}, {high:g}]")


class Predictor:
    """A run's model with loaded weights; `predict` takes paths or arrays. Build it with `load`."""

    def __init__(self, run: Run, weights_path: Path, batch_size: int = 32, tta: str = "none"):
        if tta not in TTA_MODES:
            raise UserError(f"Unknown test-time augmentation; expected one of {TTA_MODES}. Received: tta={tta!r}")
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1. Received: batch_size={batch_size}")
        self.run = run
        self.weights_path = Path(weights_path)
        self.batch_size = batch_size
        self.tta = tta
        import keras

        caller_policy = keras.config.dtype_policy()
        keras.config.set_dtype_policy("float32")  # the commands' numbers, whatever policy a notebook set (bfloat16)
        try:
            self.model = run.build_model(self.weights_path)
        finally:
            keras.config.set_dtype_policy(caller_policy)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.run.class_names

    @functools.cached_property
    def _train_fingerprints(self) -> dict:
        """The run's train images' fingerprints, read once for every `predict` call (a few MB for 10,000 images)."""
        return split_lists.read_train_fingerprints(self.run.path)

    def _probabilities(self, batches, total: int, progress: bool) -> np.ndarray:
        """Softmax of the model over normalised float32 batches.

        Every batch is padded to `padded_batch_size(total, batch_size)`: one input shape a call, so XLA compiles
        once however many images come, and a few photos are not padded to a whole batch.
        """
        phase = Phase("predict", math.ceil(total / self.batch_size), progress, min_interval_s=2.0)
        size = padded_batch_size(total, self.batch_size)
        outputs = []
        for images in batches:
            padded, n = pad_batch(np.asarray(images), size)
            probs = softmax(self.model.predict_on_batch(padded))
            if self.tta == "flip":
                # Mean of the probabilities of the image and its horizontal mirror (axis 2 is width in NHWC).
                probs = 0.5 * (probs + softmax(self.model.predict_on_batch(padded[:, :, ::-1])))
            check_finite_outputs(probs[:n], str(self.weights_path))
            outputs.append(probs[:n])
            phase.step(f"{n} image" + "s" * (n != 1))
        num_classes = len(self.class_names)
        return np.concatenate(outputs) if outputs else np.zeros((0, num_classes), np.float32)

    def predict_files(self, inputs, progress: bool = False) -> Predictions:
        """Predicts image files and every image file under directories; unreadable files become `errors`.

        Args:
            inputs: file or directory paths.
            progress: labelled progress lines on stderr.

        Returns:
            `Predictions` with one row per readable image, in input order.
        """
        files, errors, left_out = collect_files(inputs)
        paths, bad, fingerprints = [], [], []
        decode = functools.partial(image_files.try_decode, size=self.run.image_size)

        def batches():
            # A batch of files at a time, each decoded once by the data check's decoder in threads (PIL releases
            # the GIL): a file that does not decode becomes an error naming it, and the others go on.
            with ThreadPoolExecutor(max_workers=image_files.DECODE_THREADS) as pool:
                for start in range(0, len(files), self.batch_size):
                    chunk = files[start:start + self.batch_size]
                    images = []
                    for path, (image, reason) in zip(chunk, pool.map(decode, chunk)):
                        if reason is None:
                            paths.append(str(path))
                            images.append(image)
                            fingerprints.append(image_files.fingerprint(path, image))
                        else:
                            bad.append((str(path), reason))
                    if images:
                        yield self._normalized(images)

        probs = self._probabilities(batches(), len(files), progress)
        return Predictions(tuple(paths), probs, self.class_names, tuple(errors + bad),
                           tuple(str(f) for f in left_out),
                           tuple(copies_in(self._train_fingerprints, fingerprints, self.run.config.data.near_copies)))

    def _normalized(self, images) -> np.ndarray:
        """RGB images of any sizes -> one (n, size, size, 3) float32 batch, by the evaluation pipeline's resize,
        rounding to uint8 and normalisation."""
        import tensorflow as tf

        from ich_keras import pipeline

        run = self.run
        resized = [pipeline.resize_uint8(tf.convert_to_tensor(image), run.image_size) for image in images]
        return pipeline.normalize(tf.stack(resized), run.mean, run.std).numpy()

    def predict_arrays(self, images, progress: bool = False) -> Predictions:
        """Predicts RGB images given as arrays of any size (uint8, or floats in [0, 255]).

        Args:
            images: one (h, w, 3) image, an (n, h, w, 3) batch, or a list of (h, w, 3) images of varying sizes.
            progress: labelled progress lines on stderr.

        Returns:
            `Predictions` with rows named "array[i]".
        """
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = images[None]
        if isinstance(images, np.ndarray) and images.ndim != 4:
            raise UserError(f"Expected one (h, w, 3) RGB image or an (n, h, w, 3) batch (a grayscale image: "
                            f"np.stack([image] * 3, -1)). Received: an array of shape {images.shape}")
        images = list(images)
        for i, image in enumerate(images):
            if isinstance(image, tuple):  # iterating an (image, label) dataset
                raise UserError(f"Expected images. Received: images[{i}] is a tuple of {len(image)} (an (image, "
                                f"label) dataset? pass its images alone: ds.map(lambda image, label: image))")
            if np.ndim(image) == 4:  # iterating a batched dataset
                raise UserError(f"Expected (h, w, 3) images. Received: images[{i}] is a batch of shape "
                                f"{np.shape(image)} (a batched dataset? pass ds.unbatch(), or each batch)")
            _check_pixels(np.asarray(image), i)
        batches = (self._normalized(images[start:start + self.batch_size])
                   for start in range(0, len(images), self.batch_size))
        probs = self._probabilities(batches, len(images), progress)
        # Arrays have no file bytes: compared with the train images by their thumbnails alone.
        thumbnails = [Fingerprint("", thumbnail(np.rint(np.asarray(image)).astype(np.uint8))) for image in images]
        copies = copies_in(self._train_fingerprints, thumbnails, self.run.config.data.near_copies)
        return Predictions(tuple(f"array[{i}]" for i in range(len(images))), probs, self.class_names,
                           copies_of_train=tuple(copies))

    def predict(self, inputs, progress: bool = False) -> Predictions:
        """Predicts paths (a path, or a list of file and directory paths) or arrays; see `predict_files` and
        `predict_arrays`."""
        if isinstance(inputs, (str, os.PathLike)):
            inputs = [inputs]
        elif hasattr(inputs, "__array_interface__") and not isinstance(inputs, np.ndarray):
            inputs = np.asarray(inputs)  # one PIL image
        if isinstance(inputs, np.ndarray) and inputs.dtype.kind in "USO" and inputs.ndim == 1:
            inputs = inputs.tolist()  # a column of paths (df.path.values)
        if not isinstance(inputs, np.ndarray):
            inputs = list(inputs)  # a generator is read once: here, not by the type checks below
            paths = [isinstance(item, (str, os.PathLike)) for item in inputs]
            if all(paths):
                return self.predict_files(inputs, progress)
            if any(paths):
                path, other = paths.index(True), paths.index(False)
                raise UserError(f"Expected paths or images, not both in one call. Received: inputs[{path}] a path, "
                                f"inputs[{other}] a {type(inputs[other]).__name__}")
        return self.predict_arrays(inputs, progress)


def padded_batch_size(total: int, batch_size: int) -> int:
    """The batch every forward pass of a call predicting `total` images is padded to: `batch_size`, or for fewer
    images the power of two that holds them (one photo was padded to 32 forward passes; powers of two keep the
    shapes XLA compiles for to a few)."""
    return min(batch_size, 1 << max(total - 1, 0).bit_length())


def load(run_dir: str | Path, weights: str | Path | None = None, batch_size: int = 32, tta: str = "none"):
    """Loads a run's model for prediction.

    Args:
        run_dir: a directory written by `python -m ich_keras.fit`.
        weights: a `.weights.h5` file (a checkpoint or a soup), as a path or relative to `run_dir`, e.g.
            "soups/greedy/soup.weights.h5"; default: the best checkpoint by validation accuracy.
        batch_size: images per forward pass.
        tta: "none", or "flip" for the mean of the image's and its horizontal mirror's probabilities.

    Returns:
        A `Predictor`.
    """
    run = load_run(run_dir)
    return Predictor(run, resolve_weights(run, weights), batch_size=batch_size, tta=tta)
