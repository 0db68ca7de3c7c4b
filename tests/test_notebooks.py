"""Every notebooks/*.ipynb executes top to bottom, in the venv's kernel, within its time budget."""

import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
BUDGET_S = 90  # per notebook, 1 torch thread


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes_in_the_venv_within_budget(path):
    nb = nbformat.read(path, as_version=4)
    guard = f"import sys\nassert sys.prefix == {sys.prefix!r}, sys.executable  # the venv's kernel"
    nb.cells.insert(0, nbformat.v4.new_code_cell(guard))
    client = NotebookClient(nb, kernel_name="python3", timeout=BUDGET_S * 2,
                            resources={"metadata": {"path": str(path.parent)}})
    started = time.perf_counter()
    client.execute()
    assert time.perf_counter() - started < BUDGET_S
