#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the default test suite: fast tests only, CPU, no downloads.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow` for the slow tests.
# Tests run in TEST_WORKERS processes (pytest-xdist; default 2, the CI machine's cores; 0 runs them in this one).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${VENV:-.venv}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# OpenMP threads that spin-wait slow every CPU op 10-20x when another process shares the cores
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
exec "$VENV/bin/python" -m pytest -n "${TEST_WORKERS:-2}" "$@"
