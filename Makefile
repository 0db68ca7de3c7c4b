# Every target bootstraps .venv first (idempotent; CPU torch wheel).
PY := .venv/bin/python
BOOT := bash scripts/bootstrap.sh

.PHONY: reproduce test bench env notebooks

env:
	@$(BOOT)

reproduce: env  ## the quick paper reproduction on CPU (results/)
	$(PY) -m experiments.reproduce

test: env  ## the test suite
	$(PY) -m pytest

bench: env  ## speed/memory benchmarks -> results/bench.json
	$(PY) -m benchmarks.run

notebooks: env  ## execute notebooks/*.ipynb in place, so they are committed with their outputs
	$(PY) scripts/execute_notebooks.py
