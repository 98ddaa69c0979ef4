"""Tables (parsed TOML or JSON) checked against a dataclass: every key one of its fields, every value of the field's
type, nested tables as nested dataclasses. The training config (`ich_keras.config`) and the commands' recipes
(`cli.recipe`: the [soup] and [analysis] tables) are read through it, so a misspelt key or a wrong type is an error
naming the key wherever it is written.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import types
import typing

from ich_keras.errors import UserError


def _convert(value, annotation, key: str):
    """Checks `value` (from TOML or JSON) against a field's type annotation and converts lists to tuples."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):  # `int | None`: TOML has no null, so a value is the other type
        if value is None and type(None) in typing.get_args(annotation):
            return None
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise UserError(f"Config key {key} must be a table. Received: {key}={value!r}")
        return from_table(annotation, value, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"Config key {key} must be a list. Received: {key}={value!r}")
        item_type = typing.get_args(annotation)[0]
        return tuple(_convert(item, item_type, f"{key}[{i}]") for i, item in enumerate(value))
    # bool is a subclass of int in Python; TOML keeps them apart and so do we.
    if annotation is bool:
        ok = isinstance(value, bool)
    elif annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif annotation is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
        if ok and not math.isfinite(value):  # TOML reads inf and nan: no key means either, and ranges let inf pass
            raise UserError(f"Config key {key} must be a finite number. Received: {key}={value!r}")
    elif annotation is str:
        ok = isinstance(value, str)
    else:
        raise TypeError(f"Unsupported config annotation {annotation!r} for key {key}")
    if not ok:
        raise UserError(
            f"Config key {key} must be of type {annotation.__name__}{_toml_hint(value, annotation)}. "
            f"Received: {key}={value!r} of type {type(value).__name__}"
        )
    return value


def _toml_hint(value, annotation) -> str:
    """How TOML writes the number or boolean that a text value looks like (`--set train.learning_rate=.001` and
    `augment.flip=True` are Python's spellings, which TOML reads as text)."""
    if not isinstance(value, str) or annotation not in (bool, int, float):
        return ""
    if value.strip().lower() in ("true", "false"):
        return f" (TOML writes {value.strip().lower()}, in lower case)"
    try:
        number = float(value)
    except ValueError:
        return ""
    if annotation is int:
        return f" (TOML writes it {int(number)}, without a point)" if number.is_integer() else " (a whole number)"
    return f" (TOML writes it {number!r}, with a digit on both sides of the point)"


def table_values(cls, data: dict, prefix: str = "") -> dict:
    """Checks a table's keys and value types against the fields of dataclass `cls`; returns {field: value}.

    Args:
        cls: a dataclass whose fields are the allowed keys.
        data: the table (parsed TOML or JSON).
        prefix: the table's name, for error messages (e.g. "soup").

    Returns:
        The values converted to the field types (lists to tuples); an unknown key or a wrong type raises
        `UserError` naming the key.
    """
    hints = typing.get_type_hints(cls)
    allowed = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in allowed:
            where = f"section [{prefix}]" if prefix else "the top level"
            raise UserError(
                f"Unknown config key {key!r}. Allowed keys in {where}: {', '.join(allowed)}. Received: key={key!r}"
            )
        kwargs[name] = _convert(value, hints[name], key)
    return kwargs


def from_table(cls, data: dict, prefix: str = ""):
    """Dataclass `cls` built from a table, its values checked as `table_values` checks them."""
    return cls(**table_values(cls, data, prefix))


def check_fields(obj, prefix: str = "") -> None:
    """Checks a dataclass built in Python as `from_table` checks a table, nested dataclasses included: a notebook's
    `TrainConfig(batch_size=8.0)` is an error naming train.batch_size, not a TypeError deep in TensorFlow after the
    run directory was written. What Python spells another way is taken as the field's type: a list for a tuple, a
    `Path` for text, a numpy number for a number. Frozen dataclasses are updated in place, as their
    `__post_init__` may."""
    hints = typing.get_type_hints(type(obj))
    for field in dataclasses.fields(obj):
        key = f"{prefix}.{field.name}" if prefix else field.name
        value = getattr(obj, field.name)
        checked = _checked(value, hints[field.name], key)
        if checked is not value:
            object.__setattr__(obj, field.name, checked)


def _checked(value, annotation, key: str):
    """`value` of a field built in Python, checked against its annotation and spelt as a table would give it."""
    bare = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        if value is None:
            return None
        (annotation,) = bare
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, annotation):
            raise UserError(f"Config key {key} must be a {annotation.__name__}. Received: {key}={value!r}")
        check_fields(value, key)
        return value
    if typing.get_origin(annotation) is tuple:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"Config key {key} must be a tuple. Received: {key}={value!r}")
        item_type = typing.get_args(annotation)[0]
        items = tuple(_checked(item, item_type, f"{key}[{i}]") for i, item in enumerate(value))
        return value if isinstance(value, tuple) and all(a is b for a, b in zip(items, value)) else items
    if annotation is str and isinstance(value, os.PathLike):
        return os.fspath(value)
    if annotation is bool and type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_"):
        value = bool(value)  # numpy's (`flip=images.size > 0`)
    if annotation in (int, float) and isinstance(value, numbers.Integral) and not isinstance(value, (bool, int)):
        value = int(value)  # numpy's integers: config.json could not store them
    if annotation is float and isinstance(value, numbers.Real) and not isinstance(value, (bool, int, float)):
        value = float(value)
    checked = _convert(value, annotation, key)
    return value if checked == value and type(checked) is type(value) else checked
