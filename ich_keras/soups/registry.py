"""Every soup method by name, in the order the cook command's flags and Table IV list them: its label, what it
needs, and the parameters it records in provenance.json (which `analyze` reads back to cook it again).

    registry.known(["greedy", "uniform"], "methods")   # -> ("uniform", "greedy"); a UserError names an unknown one
    registry.parameters("ties", options, 4)            # -> {"density": 0.2, "lambda": 1.0}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ich_keras.errors import UserError


@dataclass(frozen=True)
class Method:
    """One soup method."""

    label: str  # its row in Table IV
    merge: bool = False  # cooked by `merges.cook` (from W0, or SLERP) rather than chosen or averaged on val
    needs_pretrained: bool = False  # merges from W0
    min_ingredients: int = 1
    # provenance.json "parameters" key -> `SoupOptions` field: what the soup records and `recorded` reads back
    parameters: Mapping[str, str] = field(default_factory=dict)
    combines: str = ""  # a merge: how it combines its {n} ingredients, in the words of its results.md


TABLE = {
    "uniform": Method("Uniform soup"),
    "greedy": Method("Greedy soup"),
    "pruned": Method("Pruned soup"),
    # The batch size shapes what the learned soup finds: recorded with it.
    "learned": Method("Learned soup", parameters={"epochs": "learned_epochs", "learning_rate": "learned_learning_rate",
                                                  "batch_size": "batch_size"}),
    "model_stock": Method("Model Stock", merge=True, needs_pretrained=True, min_ingredients=2,
                          combines="Model Stock of {n} fine-tunes from W0: per tensor t = N cos / (1 + (N - 1) cos)"),
    "task_arithmetic": Method("Task arithmetic", merge=True, needs_pretrained=True, parameters={"lambda": "lam"},
                              combines="task arithmetic of {n} fine-tunes: W0 + lambda sum of task vectors"),
    "ties": Method("TIES", merge=True, needs_pretrained=True, parameters={"density": "ties_density", "lambda": "lam"},
                   combines="TIES of {n} fine-tunes: trim, elect sign, disjoint mean, W0 + lambda merged"),
    "dare": Method("DARE", merge=True, needs_pretrained=True,
                   parameters={"rate": "dare_rate", "seed": "dare_seed", "lambda": "lam"},
                   combines="DARE of {n} fine-tunes: drop and rescale each task vector, W0 + lambda sum"),
    "slerp": Method("SLERP", merge=True, min_ingredients=2, parameters={"t": "slerp_t"},
                    combines="SLERP between the two best ingredients on val"),
    "soft_voting": Method("Soft voting"),
}
METHODS = tuple(TABLE)
LABELS = {name: method.label for name, method in TABLE.items()}
MERGES = tuple(name for name, method in TABLE.items() if method.merge)
NEEDS_PRETRAINED = tuple(name for name, method in TABLE.items() if method.needs_pretrained)


def known(methods, given_as: str) -> tuple[str, ...]:
    """`methods` in `METHODS` order; a UserError naming the unknown ones and where they were given (`given_as`,
    e.g. "methods" or "--soup")."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UserError(f"Unknown soup method(s) {unknown}; the methods are {', '.join(METHODS)}. "
                        f"Received: {given_as}={list(methods)}")
    return tuple(m for m in METHODS if m in methods)


def default_lambda(method: str, n: int) -> float:
    """The scale of task arithmetic, TIES or DARE without --lambda, for `n` ingredients: 1/N (TIES: 1)."""
    return 1.0 if method == "ties" else 1.0 / n


def parameters(method: str, options, n: int) -> dict:
    """{provenance key: value} of the method's recorded parameters as `options` (a `SoupOptions`) set them, lambda
    resolved to its default for `n` ingredients."""
    values = {key: getattr(options, name) for key, name in TABLE[method].parameters.items()}
    if "lambda" in values and values["lambda"] is None:
        values["lambda"] = default_lambda(method, n)
    return values
