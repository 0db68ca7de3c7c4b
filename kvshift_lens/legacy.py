"""The module paths of the flat layout before the subpackages (`kvshift_lens.detect`, `kvshift_lens.train`,
...), still importable for one release: each resolves to its new home with a DeprecationWarning naming it.

A finder on `sys.meta_path` answers only the names in `MOVED`; the module it returns forwards every
attribute to the new module(s), so old code runs unchanged while new code imports the new paths."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Any, Optional, Sequence

MOVED: dict[str, tuple[str, ...]] = {
    "errors": ("core.errors",), "registry": ("core.registry",), "schema": ("core.schema",),
    "model_config": ("models.config",), "mixers": ("models.mixers",), "checkpoints": ("models.checkpoints",),
    "tokenizer": ("models.vocab_tokenizer", "models.transformer"),
    "tasks": ("data.tasks",), "corpora": ("data.corpora",), "tokenization": ("data.text_tokenizers",),
    "icl": ("data.icl",),
    "train_config": ("training.train_config",), "config": ("training.run_config",), "cli": ("training.cli",),
    "train": ("training.trainer", "training.resume", "training.train_config", "core.errors"),
    "sweeps": ("training.sweeps", "report.markdown"), "provenance": ("training.provenance",),
    "detect": ("analysis.head_detectors",), "circuits": ("analysis.circuits",),
    "emergence": ("analysis.emergence", "analysis.run_detection"), "lm": ("analysis.lm_heads",),
    "theory": ("analysis.theory",), "plots": ("analysis.attention_plots",),
    "report.plots": ("report.figures",), "report.lm": ("report.lm_claims",),
}
PACKAGES = {"tasks": "data.tasks", "mixers": "models.mixers"}  # old packages: their submodules moved along
PREFIX = "kvshift_lens."


def new_homes(fullname: str) -> Optional[tuple[str, ...]]:
    """The new module(s) of an old dotted module name, or None if the name did not move."""
    if not fullname.startswith(PREFIX):
        return None
    old = fullname[len(PREFIX):]
    if old in MOVED:
        return tuple(PREFIX + m for m in MOVED[old])
    head, _, rest = old.partition(".")
    if head in PACKAGES and rest:
        return (f"{PREFIX}{PACKAGES[head]}.{rest}",)
    return None


class MovedModule(types.ModuleType):
    """An old module path: attribute access reads the first new module that defines the name."""

    def __init__(self, name: str, homes: Sequence[str]) -> None:
        super().__init__(name, f"moved to {', '.join(homes)}")
        self._homes = [importlib.import_module(h) for h in homes]
        if any(hasattr(h, "__path__") for h in self._homes):
            self.__path__: list[str] = []  # lets the old package's submodules be imported through it

    def __getattr__(self, name: str) -> Any:
        for home in self._homes:
            if hasattr(home, name):
                return getattr(home, name)
        raise AttributeError(f"module {self.__name__!r} (moved to {self._homes[0].__name__}) has no attribute {name!r}")

    def __dir__(self) -> list[str]:
        return sorted({n for h in self._homes for n in dir(h)})


class MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old module paths in `MOVED` (and the old packages' submodules) and loads them as `MovedModule`."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Optional[importlib.machinery.ModuleSpec]:
        homes = new_homes(fullname)
        return None if homes is None else importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        homes = new_homes(spec.name)
        warnings.warn(f"{spec.name} moved to {homes[0]} in the subpackage layout (docs/architecture.md); "
                      f"import it from there", DeprecationWarning, stacklevel=3)
        return MovedModule(spec.name, homes)

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def install() -> None:
    """Put the finder ahead of the path finders (once)."""
    if not any(isinstance(f, MovedFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, MovedFinder())
