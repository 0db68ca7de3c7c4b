"""Name -> class registries for the plug-in parts (mixers, tasks).

A *tagged* dataclass base (`MixerOptions`, `TaskConfig`) carries a `registry` class attribute; a
field annotated with it, or `kvshift_lens.core.schema.build(Base, data)`, picks the registered subclass
named by `data["name"]` (`resolve`). A bare string stands for "that name with default options".
`import_plugins` imports the user's modules that register their own (`plugins=[my_pkg.my_mixer]`). Torch-free.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Generic, Mapping, Optional, Sequence, Type, TypeVar

from kvshift_lens.core.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named subclasses of one config base; `register` is a class decorator."""

    def __init__(self, kind: str, group: str) -> None:
        self.kind, self.group = kind, group  # e.g. "mixer", "model.mixer"
        self._classes: dict[str, type] = {}

    def register(self, cls: Type[T]) -> Type[T]:
        """Register `cls` under the default of its `name` field (a class decorator)."""
        name = {f.name: f.default for f in dataclasses.fields(cls)}.get("name")
        if not isinstance(name, str) or not name:
            raise TypeError(f"{cls.__name__} needs a `name: str` field whose default is its registered name")
        if name in self._classes and self._classes[name] is not cls:
            raise ValueError(f"a {self.kind} named {name!r} is already registered ({self._classes[name].__name__})")
        self._classes[name] = cls
        return cls

    def unregister(self, name: str) -> None:
        """Remove a registration (tests that register toy classes clean up with this)."""
        self._classes.pop(name, None)

    def get(self, name: Any) -> type:
        """The class registered as `name`, or a one-line `ConfigError` listing the valid names."""
        if name not in self._classes:
            raise ConfigError(f"{self.group}.name={name!r} is not a known {self.kind}; use one of {self.names()}, "
                              f"or import the module that registers it (plugins=[my_pkg.my_{self.kind}])")
        return self._classes[name]

    def names(self) -> list[str]:
        return sorted(self._classes)

    def __contains__(self, name: object) -> bool:
        return name in self._classes


def resolve(cls: type, data: Any, group: str) -> tuple[type, dict]:
    """(concrete class, field dict) for `data` under `cls`: a tagged class picks its subclass by `name`."""
    registry: Optional[Registry] = getattr(cls, "registry", None)
    if isinstance(data, str) and registry is not None:
        data = {"name": data}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{group}={data!r} must be a mapping of fields (or a name, for a choice such as a mixer)")
    data = dict(data)
    if registry is not None:
        default = {f.name: f.default for f in dataclasses.fields(cls)}.get("name")
        name = data.get("name", default)
        if not isinstance(name, str):
            raise ConfigError(f"{group} has no `name`; set {group}.name to one of {registry.names()}")
        concrete = registry.get(name)
        if not issubclass(concrete, cls):
            raise ConfigError(f"{group}.name={name!r} is a {registry.kind} but not a {cls.__name__}")
        cls = concrete
    return cls, data


def import_plugins(modules: Sequence[str]) -> None:
    """Import each module (dotted name) so the mixers and tasks it registers exist before a config names them."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"plugins: cannot import {name!r} ({e}); put its folder on PYTHONPATH "
                              f"(or pip install it) and give its dotted module name") from None
