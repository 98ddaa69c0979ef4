"""A sweep's grid as pure functions: `--grid section.key=[v1,v2]` parsed, expanded, named and sharded.

    grid = parse_grids(["train.learning_rate=[1e-4,3e-5]", "train.seed=[0,1]"])
    points = expand(grid)   # 4 points, the last key varying fastest
    points[1].name          # 'learning_rate=0.0001,seed=1': the point's run directory under the sweep directory
    points[1].overrides     # ['train.learning_rate=0.0001', 'train.seed=1']: --set strings for load_config

A name depends only on the point's values (not on the spelling in the grid: `1e-4` and `0.0001` give the same
directory), so a sweep started again finds its runs. `python -m ich_keras.sweep` (ich_keras/sweep.py) runs them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from pathlib import Path

from ich_keras import cli
from ich_keras.config import override_key, parse_value
from ich_keras.errors import UserError

SWEEP_FILE = "sweep.json"  # in the sweep directory: the config, --set, grid and points
MAX_NAME = 120  # a directory name stays well under the 255 bytes filesystems allow
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


@dataclasses.dataclass(frozen=True)
class Point:
    """One point of the grid: its index in grid order, its directory name and its {section.key: value}."""

    index: int
    name: str
    values: dict

    @property
    def overrides(self) -> list[str]:
        """The point as `section.key=value` overrides (the value as a TOML literal) for `config.load_config`."""
        return [f"{key}={json.dumps(value)}" for key, value in self.values.items()]


def parse_grid(spec: str) -> tuple[str, list]:
    """Parses one `--grid section.key=[v1, v2, ...]`.

    The list is TOML (`[1e-4, 3e-5]`, `["a", "b"]`); bare words are strings (`[coatnet_tiny, resnet50]`).

    Returns:
        (key, values).

    Raises:
        UserError naming the spec: no `=`, a key that is not section.key, a value that is not a list, an empty
        list, a repeated value.
    """
    if "=" not in spec:
        raise UserError(f"A grid must look like section.key=[v1,v2]. Received: --grid {spec!r}")
    key, text = (part.strip() for part in spec.split("=", 1))
    if len(key.split(".")) != 2 or not all(key.split(".")):
        raise UserError(f"A grid key must be section.key (e.g. train.learning_rate). Received: --grid {spec!r}")
    if not (text.startswith("[") and text.endswith("]")):
        raise UserError(f"A grid value must be a list [v1,v2]. Received: --grid {spec!r}")
    values = parse_value(text)
    if isinstance(values, str):  # not TOML: a list of bare words, e.g. [coatnet_tiny, resnet50]
        inner = text[1:-1].strip()
        values = [parse_value(item.strip()) for item in inner.split(",")] if inner else []
    if not values:
        raise UserError(f"A grid list is empty: the sweep would have no point. Received: --grid {spec!r}")
    texts = [json.dumps(v, sort_keys=True) for v in values]
    if len(set(texts)) != len(texts):
        raise UserError(f"A grid list repeats a value. Received: --grid {spec!r}")
    return key, values


def parse_grids(specs) -> dict[str, list]:
    """Parses every `--grid`, in order; a key given twice is a UserError naming it."""
    grid = {}
    for spec in specs:
        key, values = parse_grid(spec)
        if key in grid:
            raise UserError(f"A grid key is given twice; list all its values in one --grid. Received: key={key!r}")
        grid[key] = values
    return grid


def format_value(value) -> str:
    """A value as it appears in a directory name: short, stable and filesystem-safe (`3e-05` -> `3e-5`)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return re.sub(r"e([+-])0*(\d)", lambda m: f"e{m.group(1).replace('+', '')}{m.group(2)}", repr(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "+".join(format_value(v) for v in value) or "empty"
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return _UNSAFE.sub("-", text).strip(".-") or "empty"


def short_keys(keys) -> dict[str, str]:
    """{section.key: how the name shows it}: the key alone, or section.key where two sections share the key."""
    names = [key.split(".")[1] for key in keys]
    return {key: name if names.count(name) == 1 else key for key, name in zip(keys, names)}


def point_name(values: dict, shown: dict[str, str]) -> str:
    """The directory name of a point, e.g. `learning_rate=0.0001,seed=0` (a hash tail if it would be too long)."""
    name = ",".join(f"{shown[key]}={format_value(value)}" for key, value in values.items())
    if len(name) > MAX_NAME:
        name = f"{name[:MAX_NAME - 9]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name


def expand(grid: dict[str, list]) -> list[Point]:
    """The cartesian product of the grid, the first key varying slowest.

    Raises:
        UserError when two points would share a directory name (values that differ only in unsafe characters).
    """
    shown = short_keys(list(grid))
    points, seen = [], {}
    for index, combination in enumerate(itertools.product(*grid.values())):
        values = dict(zip(grid, combination))
        point = Point(index, point_name(values, shown), values)
        if point.name in seen:
            raise UserError(f"Two grid points would share the run directory {point.name!r}; make their values "
                            f"differ in letters or digits. Received: {seen[point.name]} and {values}")
        seen[point.name] = values
        points.append(point)
    return points


def parse_shard(text: str) -> tuple[int, int]:
    """`I/N` -> (I, N), 0 <= I < N; anything else is a UserError naming it."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not int(match.group(1)) < int(match.group(2)):
        raise UserError(f"--shard must be I/N with 0 <= I < N (e.g. 0/4). Received: --shard {text!r}")
    return int(match.group(1)), int(match.group(2))


def select(points: list[Point], only: int | None = None, shard: tuple[int, int] | None = None) -> list[Point]:
    """The points one process runs: all, the one with index `only`, or every N-th from I (`shard` = (I, N))."""
    if only is not None:
        if not 0 <= only < len(points):
            raise UserError(f"--only must be a point index from 0 to {len(points) - 1}. Received: --only {only}")
        return [points[only]]
    if shard is not None:
        first, count = shard
        return points[first::count]
    return list(points)


def run_status(directory: Path) -> str:
    """What a point's run directory needs: "done" (results.json), "resume" (a saved state) or "start"."""
    from ich_keras import resume  # the training modules load only when a run is looked at

    if (directory / "results.json").is_file():
        return "done"
    if (directory / resume.STATE_FILE).is_file():
        return "resume"
    return "start"


def shard_commands(argv: list[str], devices: list[str]) -> list[tuple[dict, list[str]]]:
    """The sub-processes of `--parallel`: one shard per device, each seeing only its own.

    Args:
        argv: the sweep's own arguments (with --parallel, which is dropped).
        devices: the device ids to hand out (CUDA_VISIBLE_DEVICES values).

    Returns:
        [(environment additions, arguments)], shard I of N on devices[I], soups left to the parent.
    """
    base = [arg for arg in argv if arg != "--parallel"]
    count = len(devices)
    return [({"CUDA_VISIBLE_DEVICES": device}, [*base, "--shard", f"{i}/{count}", "--no-soup"])
            for i, device in enumerate(devices)]


def _passed_to_cook(key: str) -> bool:
    """Whether a sweep's --set key reaches its soups: their recipe, and where the runs' images are now."""
    return key.startswith("soup.") or key == "data.source"


def cook_argv(config: str, sets: list[str], methods, directories: list[Path], output: Path, quiet: bool) -> list:
    """The `python -m ich_keras.soup` arguments of the soups across the runs."""
    argv = ["cook", "--runs", *map(str, directories), "--output", str(output / "soups"), "--config", config]
    argv += [arg for s in sets if _passed_to_cook(override_key(s)) for arg in ("--set", s)]
    argv += [cli.flag(m) for m in methods or ()]
    return [*argv, "--quiet"] if quiet else argv
