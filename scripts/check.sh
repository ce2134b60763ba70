#!/usr/bin/env bash
# Every check CI runs: ruff, mypy --strict on the packages, the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check tokensched executors
.venv/bin/mypy --strict tokensched executors/tokensched_sim executors/tokensched_torch executors/tokensched_flashinfer
.venv/bin/python -c "import tokensched, sys; assert 'torch' not in sys.modules, 'import tokensched pulled in torch'"
.venv/bin/python -m pytest -q "$@"
