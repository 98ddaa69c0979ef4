"""Copies of one picture in a dataset: identical files, and near copies (re-encoded, resized, recoloured, mirrored).

The data check leaves a `Fingerprint` of every image: a digest of the file's bytes and a thumbnail, the image's
16 x 16 gray averages made zero-mean and of unit length, so that the dot product of two thumbnails is their
correlation, blind to brightness and contrast. Two files are copies when their bytes are the same or their
`similarity` is at least `NEAR_COPY_CORRELATION`: the thumbnails' correlation, or that of one with the other's mirror
image (training flips images, so a mirrored copy of a train image has been trained on too). `components` joins copies
into groups (a copy of a copy belongs to the group), and `copy_groups` keeps those in two splits (a test image also
trained on: its score is no test) or under two classes (one picture, two labels). A cropped copy is not found.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse
from PIL import Image
from scipy.sparse.csgraph import connected_components

from ich_keras.progress import Phase

THUMBNAIL_SIDE = 16
# On AHE64's photos (`benchmarks/near_copies.py`): a copy re-encoded at JPEG quality 40, resized, made 20 % brighter,
# of lower contrast or gray correlates >= 0.97 with its original; the cleaned test set's images <= 0.949 with their
# nearest train image; and of the train images' pairs from 0.95 to 0.98, all but one are the same photograph.
NEAR_COPY_CORRELATION = 0.95
# A match with the mirror image must correlate this much more: each image compared with mirror images too has twice
# the chances of a chance match, and on AHE64 the pairs that matched only mirrored, from 0.95 to 0.96, were each two
# different photographs. A mirrored copy correlates with the mirror as its unmirrored copy would with the original.
MIRRORED_MARGIN = 0.01
# A thumbnail whose gray levels spread less than this (a blank wall, a black frame) says nothing about the picture:
# its correlations are noise, so it is compared by its bytes alone.
_FLAT_STD = 1.0
# What a user whose collection is photographed in one framing (coins, objects on a plain background) can do.
NOT_COPIES_ADVICE = ("different objects photographed alike are no copies: data.near_copies = false compares files by "
                     "their bytes alone")
_BLOCK = 1024  # thumbnails compared at once: a block of similarities is 4 MB (quicker than 16 MB blocks, measured)
_QUIET_FOR_S = 5.0  # a comparison quicker than this (some 35,000 images) shows no progress


def copy_kinds(near_copies: bool) -> str:
    """What the messages call a copy under the setting data.near_copies."""
    if near_copies:
        return "identical files, or re-encoded, resized, recoloured or mirrored ones"
    return "identical files; data.near_copies = false compares bytes alone"


def copy_advice(near_copies: bool) -> str:
    """NOT_COPIES_ADVICE where near copies are looked for; nothing where only identical files count (the advice
    would name the setting already made)."""
    return NOT_COPIES_ADVICE if near_copies else ""


@dataclass(frozen=True)
class Fingerprint:
    """What the data check keeps of an image to find its copies."""

    digest: str  # of the file's bytes
    thumbnail: np.ndarray  # (THUMBNAIL_SIDE ** 2,) float32 of unit length; zeros for a flat image


def write_fingerprints(path: str | Path, fingerprints: dict[str, Fingerprint]) -> None:
    """Writes {key: `Fingerprint`} to the .npz file `path`, compactly: the keys as one NUL-separated UTF-8 string (no
    path holds a NUL), the digests as bytes, the thumbnails in float16 (correlations within 2e-4 of float32's on
    AHE64's near pairs): 528 bytes an image, plus its key."""
    keys = "\0".join(fingerprints).encode("utf-8", "surrogateescape")
    np.savez(path, keys=np.frombuffer(keys, np.uint8),
             digests=np.array([np.frombuffer(bytes.fromhex(f.digest), np.uint8) for f in fingerprints.values()]),
             thumbnails=np.stack([f.thumbnail for f in fingerprints.values()]).astype(np.float16))


def read_fingerprints(path: str | Path) -> dict[str, Fingerprint]:
    """What `write_fingerprints` wrote to `path`."""
    with np.load(path, allow_pickle=False) as stored:  # plain arrays: nothing is unpickled
        keys = stored["keys"].tobytes().decode("utf-8", "surrogateescape").split("\0")
        return {key: Fingerprint(digest.tobytes().hex(), thumbnail.astype(np.float32))
                for key, digest, thumbnail in zip(keys, stored["digests"], stored["thumbnails"])}


def thumbnail(image: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 RGB -> its gray `THUMBNAIL_SIDE`-square box averages, zero-mean and of unit length, flattened
    to (THUMBNAIL_SIDE ** 2,) float32; zeros where they spread less than `_FLAT_STD` gray levels."""
    # Averaged as floats (mode F), not rounded to PIL's 8-bit levels: a 64 px image's boxes are only 4 x 4 pixels.
    gray = Image.fromarray(image).convert("L").convert("F").resize((THUMBNAIL_SIDE,) * 2, Image.BOX)
    levels = np.asarray(gray, dtype=np.float32).reshape(-1)
    levels = levels - levels.mean()
    spread = float(np.sqrt(np.mean(levels ** 2)))
    if spread < _FLAT_STD:
        return np.zeros_like(levels)
    return levels / (spread * np.sqrt(levels.size))


def mirrored(thumbnails: np.ndarray) -> np.ndarray:
    """(..., THUMBNAIL_SIDE ** 2) thumbnails -> those of the images' horizontal mirrors (a box average commutes with
    the mirror: box k of the mirror image covers the pixels of box side - 1 - k)."""
    grid = thumbnails.reshape(*thumbnails.shape[:-1], THUMBNAIL_SIDE, THUMBNAIL_SIDE)  # (..., rows, columns)
    return grid[..., ::-1].reshape(thumbnails.shape)


def similarity(queries: np.ndarray, thumbnails: np.ndarray) -> np.ndarray:
    """(m, d) and (n, d) thumbnails -> (m, n): each pair's correlation, or where it is larger, that of the query with
    the other's mirror image less `MIRRORED_MARGIN`. Copies are at least `NEAR_COPY_CORRELATION`."""
    similar = queries @ thumbnails.T
    with_mirror = queries @ mirrored(thumbnails).T
    with_mirror -= MIRRORED_MARGIN  # in place: each (m, n) array written is one more to fault in
    return np.maximum(similar, with_mirror, out=similar)


def near_copy_pairs(thumbnails: np.ndarray, threshold: float = NEAR_COPY_CORRELATION, block: int = _BLOCK,
                    progress: bool = False) -> np.ndarray:
    """(pairs, 2) int64 indices i < j of the rows of `thumbnails` ((n, d) unit vectors) whose `similarity` is at
    least `threshold`, `block` rows against `block` rows at a time: O(n^2 d) time, O(block^2) memory. With `progress`, a
    comparison that takes more than a few seconds (some 35,000 images and more) shows its count on stderr."""
    blocks = -(-len(thumbnails) // block)
    phase = Phase("data", blocks * (blocks + 1) // 2, progress, min_interval_s=10.0, quiet_for_s=_QUIET_FOR_S)
    pairs = []
    for start in range(0, len(thumbnails), block):
        rows = thumbnails[start:start + block]
        for other in range(start, len(thumbnails), block):
            phase.step("comparing the images' thumbnails for near copies")
            similar = similarity(rows, thumbnails[other:other + block])
            i, j = np.nonzero(similar >= threshold)
            i, j = i + start, j + other
            pairs.append(np.stack([i[i < j], j[i < j]], axis=1))
    return np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)


def components(fingerprints: dict[str, Fingerprint], near_copies: bool = True,
               progress: bool = False) -> dict[str, int]:
    """{key: its group of copies} for the images of `fingerprints` ({key: `Fingerprint`}): keys with identical bytes
    or (with `near_copies`) `similarity` >= `NEAR_COPY_CORRELATION` share a group, and so do copies of
    copies. `progress`: as for `near_copy_pairs`."""
    if not fingerprints:
        return {}
    first_with_digest = {}  # identical bytes: each file is joined to the first file of its digest
    edges = [(first_with_digest.setdefault(f.digest, i), i) for i, f in enumerate(fingerprints.values())]
    if near_copies:
        thumbnails = np.stack([f.thumbnail for f in fingerprints.values()])
        edges = np.concatenate([near_copy_pairs(thumbnails, progress=progress), edges])
    edges = np.asarray(edges)
    n = len(fingerprints)
    graph = scipy.sparse.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    return dict(zip(fingerprints, connected_components(graph, directed=False)[1].tolist()))


def copies_in(reference: dict[str, Fingerprint], fingerprints, near_copies: bool = True) -> list[str]:
    """For each of `fingerprints` (a sequence of `Fingerprint`), the key of a `reference` image it is a copy of: one
    with the same bytes, else (with `near_copies`) the most similar one at or above `NEAR_COPY_CORRELATION`;
    "" where there is none."""
    keys = list(reference)
    by_digest = {f.digest: key for key, f in reference.items()}
    found = [by_digest.get(f.digest, "") for f in fingerprints]
    if near_copies and keys and len(fingerprints):
        thumbnails = np.stack([f.thumbnail for f in reference.values()]).astype(np.float32)
        for start in range(0, len(fingerprints), _BLOCK):
            queries = np.stack([f.thumbnail for f in fingerprints[start:start + _BLOCK]])
            similar = similarity(queries, thumbnails)  # (block, reference images)
            best = similar.argmax(axis=1)
            for i, j in enumerate(best):
                if not found[start + i] and similar[i, j] >= NEAR_COPY_CORRELATION:
                    found[start + i] = keys[j]
    return found


def copy_groups(keys, splits, labels, group_of: dict[str, int]) -> tuple[tuple[str, ...], ...]:
    """Groups of keys holding copies of one picture that sit in two splits or under two classes.

    Args:
        keys, splits, labels: one entry per image, parallel sequences (key, split name, class label).
        group_of: {key: its group of copies} (`components`); keys not in it have no copies.

    Returns:
        Each group's keys sorted, the groups sorted by their first key. Copies within one class of one split are
        left alone (a photographer's series is no leak).
    """
    members = collections.defaultdict(list)
    for key, split, label in zip(keys, splits, labels):
        if key in group_of:
            members[group_of[key]].append((key, split, label))
    groups = [group for group in members.values()
              if len({split for _, split, _ in group}) > 1 or len({label for _, _, label in group}) > 1]
    return tuple(sorted(tuple(sorted(key for key, _, _ in group)) for group in groups))


def note_on_test_copies(keys) -> str:
    """What a reader of test scores is told when the test images `keys` have a copy in train (none: "")."""
    if not keys:
        return ""
    return (f"**{len(keys)} test image(s) have a copy in train** (`same_images.txt`, e.g. `{keys[0]}`): they are "
            f"scored here, but what training saw is no test; remove the copies for a clean comparison.")
