#!/usr/bin/env bash
# Run the contract suite (tests/contract) against a real threestudio checkout and the bundled host.
# Usage: bash scripts/conformance.sh THREESTUDIO_DIR [--install] [pytest args]   e.g. ... -k "not bundled"
#   --install  first follow the README's install inside THREESTUDIO_DIR literally, in its own fresh venv
#              (scripts/install_in_threestudio.sh: threestudio's requirements, the README's lines, pip check
#              against threestudio's own, lucid-{sds,ism,vsd,esd}-cpu under launch.py; PyPI, minutes);
#              INSTALL_VENV= names that venv (default .venv-install-threestudio), INSTALL_STEPS= shortens the runs
#
# threestudio is not installed: its own launch.py runs from THREESTUDIO_DIR as a subprocess, in a
# scratch venv (default .venv-threestudio, VENV= to change) holding the plugin, its test extras and
# the pure-Python packages `import threestudio` needs. On a CPU machine scripts/threestudio_cpu/
# stands in for threestudio's GPU-only imports and patches launch.py's accelerator and get_device()
# at run time; none of threestudio's files is edited. The checkout is never copied into this repo.
set -euo pipefail
if [ $# -lt 1 ] || [ ! -f "$1/launch.py" ] || [ ! -d "$1/threestudio" ]; then
  echo "error: THREESTUDIO_DIR='${1:-}' is not a threestudio checkout (it needs launch.py and threestudio/):" \
       "pass the folder of a threestudio clone, e.g. bash scripts/conformance.sh ../threestudio" >&2
  exit 2
fi
THREESTUDIO_DIR=$(cd "$1" && pwd)
shift
cd "$(dirname "$0")/.."
PYTEST_ARGS=()
INSTALL=0
for arg in "$@"; do
  if [ "$arg" = "--install" ]; then INSTALL=1; else PYTEST_ARGS+=("$arg"); fi
done
if [ "$INSTALL" = 1 ]; then
  bash scripts/install_in_threestudio.sh "$THREESTUDIO_DIR" --venv "${INSTALL_VENV:-.venv-install-threestudio}" \
    ${INSTALL_STEPS:+--steps "$INSTALL_STEPS"}
fi
VENV=${VENV:-.venv-threestudio}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
# What `import threestudio` imports at module level beyond the plugin's own requirements (threestudio's
# requirements.txt, less the CUDA-only packages, torchvision and libigl, which the CPU shim stands in for)
THREESTUDIO_IMPORTS=(opencv-python-headless einops torchmetrics trimesh wandb typeguard tensorboard ipython scipy)
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --disable-pip-version-check "$TORCH_SPEC" 2>&1 | grep -v "is ignored" || true
"$PY" -m pip install -q --disable-pip-version-check -e ".[test]" "$TORCH_SPEC" "${THREESTUDIO_IMPORTS[@]}" 2>&1 \
  | grep -v "is ignored" || true
COMMIT=${THREESTUDIO_COMMIT:-$(git -C "$THREESTUDIO_DIR" rev-parse --short HEAD 2>/dev/null || echo "unknown commit")}
VERSION=$(sed -n 's/^__version__ *= *"\(.*\)"/\1/p' "$THREESTUDIO_DIR/threestudio/__init__.py")
echo "threestudio $VERSION at $COMMIT ($THREESTUDIO_DIR)"
"$PY" -c "import diffusers, transformers, peft, pytorch_lightning, torch; print('diffusers', diffusers.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__, '| pytorch-lightning', pytorch_lightning.__version__, '| torch', torch.__version__)"
export THREESTUDIO_DIR HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
exec "$PY" -m pytest tests/contract -v -rA ${PYTEST_ARGS[@]+"${PYTEST_ARGS[@]}"}
