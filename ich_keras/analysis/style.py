"""How every analysis figure looks: one matplotlib style, one look per kind of model, one way to save.

Every figure function is wrapped in `styled`, so the style applies inside it only (a user's own matplotlib settings
stay untouched), and draws a model with `look(name, kind)`, so a method has the same colour, marker and dash in
every figure. Colours are the Okabe–Ito palette (readable with the common colour-vision deficiencies).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import numpy as np

from ich_keras import atomic
from ich_keras.analysis import fonts

# Figure and saved pixels are the same (savefig.dpi "figure"): label placement measures text in display pixels.
DPI = 130
RC = {
    "figure.dpi": DPI,
    "savefig.dpi": "figure",
    "savefig.facecolor": "white",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.6,
}
INGREDIENT_COLOR = "#7f7f7f"
# BN-recalibrated soups ("uniform+bn") keep their method's colour but get this dash and hollow markers.
BN_DASH = (0, (1.2, 1.6))


@dataclasses.dataclass(frozen=True)
class Look:
    """How one model is drawn: colour, marker, its size (points²) and line dash; hollow markers when not filled."""

    color: str
    marker: str
    size: float
    dash: object
    filled: bool = True

    def scatter(self) -> dict:
        """Keyword arguments for `Axes.scatter`."""
        face = self.color if self.filled else "white"
        return dict(marker=self.marker, s=self.size, facecolors=face, edgecolors="black" if self.filled else
                    self.color, linewidths=0.6 if self.filled else 1.6)

    def line(self) -> dict:
        """Keyword arguments for `Axes.plot` of a line with markers."""
        return dict(color=self.color, linestyle=self.dash, marker=self.marker, markersize=self.size ** 0.5 * 0.75,
                    markerfacecolor=self.color if self.filled else "white", markeredgecolor=self.color)


METHODS = {
    "ingredient": Look(INGREDIENT_COLOR, "o", 45, "-"),
    "uniform": Look("#0072B2", "s", 95, "-"),
    "greedy": Look("#D55E00", "*", 190, (0, (6, 2))),
    "pruned": Look("#E69F00", "v", 95, (0, (4, 1.5, 1, 1.5))),
    "learned": Look("#009E73", "P", 110, (0, (8, 2, 2, 2))),
    "soft_voting": Look("#CC79A7", "D", 80, (0, (3, 2))),
    "monosoup": Look("#56B4E9", "X", 110, (0, (10, 3))),
    # The merges from W0 (soup cook --model-stock ... --slerp): beyond Okabe-Ito's eight colours, so each also has
    # its own marker and dash (Paul Tol's muted colours).
    "model_stock": Look("#882255", "h", 110, (0, (2, 1))),
    "task_arithmetic": Look("#117733", "p", 105, (0, (7, 1.5, 1.5, 1.5, 1.5, 1.5))),
    "ties": Look("#AA4499", "<", 95, (0, (1, 3))),
    "dare": Look("#999933", ">", 95, (0, (9, 1.5, 3, 1.5))),
    "slerp": Look("#44AA99", "d", 95, (0, (2, 2, 6, 2))),
    # any other soup
    "soup": Look("#332288", "^", 95, (0, (5, 1, 1, 1, 1, 1))),
}


def method_of(name: str) -> str:
    """The method a model name belongs to: "monosoup_variance" -> "monosoup", "uniform+bn" -> "uniform"."""
    base = name.split("+")[0]
    return base if base in METHODS else base.split("_")[0]


def look(name: str, kind: str) -> Look:
    """The `Look` of a model: ingredients alike, each method its own, "<method>+bn" hollow and dotted."""
    if kind == "ingredient":
        return METHODS["ingredient"]
    base = METHODS.get(method_of(name), METHODS["soup"])
    if name.endswith("+bn"):
        return dataclasses.replace(base, dash=BN_DASH, filled=False)
    return base


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def styled(function):
    """Runs a figure function under the module's rc settings, leaving the global ones as they were, with fonts that
    draw every text it is given (`fonts.families`; class names in any script)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        import matplotlib

        pyplot()
        families = fonts.families(_texts([args, kwargs]))
        with matplotlib.rc_context({**RC, "font.family": list(families)}), warnings.catch_warnings():
            # A character no font has is named once by `fonts`, not once per glyph and figure.
            warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font")
            return function(*args, **kwargs)

    return wrapper


def _texts(value, depth: int = 0):
    """The strings in a figure function's arguments: names, titles, the keys of dicts of numbers."""
    if isinstance(value, str):
        yield value
    elif depth < 4 and isinstance(value, dict):
        for key, item in value.items():
            yield from _texts(key, depth + 1)
            yield from _texts(item, depth + 1)
    elif depth < 4 and isinstance(value, (list, tuple)):
        for item in value:
            yield from _texts(item, depth + 1)
    elif isinstance(value, np.ndarray) and value.dtype.kind == "U":
        yield from value.ravel().tolist()


def save(figure, path) -> None:
    """Writes `figure` to `path` as PNG atomically (cropped to its content) and closes it."""
    with atomic.atomic_path(path, suffix=".png") as temp:
        figure.savefig(temp, bbox_inches="tight", pad_inches=0.08, format="png")
    pyplot().close(figure)
