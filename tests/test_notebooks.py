"""Every notebooks/*.ipynb executes top to bottom in the venv's kernel (how long they take is not a test),
and plots can render in them."""

import subprocess
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


def test_importing_the_library_leaves_the_matplotlib_backend_alone():
    # a notebook's inline backend must survive importing any kvshift_lens module
    # (e.g. kvshift_lens.report.figures); otherwise plots would never render
    code = ("import importlib, pkgutil, matplotlib, kvshift_lens; matplotlib.use('svg');"
            "[importlib.import_module(m.name) for m in pkgutil.iter_modules(kvshift_lens.__path__, 'kvshift_lens.')];"
            "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
