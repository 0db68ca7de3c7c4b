"""Every notebooks/*.ipynb executes top to bottom in the venv's kernel (how long they take is not a test)."""

import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 300  # hang guard per cell, not a speed goal


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes_top_to_bottom_in_the_venv(path):
    nb = nbformat.read(path, as_version=4)
    guard = f"import sys\nassert sys.prefix == {sys.prefix!r}, sys.executable  # the venv's kernel"
    nb.cells.insert(0, nbformat.v4.new_code_cell(guard))
    client = NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT_S,
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError naming the failing cell
