"""Where a soup came from: `provenance.json` beside its weights.

It names the method and its parameters, each ingredient (label, path relative to the run directory, sha256), W0 if
the method used one (and how its arrays of another image size were resized), and the versions of ich_keras, keras,
jax and numpy, so a soup can be traced back to the exact files and rerun.
"""

from __future__ import annotations

import hashlib
import os
from importlib import metadata
from pathlib import Path

PACKAGES = ("ich_keras", "keras", "jax", "numpy")
_LISTED = 4  # ingredients results.md names; provenance.json lists them all
# A MonoSoup's record: "root" as a path from the soups folder its folder lies in, so it moves with the run.
ROOT_FROM_SOUPS = "root_from_soups"


def sha256(path: str | os.PathLike, cache: dict | None = None) -> str:
    """The file's sha256 in hex, read 4 MiB at a time; `cache` ({path: digest}) spares rereading a file."""
    key = str(Path(path).resolve())
    if cache is not None and key in cache:
        return cache[key]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    if cache is not None:
        cache[key] = digest.hexdigest()
    return digest.hexdigest()


def package_versions() -> dict[str, str]:
    """{package: installed version} for `PACKAGES` ("not installed" when absent)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def relative(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """`path` relative to `root` (with `..` where it lies outside), POSIX-style."""
    return Path(os.path.relpath(Path(path).resolve(), Path(root).resolve())).as_posix()


def describe_file(path, root, cache: dict | None = None) -> dict:
    """{"path": relative to `root`, "sha256"} of one weights file."""
    return {"path": relative(path, root), "sha256": sha256(path, cache)}


def inside_or_absolute(path, root) -> str:
    """`path` relative to `root` where it lies inside it (it moves with the run), else its absolute path (a file
    elsewhere stays where it is when the run moves, whatever the run's new depth)."""
    resolved = Path(path).resolve()
    return relative(resolved, root) if resolved.is_relative_to(Path(root).resolve()) else resolved.as_posix()


def provenance(method: str, parameters: dict, names, paths, root, pretrained=None, cache: dict | None = None,
               resized=()) -> dict:
    """The provenance record of one soup.

    Args:
        method: the method's name ("uniform", "model_stock", ...).
        parameters: its parameters (JSON-ready).
        names: each ingredient's label ("epoch_007.weights.h5", or "run/epoch_007" across runs).
        paths: each ingredient's file.
        root: the directory paths are given relative to (the run directory, or the runs' common parent); recorded
            as its absolute path.
        pretrained: W0's file, if the method used one (relative to `root` where it lies inside it, else absolute).
        cache: {path: sha256} shared between the soups of one command.
        resized: how W0's arrays of another image size were resized to the ingredients' before use
            (`init_weights.resized_to`'s notes).

    Returns:
        {"method", "parameters", "root", "ingredients": [{"name", "path", "sha256"}], "pretrained": {"path",
        "sha256", and "resized": [notes] when it was} or None, "versions"}.
    """
    w0 = None
    if pretrained:
        w0 = {"path": inside_or_absolute(pretrained, root), "sha256": sha256(pretrained, cache),
              **({"resized": list(resized)} if resized else {})}
    return {
        "method": method,
        "parameters": parameters,
        "root": Path(root).resolve().as_posix(),  # not as typed: that depends on the working directory
        "ingredients": [{"name": name, **describe_file(path, root, cache)} for name, path in zip(names, paths)],
        "pretrained": w0,
        "versions": package_versions(),
    }


def summary(record: dict) -> str:
    """One markdown line saying where a soup came from (for results.md)."""
    ingredients = record["ingredients"]
    digests = ", ".join(f"`{i['name']}` {i['sha256'][:12]}" for i in ingredients[:_LISTED])
    if len(ingredients) > _LISTED:
        digests += f", ... ({len(ingredients) - _LISTED} more in the file)"
    w0 = record.get("pretrained")
    w0_text = ""
    if w0:
        resized = "".join(f", {note}" for note in w0.get("resized", []))
        w0_text = f"; W0 `{w0['path']}` (sha256 {w0['sha256'][:12]}{resized})"
    parameters = ", ".join(f"{k}={v}" for k, v in record["parameters"].items()) or "none"
    versions = ", ".join(f"{k} {v}" for k, v in record["versions"].items())
    return (f"Provenance (`provenance.json`): {record['method']} with parameters {parameters}; "
            f"{len(ingredients)} ingredient{'s' * (len(ingredients) != 1)} under `{record['root']}` (sha256 "
            f"prefixes: {digests}){w0_text}; "
            f"{versions}.")
