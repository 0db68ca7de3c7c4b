"""One schema for every config: dataclass annotations decide what each field accepts.

`build(cls, data, "train")` checks a plain mapping (a resolved hydra node) against the type hints
of dataclass `cls` -- `int`, `float`, `bool`, `str`, `Optional`, `Literal`, `list`/`tuple`/`dict`
and nested dataclasses, tagged ones (a `registry` class attribute, e.g. `MixerOptions`,
`TaskConfig`) resolved to the registered subclass their `name` picks -- then constructs it and runs
its `validate()` (the semantic rules). The first bad value stops with a `ConfigError` whose one-line
message names the field, the value and what it should be. Pure Python (no torch).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Type, TypeVar, Union

from kvshift_lens.core.errors import ConfigError, ConfigTypeError
from kvshift_lens.core.registry import resolve

T = TypeVar("T")
__all__ = ["ConfigError", "build", "convert", "describe"]


def build(cls: Type[T], data: Any, where: str, upgrade: Optional[Callable[[dict], dict]] = None) -> T:
    """Instance of dataclass `cls` from `data` (a mapping; a bare name for a tagged class), fields named
    `<where>.<field>` in errors. `upgrade` maps a legacy layout of `data` to the current one first."""
    if isinstance(data, cls):  # already built (e.g. a nested config passed as an object)
        return data
    cls, data = resolve(cls, data, where)  # a tagged base picks its registered subclass by `name`
    if upgrade is not None:
        data = upgrade(data)
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    known = {f.name for f in fields}
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise ConfigError(f"unknown field(s) {[_join(where, k) for k in unknown]}; valid: {sorted(known)}")
    kwargs = {}
    for f in fields:
        if f.name in data:
            kwargs[f.name] = convert(hints[f.name], data[f.name], _join(where, f.name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_join(where, f.name)} is missing: set {_join(where, f.name)}=<value>")
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a dataclass whose __post_init__ rejects a combination without naming it
        raise ConfigError(f"{where}: {e}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def convert(tp: Any, value: Any, where: str) -> Any:
    """`value` checked against annotation `tp` (and converted: int -> float, integral float -> int)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Union:
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options:
            try:
                return convert(option, value, where)
            except ConfigTypeError:
                continue
            except ConfigError:  # the right kind of value, but not acceptable (e.g. nan): say why
                if len(options) == 1:
                    raise
        raise _mismatch(tp, value, where)
    if origin is Literal:
        if value in args and any(type(value) is type(a) for a in args if a == value):
            return value
        raise ConfigError(f"{where}={value!r}: expected one of {list(args)}")
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if origin in (list, tuple, Sequence):
        if not isinstance(value, (list, tuple)):
            raise _mismatch(tp, value, where)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise _mismatch(tp, value, where)
            return tuple(convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise _mismatch(tp, value, where)
        item = args[1] if len(args) == 2 else Any
        return {k: convert(item, v, _join(where, k)) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{where}={value!r}: expected a finite number")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # hydra parses `name=2024` as a number
    elif tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise _mismatch(tp, value, where)


def describe(tp: Any) -> str:
    """What annotation `tp` accepts, in words ("an integer", "true or false", ...)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union:
        return " or ".join(describe(a) for a in args if a is not type(None)) + (
            " or null" if type(None) in args else "")
    if origin is Literal:
        return f"one of {list(args)}"
    if dataclasses.is_dataclass(tp):
        return "a config group"
    if origin in (list, tuple, Sequence):
        item = describe(args[0]) if args else "a value"
        return f"a list (each item {item})"
    if origin in (dict, Mapping):
        return "a mapping"
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path"}
    return words.get(tp, getattr(tp, "__name__", str(tp)))


def _mismatch(tp: Any, value: Any, where: str) -> ConfigError:
    got = "null" if value is None else type(value).__name__
    return ConfigTypeError(f"{where}={value!r}: expected {describe(tp)}, got {got}")


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)
