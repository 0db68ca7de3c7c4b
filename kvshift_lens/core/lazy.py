"""Lazy package namespaces: a package lists `name -> module` and each name is imported on first use, so
light modules (configs, the sweeper's) import without torch or transformer_lens, and `dir()` / tab
completion still show every export."""

from __future__ import annotations

import importlib
import types
import warnings
from typing import Any, Callable, Mapping


def lazy_namespace(package: str, namespace: dict[str, Any], exports: Mapping[str, str],
                   moved: Mapping[str, str] = {}) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`: `exports` maps a name to the module that defines it;
    `moved` maps an old name of this namespace to its new `module` (it still works, with a DeprecationWarning)."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        if name in moved:
            warnings.warn(f"{package}.{name} moved to {moved[name]}.{name}; import it from there",
                          DeprecationWarning, stacklevel=2)
            return getattr(importlib.import_module(moved[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:  # the exports and the subpackages, not the helpers the namespace imported
        subpackages = {n for n, v in namespace.items() if getattr(v, "__name__", "").startswith(package + ".")
                       and isinstance(v, types.ModuleType)}
        return sorted(set(exports) | subpackages | {"__doc__", "__name__", "__path__"})

    return __getattr__, __dir__
