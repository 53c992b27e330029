#!/usr/bin/env bash
# Set up the project in a virtual environment: CPU torch (pinned), then the plugin with its test extras.
# Usage: bash scripts/setup.sh            (creates ./.venv; VENV=path to use another folder)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
# torch first and pinned: an unpinned torch pulls the CUDA build (gigabytes) as a dependency.
"$PY" -m pip install -q --disable-pip-version-check "$TORCH_SPEC" 2>&1 | grep -v "is ignored" || true
"$PY" -m pip install -q --disable-pip-version-check -e ".[test]" "$TORCH_SPEC" 2>&1 | grep -v "is ignored" || true
# a headless Chromium for the browser tests (lucid-report's page, and lucid-app's page driven through Playwright,
# which the test extra installs; Playwright's own browser download is not needed: the tests launch this one)
if ! command -v chromium-headless-shell >/dev/null && ! command -v chromium >/dev/null && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
  $SUDO apt-get install -y -qq chromium-headless-shell >/dev/null 2>&1 \
    || { $SUDO apt-get update -qq >/dev/null 2>&1 && $SUDO apt-get install -y -qq chromium-headless-shell >/dev/null 2>&1; } \
    || echo "setup: could not install chromium-headless-shell with apt; the report's browser check will be skipped"
fi
"$PY" -c "import torch, threestudio_lucid; print('threestudio-lucid', threestudio_lucid.__version__, '| torch', torch.__version__)"
