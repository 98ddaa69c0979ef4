"""docs/config.md names every config key and recipe key with the default the code has."""

import dataclasses
import re
from pathlib import Path

import pytest

from ich_keras.analysis.runner import AnalysisOptions
from ich_keras.config import Config, config_to_dict, tomllib
from ich_keras.soups.runner import SoupOptions

PAGE = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def _rows() -> dict[str, dict[str, str]]:
    """{table: {key: its default cell}} of the page's tables, by the heading or header row that names the table."""
    rows, table = {}, None
    for line in PAGE.read_text(encoding="utf-8").splitlines():
        heading = re.match(r"## \[(\w+)\]", line) or re.match(r"\| \[(\w+)\] key \|", line)
        if heading:
            table = heading.group(1)
        elif table and (row := re.match(r"\| `(\w+)` \| (.+?) \|", line)):
            rows.setdefault(table, {})[row.group(1)] = row.group(2)
    return rows


def _toml(cell: str):
    """The value of a default cell written as one TOML value in backticks (None for prose)."""
    code = re.fullmatch(r"`([^`]+)`", cell.strip())
    return tomllib.loads(f"value = {code.group(1)}")["value"] if code else None


def _as_toml(value):
    """A default as TOML reads it back (tuples are arrays)."""
    return [_as_toml(v) for v in value] if isinstance(value, tuple | list) else value


@pytest.mark.parametrize("table", [f.name for f in dataclasses.fields(Config)])
def test_every_training_key_is_documented_with_its_default(table):
    defaults = config_to_dict(Config())[table]
    documented = _rows().get(table, {})
    assert set(documented) == set(defaults), f"[{table}]: missing {set(defaults) - set(documented)}, stale " \
                                             f"{set(documented) - set(defaults)}"
    for key, cell in documented.items():
        assert _toml(cell) == _as_toml(defaults[key]), f"{table}.{key}: documented {cell}, the code has " \
                                                       f"{defaults[key]!r}"


@pytest.mark.parametrize(("table", "options"), [("soup", SoupOptions), ("analysis", AnalysisOptions)])
def test_every_recipe_key_is_documented_with_its_default(table, options):
    defaults = {f.name: getattr(options(), f.name) for f in dataclasses.fields(options)}
    documented = _rows().get(table, {})
    assert set(documented) == set(defaults)
    for key, cell in documented.items():
        value = _toml(cell.split(" (")[0])  # "`32` (the run's ...)": the value, then prose
        if value is not None:
            assert value == _as_toml(defaults[key]), f"{table}.{key}: documented {cell}, the code has {defaults[key]!r}"
