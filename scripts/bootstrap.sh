#!/usr/bin/env bash
# Idempotent environment set-up: creates .venv (once) with the CPU torch wheel and the project.
# Re-running is cheap: it only reinstalls when pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
stamp="$VENV/.installed-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # The CPU wheel first: a bare `torch` requirement would pull a multi-GB CUDA build. These machines
    # keep it in pip's find-links (/opt/wheels); elsewhere take it from PyTorch's CPU index
    # (override with TORCH_INDEX_URL, e.g. a CUDA index on a GPU machine).
    if [ -n "${TORCH_INDEX_URL:-}" ]; then
        "$VENV/bin/python" -m pip install -q "torch==2.13.0" --index-url "$TORCH_INDEX_URL"
    elif compgen -G "/opt/wheels/torch-2.13.0*" > /dev/null; then
        "$VENV/bin/python" -m pip install -q "torch==2.13.0"
    else
        "$VENV/bin/python" -m pip install -q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
    fi
    "$VENV/bin/python" -m pip install -q -e ".[test]"
    rm -f "$VENV"/.installed-*
    touch "$stamp"
fi
