#!/usr/bin/env bash
# Sets up .venv with tokensched and every extra that runs on this machine.
# torch is pinned to the CPU build (2.13.0); an unpinned torch pulls GBs of CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev,server,bench,flashinfer,cluster,kv-events]"
