"""Text in the markdown pipe tables the commands write, and read back by the HTML report.

A cell holds a user's name (a class folder, a run directory): a `|` in it would end the cell early and shift every
column after it, so it is written as `\\|` (GitHub's rule, also inside code spans) and read back as `|`.
"""

from __future__ import annotations

import re

_UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")


def cell(text) -> str:
    """`text` as one table cell: pipes escaped, line breaks as spaces."""
    return " ".join(str(text).splitlines()).replace("|", "\\|")


def row_cells(line: str) -> list[str]:
    """The cells of one table row `| a | b\\|c |` as written by `cell`: ["a", "b|c"]."""
    inner = line.strip().removeprefix("|").removesuffix("|")
    return [part.strip().replace("\\|", "|") for part in _UNESCAPED_PIPE.split(inner)]


def percent(value: float) -> str:
    """A fraction as the tables show it: 0.98327 -> "98.33"."""
    return f"{100 * value:.2f}"
