#!/usr/bin/env bash
# Check setup.py's lower bounds: install the lowest supported diffusers / transformers / peft /
# pytorch-lightning / omegaconf (scripts/lowest-versions.txt, pinned with ==) into a scratch venv with
# CPU torch and the plugin's test extras, print what got installed, and run the tests that exercise
# those libraries. Extra arguments go to pytest, e.g. `bash scripts/test_lowest_versions.sh -x`.
# Usage: bash scripts/test_lowest_versions.sh     (creates or reuses ./.venv-lowest; VENV=path for another,
#        LOWEST=file for another pin set, e.g. threestudio's transformers==4.28.1 / omegaconf==2.3.0)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-lowest}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
LOWEST=${LOWEST:-scripts/lowest-versions.txt}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"

pip_install() {
  # torch stays pinned in every call: an unpinned torch pulls the CUDA build (gigabytes). The filter
  # drops this machine's index warnings; a failing pip still fails the script (pipefail).
  "$PY" -m pip install -q --disable-pip-version-check "$@" "$TORCH_SPEC" 2>&1 | { grep -v "is ignored" || true; }
}
pip_install
# -r: the pins are requirements, so the co-constraints (setuptools, huggingface-hub) apply even to
# packages already in the venv, and an install fails if setup.py's floors exclude a pinned version;
# -c: the same pins also hold for anything pulled in as a dependency.
pip_install -e ".[test]" -r "$LOWEST" -c "$LOWEST"
"$PY" -m pip check --disable-pip-version-check

# the installed versions; fail unless every == pin is what got installed
"$PY" - "$LOWEST" <<'EOF'
import re
import sys
from importlib.metadata import PackageNotFoundError, version

from packaging.requirements import Requirement

wrong = []
names = []
for line in open(sys.argv[1], encoding="utf-8"):
    spec = line.split("#", 1)[0].strip()
    if not spec:
        continue
    req = Requirement(spec)
    names.append(req.name)
    try:
        installed = version(req.name)
    except PackageNotFoundError:
        installed = None
    if installed is None or not req.specifier.contains(installed, prereleases=True):
        wrong.append(f"{spec} (installed: {installed})")
    print(f"  {req.name:<20} {installed or '-':<12} ({spec})")
for name in ("torch", "tokenizers", "accelerate", "torchmetrics", "numpy"):
    if name not in names:
        try:
            print(f"  {name:<20} {version(name)}")
        except PackageNotFoundError:
            pass
if wrong:
    sys.exit(f"installed versions differ from {sys.argv[1]}: " + ", ".join(wrong))
EOF

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# OpenMP threads that spin-wait slow every CPU op 10-20x when another process shares the cores
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}

# every test folder that drives diffusers, transformers, peft, pytorch-lightning or omegaconf
# (the renderer tests and the other geometry tests use none of them)
TESTS=(tests/guidance tests/test_tiny_pipeline.py tests/system tests/host tests/toy_world tests/examples
       tests/data tests/test_configs.py tests/geometry/test_gaussian_geometry.py)
if [ -d tests/contract ]; then
  TESTS+=(tests/contract)
fi
exec "$PY" -m pytest "${TESTS[@]}" -q "$@"
