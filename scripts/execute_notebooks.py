"""Execute notebooks/*.ipynb in place with this interpreter's kernel, so the committed notebooks show
their outputs (`make notebooks`). Runs from scratch: the notebooks' shared runs/notebooks is cleared first.

    python scripts/execute_notebooks.py [NAME ...]    # default: every notebook, in name order
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SHARED_RUNS = ROOT / "runs" / "notebooks"  # notebooks 02 and 03 train into it and reuse each other's runs
CELL_TIMEOUT_S = 900  # hang guard per cell


def execute(path: Path) -> float:
    """Run one notebook top to bottom and write it back with its outputs; returns wall seconds."""
    nb = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT_S, record_timing=False,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, path)
    return time.perf_counter() - started


def main(names: list[str]) -> None:
    paths = [NOTEBOOKS / n for n in names] if names else sorted(NOTEBOOKS.glob("*.ipynb"))
    shutil.rmtree(SHARED_RUNS, ignore_errors=True)
    total = time.perf_counter()
    for path in paths:
        print(f"{path.name}: {execute(path):.0f} s", flush=True)
    print(f"all notebooks: {time.perf_counter() - total:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
