"""The fonts a figure's text is drawn with: matplotlib's DejaVu Sans, then installed fonts for what it lacks.

Class names of a heritage collection are often Chinese, Japanese, Korean or Devanagari. matplotlib draws a character
only from the font families it is given, and its default list holds Latin fonts, so an installed Noto Sans CJK goes
unused and the names become boxes. `families(texts)` adds, for the characters DejaVu Sans lacks, the installed fonts
that have them (matplotlib then takes each character from the first family that has it). Characters no installed
font has are named once, in place of matplotlib's warning for every glyph of every figure.
"""

from __future__ import annotations

import functools
import sys
import unicodedata

BASE = "DejaVu Sans"
# matplotlib's own last resort draws a box for every character: it never makes a name readable.
_NOT_A_FALLBACK = ("Last Resort",)
_warned: set[int] = set()


@functools.cache
def _charmap(path: str) -> frozenset[int]:
    """The code points the font file at `path` has a glyph for (none if it cannot be read)."""
    from matplotlib import ft2font

    try:
        return frozenset(ft2font.FT2Font(path).get_charmap())
    except (OSError, RuntimeError, ValueError):
        return frozenset()


@functools.cache
def _installed() -> tuple[tuple[str, str], ...]:
    """(family, file) of each installed font family matplotlib knows, its regular face where it has one."""
    from matplotlib import font_manager

    faces = {}
    for entry in sorted(font_manager.fontManager.ttflist, key=lambda e: (e.name, e.style != "normal",
                                                                         abs(_weight(e.weight) - 400))):
        if entry.name != BASE and not entry.name.startswith(_NOT_A_FALLBACK):
            faces.setdefault(entry.name, entry.fname)
    return tuple(faces.items())


def _weight(weight) -> int:
    from matplotlib import font_manager

    return weight if isinstance(weight, int) else font_manager.weight_dict.get(weight, 400)


def missing(texts) -> set[int]:
    """The code points of `texts` that DejaVu Sans has no glyph for (spaces, controls and format characters such as
    the zero-width joiner aside: they draw nothing)."""
    from matplotlib import font_manager

    wanted = {ord(c) for text in texts for c in text if not c.isspace() and unicodedata.category(c) not in ("Cc", "Cf")}
    return wanted - _charmap(font_manager.findfont(BASE, fallback_to_default=True))


def families(texts) -> tuple[str, ...]:
    """DejaVu Sans, then the fewest installed families (greedily, most characters first) that have the characters
    of `texts` it lacks. Characters none has are named once on stderr."""
    needed = missing(texts)
    chosen = []
    candidates = list(_installed()) if needed else []
    while needed and candidates:
        name, path = max(candidates, key=lambda candidate: len(needed & _charmap(candidate[1])))
        covered = needed & _charmap(path)
        if not covered:
            break
        chosen.append(name)
        needed -= covered
        candidates.remove((name, path))
    _note_unreadable(needed)
    return (BASE, *chosen)


def _note_unreadable(code_points: set[int]) -> None:
    new = sorted(code_points - _warned)
    if not new:
        return
    _warned.update(new)
    shown = "".join(chr(c) for c in new[:20]) + (" …" if len(new) > 20 else "")
    print(f"[figures] no installed font has {len(new)} character(s) of the names: {shown}; the figures draw them "
          f"as boxes (the tables and report.md have them). Install a font that has them, e.g. Noto Sans CJK "
          f"(fonts-noto-cjk) for Chinese, Japanese and Korean, then delete matplotlib's font cache "
          f"(~/.cache/matplotlib).", file=sys.stderr)
