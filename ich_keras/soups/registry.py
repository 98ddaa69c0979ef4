"""Every soup method by name, in the order the cook command's flags and Table IV list them, with its table label.

    registry.known(["greedy", "uniform"], "methods")   # -> ("uniform", "greedy"); a UserError names an unknown one
"""

from __future__ import annotations

from ich_keras.errors import UserError
from ich_keras.soups import merges

METHODS = ("uniform", "greedy", "pruned", "learned", *merges.MERGES, "soft_voting")
LABELS = {"uniform": "Uniform soup", "greedy": "Greedy soup", "pruned": "Pruned soup", "learned": "Learned soup",
          **merges.LABELS, "soft_voting": "Soft voting"}


def known(methods, given_as: str) -> tuple[str, ...]:
    """`methods` in `METHODS` order; a UserError naming the unknown ones and where they were given (`given_as`,
    e.g. "methods" or "--soup")."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UserError(f"Unknown soup method(s) {unknown}; the methods are {', '.join(METHODS)}. "
                        f"Received: {given_as}={list(methods)}")
    return tuple(m for m in METHODS if m in methods)
