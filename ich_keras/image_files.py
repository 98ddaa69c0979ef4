"""Image files as every command reads them: which files of a folder are images, and the one decoder.

`visible_files` lists a folder as a person sees it (no dot files, no `__MACOSX/`); `named_like_image` keeps the files
whose name says image (`IMAGE_SUFFIXES`); `decode_image_file` turns one into (height, width, 3) uint8 RGB, and
`check_image` / `try_decode` report a file that does not decode instead of raising (`check_image` also gives a
fingerprint of it, by which the data check finds copies of one picture in two splits: `ich_keras.copies`).

Every command passes the size it resizes to next, and an image much larger than that is made smaller first
(`REDUCED_DECODE_MARGIN`): a JPEG decoded at a reduced scale (a camera's 12-megapixel photo headed for 224 px is
checked or decoded 6x faster, `benchmarks/photo_decode.py`), any image still that large averaged over boxes before
it leaves the decoder. A scan of a hundred megapixels is held whole only while it is decoded, and decodes in
threads wait for room in a share of the machine's memory (`DECODE_MEMORY`) rather than run it out.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import math
import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image

from ich_keras.copies import Fingerprint, thumbnail
from ich_keras.errors import UserError
from ich_keras.memory_budget import MemoryBudget, physical_memory_bytes

# An image at least twice this many times the target size on both sides is made smaller, keeping both sides >= this
# times the size: a JPEG decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, as Pillow's `thumbnail` does), then
# any image still that large averaged over boxes (PIL's BOX filter). The antialiased resize that follows still
# downsamples by 2x or more, and the result differs from a whole decode's by about a gray level on average
# (benchmarks/README.md, "Camera-size photos" and "Archive scans"; going down to the size itself: up to 3.7).
REDUCED_DECODE_MARGIN = 2
# PIL's modes of grayscale images deeper than 8 bits, and their levels 0..65535 as 8-bit ones (rounded: a lookup
# of one byte per pixel instead of float64 arithmetic over a scan).
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")
_SIXTEEN_TO_EIGHT_BITS = np.rint(np.arange(65536) / 257.0).astype(np.uint8)
# EXIF orientation -> the turn that shows a photo upright, as PIL's `ImageOps.exif_transpose` turns it. Not that
# function itself: it also writes the EXIF back without the orientation, and fails on a tag of another type than the
# standard's (a ResolutionUnit written as text): a photo stored sideways that any viewer shows would be unreadable.
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}
# Decodes in threads wait while together they would hold more than this share of the machine's memory.
DECODE_MEMORY = MemoryBudget(physical_memory_bytes() // 4)
# PIL refuses an image of more than 2 x `Image.MAX_IMAGE_PIXELS` pixels (179 megapixels) as a possible decompression
# bomb and warns above half that. An archive's scans can be larger: ICH_KERAS_MAX_PIXELS=N lets every command read
# images of up to N pixels, without the warning.
MAX_PIXELS_ENV = "ICH_KERAS_MAX_PIXELS"
# How many files the data check and `predict` decode at once (threads: PIL releases the GIL while decoding).
DECODE_THREADS = 8
# What is read as an image, by file name (any case). A photo collection also holds RAW files beside their JPEGs (PIL
# opens some as TIFFs and returns the small embedded preview: the same photo twice, maybe in two splits), sidecars
# (.xmp, .aae), notes, Thumbs.db: as in torchvision's ImageFolder and Keras' image_dataset_from_directory, those are
# left out, and counted and named where they were found.
PIL_SUFFIXES = frozenset((".bmp", ".dib", ".gif", ".j2k", ".jfif", ".jp2", ".jpe", ".jpeg", ".jpg", ".mpo", ".pbm",
                          ".pgm", ".png", ".pnm", ".ppm", ".tga", ".tif", ".tiff", ".webp"))
# A phone's photos (HEIC, the iPhone's default) are read through pillow-heif, the `heic` extra, when it is installed.
HEIF_SUFFIXES = frozenset((".heic", ".heif", ".hif"))
HEIF_EXTRA_ADVICE = "HEIC/HEIF photos are read once the heic extra is installed: pip install 'ich_keras[heic]'"


def _register_heif_opener() -> bool:
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return False
    register_heif_opener()
    return True


READS_HEIF = _register_heif_opener()
IMAGE_SUFFIXES = (PIL_SUFFIXES | HEIF_SUFFIXES) if READS_HEIF else PIL_SUFFIXES


def hidden(name: str) -> bool:
    """Dot files, the folder of resource forks a zip made on a Mac unpacks elsewhere (`__MACOSX/`), and the folders
    of thumbnails a Synology NAS puts beside photos (`@eaDir/`, their files named like images)."""
    return name.startswith(".") or name in ("__MACOSX", "@eaDir")


def visible_files(folder: Path) -> list[Path]:
    """Every file under `folder`, sorted, leaving out hidden ones and those in hidden folders below `folder` (where
    `folder` itself lies, e.g. under ~/.cache, does not matter). Linked folders are followed (each real folder once,
    so a link loop ends). A broken symbolic link counts as a file, and so does anything else that is no folder (a
    FIFO, a link to a device): the image check then reports it by name instead of the example vanishing
    unnoticed. A folder that cannot be listed is an error naming it: its images would vanish unnoticed too; so is
    a link to a folder above `folder`, which would read the folders beside it (other classes) as part of it.
    """
    found, seen, top = [], set(), os.path.realpath(folder)
    for directory, subdirectories, names in os.walk(folder, onerror=_unlistable, followlinks=True):
        real = os.path.realpath(directory)
        if real in seen:
            subdirectories[:] = []
            continue
        seen.add(real)
        subdirectories[:] = [d for d in subdirectories if not hidden(d)]
        for name in subdirectories:
            target = os.path.realpath(os.path.join(directory, name))
            if top.startswith(target + os.sep):
                raise UserError(f"A linked folder points to a folder above {folder}, so the folders beside it (other "
                                f"classes) would be read as part of it; remove the link. Received: "
                                f"path={os.path.join(directory, name)!r} -> {target!r}")
        found += [Path(directory, n) for n in names if not hidden(n)]  # os.walk lists folders apart
    return sorted(found)


def _unlistable(error: OSError):
    if isinstance(error, FileNotFoundError):  # no such folder (a split the data does not have): nothing in it
        return
    raise UserError(f"Cannot list a data folder ({error.strerror}): the images in it would be left out; make it "
                    f"readable or move it away. Received: path={error.filename!r}") from None


def named_like_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def describe_left_out(names) -> str:
    """"3 files not named like images (.xmp 2, .nef 1), e.g. train/a/DSC_0001.NEF": what was left out, counted."""
    names = list(names)
    kinds = collections.Counter(Path(n).suffix.lower() or "no extension" for n in names)
    counts = ", ".join(f"{kind} {n}" for kind, n in kinds.most_common())
    advice = f" ({HEIF_EXTRA_ADVICE})" if HEIF_SUFFIXES & kinds.keys() else ""
    return f"{len(names)} file{'s' * (len(names) != 1)} not named like images ({counts}), e.g. {names[0]}{advice}"


def _broken_link(path: Path) -> bool:
    return path.is_symlink() and not path.exists()


def _empty(path: Path) -> bool:
    """A regular file of no bytes (a copy or download that never finished); PIL would only say it cannot identify it."""
    try:
        return path.is_file() and path.stat().st_size == 0
    except OSError:
        return False


def _special_kind(path: Path) -> str | None:
    """What a path that is there but no regular file is ("a FIFO", "a character device", ...); None for a regular
    file or a folder. Opening a FIFO waits for a writer, and a device never ends: such a path is never read."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"))
    return next((kind for test, kind in kinds if test(mode)), None)


def check_image(path: str | Path, size: int | None = None) -> tuple[str | None, Fingerprint | None]:
    """Decodes one image file exactly as every command will (`decode_image_file` for `size`) and fingerprints it.

    Returns:
        (None, a `copies.Fingerprint`: a digest of the file's bytes and a thumbnail of its pixels) when it decodes
        to a non-empty image; else (the reason, e.g. "OSError: image file is truncated", None).
    """
    image, reason = try_decode(path, size)
    if reason is None and (image.shape[0] < 1 or image.shape[1] < 1):
        reason = f"empty image of size {image.shape[1::-1]}"
    if reason is not None:
        return reason, None
    return None, fingerprint(path, image)


def fingerprint(path: str | Path, image: np.ndarray) -> Fingerprint:
    """The `copies.Fingerprint` of the file at `path`, whose decoded pixels are `image`."""
    return Fingerprint(file_digest(path), thumbnail(image))  # the file just read by the decoder: from the page cache


def file_digest(path: str | Path) -> str:
    """A digest of the file's bytes (BLAKE2b, 16 bytes, in hex), read 1 MiB at a time."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def try_decode(path: str | Path, size: int | None = None) -> tuple[np.ndarray | None, str | None]:
    """`decode_image_file`, failures returned: (pixels, None), or (None, "ErrorType: message")."""
    if _broken_link(Path(path)):
        return None, f"broken symbolic link to {os.readlink(path)}"
    if _empty(Path(path)):
        return None, "empty file (0 bytes)"
    _apply_pixel_limit()  # a bad setting is the user's error, not every file's
    try:
        return decode_image_file(path, size), None
    except Exception as error:  # noqa: BLE001  (PIL raises OSError, SyntaxError, ValueError, ...)
        return None, describe_error(error)


def describe_error(error: Exception) -> str:
    """"ErrorType: message" for a file that does not decode, with what to do where the user can do something."""
    text = f"{type(error).__name__}: {error}"
    if isinstance(error, Image.DecompressionBombError):
        text += f" (for your own large images, raise the limit: {MAX_PIXELS_ENV}=PIXELS)"
    return text


@functools.cache
def _apply_pixel_limit() -> None:
    """Sets PIL's limit from `MAX_PIXELS_ENV`, once per process (PIL's default where it is not set)."""
    value = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not value:
        return
    try:
        limit = float(value)
    except ValueError:
        limit = 0.0
    if not limit >= 1:
        raise UserError(f"{MAX_PIXELS_ENV} must be a number of pixels, e.g. 400000000. "
                        f"Received: {MAX_PIXELS_ENV}={value!r}")
    Image.MAX_IMAGE_PIXELS = math.ceil(limit / 2)  # PIL refuses above twice this
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def decode_image_file(path: str | Path, size: int | None = None) -> np.ndarray:
    """The one image decoder of ich_keras (check, fit, evaluation, soups, analysis, predict): PIL, to
    (height, width, 3) uint8 RGB, whatever the format and mode (palette, 1-bit, 16-bit, CMYK, RGBA, ...).

    One decoder because TensorFlow's differs: it returns palette indices for 8-bit BMPs, fails on 1-bit BMPs, and
    its JPEG IDCT and chroma upsampling round pixels differently from PIL's (what a deployment usually uses).
    A photo's EXIF orientation is applied, so a phone picture taken upright is seen upright, as any viewer shows it.

    Args:
        path: the image file.
        size: the side the image is resized to next, or None for its full size. An image at least
            2 x `REDUCED_DECODE_MARGIN` times larger on both sides comes back smaller, both sides still at least
            `REDUCED_DECODE_MARGIN` times it: a JPEG decoded at a reduced scale, then any image box-averaged. Every
            scale reads and decodes the whole file, so a damaged one fails either way.
    """
    _apply_pixel_limit()
    special = _special_kind(Path(path))
    if special:
        raise OSError(f"not a regular file but {special}, so it is not read")
    if not READS_HEIF and Path(path).suffix.lower() in HEIF_SUFFIXES:
        raise UserError(f"Cannot read a HEIC/HEIF photo here: {HEIF_EXTRA_ADVICE}. Received: path={str(path)!r}")
    with Image.open(path) as image:
        if size is not None:
            image.draft(None, (REDUCED_DECODE_MARGIN * size,) * 2)  # only JPEGs take a draft; others ignore it
        with DECODE_MEMORY.hold(_decode_bytes(image)):
            image.load()  # decodes everything: a truncated file fails here
            rgb = _rgb(image)
            turn = _UPRIGHT.get(image.getexif().get(ExifTags.Base.Orientation, 1))
            if turn is not None:  # after the conversion: one RGB copy turned, whatever the mode decoded
                rgb = rgb.transpose(turn)
            return np.asarray(rgb if size is None else _reduced(rgb, size))


def _decode_bytes(image: Image.Image) -> int:
    """What decoding `image` (opened, drafted, not loaded) holds at its peak, at most: PIL's decoded image and the
    RGB copy made from it, and a 32-bit image's copies as numbers too (measured at 4-17 bytes a pixel,
    `benchmarks/scan_decode.py`)."""
    per_pixel = 20 if image.mode in ("I", "F") else 16
    return image.width * image.height * per_pixel


def _reduced(image: Image.Image, size: int) -> Image.Image:
    """`image` shrunk by the largest whole factor that keeps both sides >= `REDUCED_DECODE_MARGIN` * size, each new
    pixel the mean of a box of the old ones; `image` itself where that factor is 1."""
    factor = min(image.size) // (REDUCED_DECODE_MARGIN * size)
    if factor < 2:
        return image
    # A box filter over the whole extent, not `Image.reduce`: that one keeps a last, partial box, which shifts and
    # stretches the picture by up to factor - 1 pixels.
    return image.resize((image.width // factor, image.height // factor), Image.BOX)


def _rgb(image: Image.Image) -> Image.Image:
    """A decoded image of any mode as an RGB one (itself when it is RGB already)."""
    if image.mode in SIXTEEN_BIT_MODES:
        # 16-bit grayscale: 0..65535 scaled to 0..255 instead of PIL's clipping convert("RGB"), by a lookup.
        levels = np.asarray(image)
        if image.mode == "I":  # 32-bit integers: what lies outside 16 bits maps to black or white
            levels = np.clip(levels, 0, 65535)
        return _gray_image(_SIXTEEN_TO_EIGHT_BITS[levels])
    if image.mode == "F":
        # Float images (32-bit TIFFs from scanning or HDR software) mostly hold 0..1, some 0..255: scaled by which.
        gray = np.nan_to_num(np.array(image, dtype=np.float64), copy=False)
        if gray.max(initial=0.0) <= 1.0:
            gray *= 255.0
        np.rint(gray, out=gray)  # in place: a scan's copies are hundreds of megabytes each
        np.clip(gray, 0, 255, out=gray)
        return _gray_image(gray.astype(np.uint8))
    return image if image.mode == "RGB" else image.convert("RGB")


def _gray_image(gray: np.ndarray) -> Image.Image:
    """(h, w) uint8 gray levels -> an RGB image with the gray in every channel."""
    return Image.fromarray(gray).convert("RGB")
