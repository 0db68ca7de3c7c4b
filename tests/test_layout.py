"""The package follows the data and imports run one way: report -> analysis -> training -> models | data -> core.

Parsed with the standard library's `ast` (every import statement, including those inside functions and
`TYPE_CHECKING` blocks), so a lazy import that hides a cycle fails here too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kvshift_lens"
# a layer may import its own modules and any layer of a lower rank; models and data are siblings
RANK = {"core": 0, "models": 1, "data": 1, "training": 2, "analysis": 3, "report": 4}
FRONT = 5  # the package's own front door (kvshift_lens/__init__.py, api, legacy): may import anything


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> tuple[str, int]:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in RANK:
        return parts[1], RANK[parts[1]]
    return "front", FRONT


def imports_of(path: Path) -> set[str]:
    """Every kvshift_lens module `path` imports (`from a import b` counts `a.b` when that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("kvshift_lens")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kvshift_lens") and node.level == 0:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in MODULES else node.module)
    return found


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {m: imports_of(p) for m, p in MODULES.items()}


def upward_imports() -> list[str]:
    bad = []
    for module, targets in GRAPH.items():
        (name, rank) = layer(module)
        for target in targets:
            (tname, trank) = layer(target)
            if tname != name and (trank > rank or (trank == rank and rank != FRONT)):
                bad.append(f"{module} -> {target}")
    return sorted(bad)


def cycles() -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan), or a module importing itself."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH.get(v, ()):
            if w not in MODULES:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in GRAPH.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(MODULES):
        if v not in index:
            visit(v)
    return out


def test_every_import_inside_the_package_names_a_module_that_exists():
    assert sorted({t for targets in GRAPH.values() for t in targets} - set(MODULES)) == []


def test_no_module_imports_a_higher_layer_or_a_sibling_layer():
    assert upward_imports() == []


def test_the_package_has_no_import_cycle():
    assert cycles() == []


def test_the_checker_sees_an_upward_import_and_a_cycle():
    saved = {k: set(v) for k, v in GRAPH.items()}
    try:
        GRAPH["kvshift_lens.models.transformer"].add("kvshift_lens.analysis.head_detectors")
        GRAPH["kvshift_lens.analysis.head_detectors"].add("kvshift_lens.models.transformer")
        assert "kvshift_lens.models.transformer -> kvshift_lens.analysis.head_detectors" in upward_imports()
        assert ["kvshift_lens.analysis.head_detectors", "kvshift_lens.models.transformer"] in cycles()
    finally:
        GRAPH.clear()
        GRAPH.update(saved)


def test_no_two_sibling_modules_differ_only_by_a_suffix():
    for folder in {p.parent for p in MODULES.values()}:
        stems = sorted(p.stem for p in folder.glob("*.py") if p.stem != "__init__")
        for a in stems:
            for b in stems:
                assert a == b or not b.startswith(a), f"{folder}: {a}.py beside {b}.py"


@pytest.mark.parametrize("old, new, name", [
    ("kvshift_lens.detect", "kvshift_lens.analysis.head_detectors", "head_scores"),
    ("kvshift_lens.train", "kvshift_lens.training.trainer", "train"),
    ("kvshift_lens.tasks.mqar", "kvshift_lens.data.tasks.mqar", "MQARConfig"),
    ("kvshift_lens.mixers.kv_shift", "kvshift_lens.models.mixers.kv_shift", "KVShift"),
    ("kvshift_lens.report.plots", "kvshift_lens.report.figures", "plot_curves"),
])
def test_a_flat_layout_module_path_still_imports_with_a_warning_naming_its_new_home(old, new, name):
    import importlib
    import sys

    import kvshift_lens

    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
        module = importlib.import_module(old)
    assert getattr(module, name) is getattr(importlib.import_module(new), name)
    if "train" in kvshift_lens.__all__:
        assert not isinstance(kvshift_lens.train, type(module))  # the exported function survives the old module path


def test_the_old_analysis_loaders_warn_and_name_training_runs():
    import kvshift_lens.analysis as A
    from kvshift_lens.training.runs import load_runs

    with pytest.warns(DeprecationWarning, match="kvshift_lens.analysis.load_runs moved to kvshift_lens.training.runs"):
        assert A.load_runs is load_runs
