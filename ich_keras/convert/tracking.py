"""A state dict that remembers what a converter used, so a forgotten tensor is an error rather than a silent init.

Usage, for any converter from a timm / torch state dict (numpy arrays in torch layout) to a Keras model:

    sd = TrackedStateDict(state_dict)
    sd.assign(layer.kernel, "stem.conv1.weight", conv_kernel)   # read, transform, shape-check, assign
    sd.port_weight(layer.gamma, "stem.bn1.weight")              # the same, with keras-hub's loader signature
    x = sd.take("blocks.0.attn.rel_pos.table")                  # read only (marks the key used)
    sd.check_complete(model.weights)                            # ValueError listing unused keys / unset weights

`port_weight(keras_variable, hf_weight_key, hook_fn=None)` is the interface keras-hub's converters call on their
loader (the timm converters of `ich_keras._keras_compat`), so an instance can be handed to them directly.
Variables are tracked by identity; messages name them by `variable.path`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np

from ich_keras.errors import UserError

# Transforms a torch-layout array into the Keras layout (e.g. conv OIHW -> HWIO); the identity when None.
Transform = Callable[[np.ndarray], np.ndarray]


def conv_kernel(x: np.ndarray) -> np.ndarray:
    """torch Conv2d weight (out, in, kh, kw) -> Keras Conv2D kernel (kh, kw, in, out)."""
    return np.transpose(x, (2, 3, 1, 0))


def dense_kernel(x: np.ndarray) -> np.ndarray:
    """torch Linear weight (out, in) -> Keras Dense kernel (in, out)."""
    return np.transpose(x)


def listing(names: list[str], limit: int = 12) -> str:
    """The first `limit` names, comma-separated, and how many more: a deeper variant leaves hundreds over."""
    shown = ", ".join(names[:limit])
    return f"{shown}, ... ({len(names) - limit} more)" if len(names) > limit else shown


def check_keys(keys: Iterable[str], expected: Iterable[str], model_name: str) -> None:
    """Raises a UserError listing the tensors with no place in `model_name` and the expected ones that are missing.

    Args:
        keys: the checkpoint's tensor names.
        expected: the names the model needs, in their order.
        model_name: named in the message.
    """
    keys, expected = list(keys), list(expected)
    known, given = set(expected), set(keys)
    unexpected = [k for k in keys if k not in known]
    missing = [k for k in expected if k not in given]
    if unexpected or missing:
        raise UserError(
            f"The checkpoint does not fit {model_name}: is it of another architecture? "
            f"{len(unexpected)} checkpoint tensors have no place in the model: [{listing(unexpected)}]; "
            f"{len(missing)} model weights have no tensor in the checkpoint: [{listing(missing)}]"
        )


class TrackedStateDict:
    """A read-only view of a state dict that records which keys were read and which Keras variables were set.

    Args:
        state_dict: tensor name -> array, in torch layout. Not modified.
    """

    def __init__(self, state_dict: Mapping[str, np.ndarray]):
        self._tensors = dict(state_dict)
        self._used: set[str] = set()
        self._assigned: dict[int, str] = {}  # id(variable) -> the key it came from

    def keys(self) -> list[str]:
        """All tensor names, used or not."""
        return list(self._tensors)

    def take(self, key: str) -> np.ndarray:
        """Returns tensor `key` as a numpy array and marks it used; reading a key twice is allowed (tied weights).

        Args:
            key: a state-dict key.

        Returns:
            The array, as stored (torch layout).
        """
        if key not in self._tensors:
            raise UserError(f"The state dict has no tensor {key!r}. Received: key={key!r}")
        self._used.add(key)
        return np.asarray(self._tensors[key])

    def assign(self, variable, key: str, transform: Transform | None = None) -> None:
        """Sets Keras `variable` from tensor `key`, after `transform`; the shapes must match exactly.

        Args:
            variable: a `keras.Variable` of the model being filled.
            key: the state-dict key to read.
            transform: maps the torch-layout array to the variable's layout; None keeps it as it is.
        """
        value = self.take(key)
        if transform is not None:
            value = transform(value)
        if tuple(value.shape) != tuple(variable.shape):
            raise UserError(
                f"Shape mismatch setting {variable.path} {tuple(variable.shape)} from {key!r}. "
                f"Received: {tuple(value.shape)} after transform"
            )
        if id(variable) in self._assigned:
            # Two keys for one variable means the mapping is wrong somewhere, even if the last one wins.
            raise ValueError(
                f"{variable.path} is set twice: from {self._assigned[id(variable)]!r} and now {key!r}. "
                f"Received: key={key!r}"
            )
        variable.assign(value.astype(variable.dtype))
        self._assigned[id(variable)] = key

    def port_weight(self, keras_variable, hf_weight_key: str, hook_fn=None) -> None:
        """keras-hub's loader interface: like `assign`, but `hook_fn(array, target_shape)` takes the shape too."""
        shape = list(keras_variable.shape)
        self.assign(keras_variable, hf_weight_key, None if hook_fn is None else (lambda x: hook_fn(x, shape)))

    def unused_keys(self) -> list[str]:
        """State-dict keys never read, in state-dict order."""
        return [k for k in self._tensors if k not in self._used]

    def unassigned(self, variables: Iterable) -> list:
        """The variables among `variables` that were never set."""
        return [v for v in variables if id(v) not in self._assigned]

    def check_complete(self, variables: Iterable) -> None:
        """Raises ValueError naming every unused state-dict key and every variable of `variables` left unset.

        Args:
            variables: the Keras variables that must all have been set, usually `model.weights` (minus any the
                caller leaves at their fresh init on purpose, such as a new head).
        """
        unused = self.unused_keys()
        unset = [v.path for v in self.unassigned(variables)]
        if unused or unset:
            raise UserError(
                "Conversion is incomplete. "
                f"Received: {len(unused)} unused state-dict keys [{listing(unused)}], "
                f"{len(unset)} model weights left unset [{listing(unset)}]"
            )
