#!/usr/bin/env bash
# Follow the README's "Inside threestudio" install literally, in a fresh venv, and check what it gives:
#   1. threestudio's own install: torch (TORCH_SPEC, kept as installed from then on), then its
#      requirements.txt (on a torch without CUDA, less its `git+` lines: CUDA extensions built from
#      GitHub, for which scripts/threestudio_cpu stands in);
#   2. `pip check` and `pip freeze`: the baseline, what threestudio's own pins already break;
#   3. the README's install block, read from README.md at run time and run line by line in the
#      threestudio checkout, verbatim, except the two lines that fetch the plugin (`git clone ...` and
#      `LUCID=...`), which become LUCID=<this checkout>;
#   4. `pip check` again: it fails on any complaint the baseline did not have;
#   5. `import pytorch_lightning, threestudio`, the tiny pipeline (`lucid-build-tiny-sd load/tiny-sd`),
#      then one config per guidance (lucid-{sds,ism,vsd,esd}-cpu) under threestudio's own launch.py:
#      --train, then --export from its last checkpoint; one summary line each.
# On a torch without CUDA, step 5 runs with scripts/threestudio_cpu/ first on PYTHONPATH and
# LUCID_THREESTUDIO_CPU=1 (the README's "On a CPU" note); nothing of threestudio is edited. Following the
# README writes into the checkout what a user's install writes there: custom/threestudio-lucid (a link),
# load/tiny-sd and outputs/.
#
# Usage: bash scripts/install_in_threestudio.sh THREESTUDIO_DIR [--venv DIR] [--reuse] [--steps N]
#          --venv DIR   the venv to install into (default: .venv-install-threestudio in this repo). Made afresh:
#                       one this script made before is removed first; any other existing folder is refused
#          --reuse      keep the venv of an earlier run (faster; then the baseline is not a fresh one's)
#          --steps N    trainer.max_steps=N for each run (default: each config's own)
#        bash scripts/install_in_threestudio.sh --print-lines   the README block's lines, as read; no install
# Network: PyPI (a few GB the first time). Logs: DIR/install-logs/.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
README=${README:-$REPO/README.md}
MARKER="<!-- install-in-threestudio -->"
CONFIGS=(lucid-sds-cpu lucid-ism-cpu lucid-vsd-cpu lucid-esd-cpu)
PROMPT="a DSLR photo of a corgi"

fail() { echo "error: $*" >&2; exit 2; }

# The README's install block: the ```bash fence right after the marker line, up to its closing fence.
readme_lines() {
  [ -f "$README" ] || fail "$README does not exist: run the script from a checkout of threestudio-lucid"
  local lines
  lines=$(awk -v marker="$MARKER" '
    $0 == marker { seen = 1; next }
    seen == 1 { if ($0 == "```bash") { seen = 2; next } else { exit } }
    seen == 2 { if ($0 == "```") { closed = 1; exit } print }
    END { if (!closed) exit 1 }' "$README") \
    || fail "$README has no install block: put the line '$MARKER' right above the \`\`\`bash block of section 'Inside threestudio'"
  [ -n "$lines" ] || fail "$README: the \`\`\`bash block after '$MARKER' is empty"
  printf '%s\n' "$lines"
}

THREESTUDIO_DIR=""
VENV="$REPO/.venv-install-threestudio"
STEPS=""
REUSE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --print-lines) readme_lines; exit 0 ;;
    --venv) [ $# -ge 2 ] || fail "--venv needs a folder, e.g. --venv .venv-install-threestudio"; VENV=$2; shift 2 ;;
    --reuse) REUSE=1; shift ;;
    --steps)
      [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || fail "--steps needs a positive whole number (trainer.max_steps), got '${2:-}'"
      STEPS=$2; shift 2 ;;
    -*) fail "unknown option '$1': the options are --venv DIR, --reuse, --steps N and --print-lines" ;;
    *) [ -z "$THREESTUDIO_DIR" ] || fail "one THREESTUDIO_DIR only, got '$THREESTUDIO_DIR' and '$1'"; THREESTUDIO_DIR=$1; shift ;;
  esac
done
if [ -z "$THREESTUDIO_DIR" ] || [ ! -f "$THREESTUDIO_DIR/launch.py" ] \
   || [ ! -f "$THREESTUDIO_DIR/threestudio/__init__.py" ] || [ ! -f "$THREESTUDIO_DIR/requirements.txt" ]; then
  fail "THREESTUDIO_DIR='$THREESTUDIO_DIR' is not a threestudio checkout (it needs launch.py, threestudio/__init__.py and requirements.txt): pass the folder of a threestudio clone, e.g. bash scripts/install_in_threestudio.sh ../threestudio"
fi
THREESTUDIO_DIR=$(cd "$THREESTUDIO_DIR" && pwd)
LINES=$(readme_lines)
mkdir -p "$(dirname "$VENV")"
VENV=$(cd "$(dirname "$VENV")" && pwd)/$(basename "$VENV")
LOGS=$VENV/install-logs
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

# --- 1. threestudio's own install ---------------------------------------------------------------------
if [ -e "$VENV" ] && [ "$REUSE" = 0 ]; then
  [ -f "$LOGS/keep-torch.txt" ] \
    || fail "--venv $VENV exists and this script did not make it: name a new folder, or remove that one yourself"
  echo "removing the venv of an earlier run, $VENV (--reuse keeps it)"
  rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | { grep -v "is ignored" || true; }  # threestudio's README does
fi
mkdir -p "$LOGS"
export PATH="$VENV/bin:$PATH" VIRTUAL_ENV="$VENV"
unset PYTHONPATH PYTHONHOME
PY="$VENV/bin/python"
if ! "$PY" -W ignore -c "import torch" 2>/dev/null; then
  pip install -q "$TORCH_SPEC" 2>&1 | { grep -v "is ignored" || true; }
fi
# From here on nothing may replace the installed torch (an unpinned resolve pulls a CUDA build, GBs).
TORCH_VERSION=$("$PY" -W ignore -c "import torch; print(torch.__version__)" 2>/dev/null)
echo "torch==$TORCH_VERSION" > "$LOGS/keep-torch.txt"
export PIP_CONSTRAINT="$LOGS/keep-torch.txt"
CPU=$("$PY" -W ignore -c "import torch; print(int(torch.version.cuda is None))" 2>/dev/null)

# pysdf (requirements.txt) is an sdist that downloads Eigen unless it finds one, and it misreads Debian's
# Eigen 3.4.0 as unparsable; a compiler include path makes the build use it where there is no download.
if [ -d /usr/include/eigen3 ]; then
  export CPATH="/usr/include/eigen3${CPATH:+:$CPATH}"
fi

REQS="$LOGS/threestudio-requirements.txt"
if [ "$CPU" = 1 ]; then
  grep -v '^ *git+' "$THREESTUDIO_DIR/requirements.txt" > "$REQS"
  echo "torch $TORCH_VERSION has no CUDA: threestudio's requirements less their CUDA builds from git, which" \
       "scripts/threestudio_cpu stands in for:"
  grep '^ *git+' "$THREESTUDIO_DIR/requirements.txt" | sed 's/^/    left out: /' || true
else
  cp "$THREESTUDIO_DIR/requirements.txt" "$REQS"
fi
echo "\$ pip install -r requirements.txt    (log: $LOGS/threestudio-requirements.log)"
(cd "$THREESTUDIO_DIR" && pip install -r "$REQS") > "$LOGS/threestudio-requirements.log" 2>&1 || {
  tail -n 30 "$LOGS/threestudio-requirements.log" >&2
  if grep -q "Eigen/Core: No such file" "$LOGS/threestudio-requirements.log"; then
    fail "threestudio's requirements did not install: pysdf found no Eigen (apt-get install libeigen3-dev, then rerun)"
  fi
  fail "threestudio's requirements did not install (log: $LOGS/threestudio-requirements.log)"
}

# --- 2. the baseline ------------------------------------------------------------------------------------
pip list --format=freeze > "$LOGS/freeze-threestudio.txt"
pip check > "$LOGS/pip-check-threestudio.txt" 2>&1 || true
echo "what threestudio's pins installed (all: $LOGS/freeze-threestudio.txt):"
grep -i -E '^(lightning|pytorch-lightning|transformers|tokenizers|omegaconf|diffusers|huggingface.hub|accelerate|numpy|scipy|torchmetrics|torchvision|libigl|xformers|gradio|setuptools)==' \
  "$LOGS/freeze-threestudio.txt" | sed 's/^/    /'
echo "pip check after threestudio's requirements:"
sed 's/^/    /' "$LOGS/pip-check-threestudio.txt"

# --- 3. the README's lines, verbatim ------------------------------------------------------------------------
BLOCK="$LOGS/readme-lines.sh"
{
  echo "set -euo pipefail"
  echo "cd $(printf '%q' "$THREESTUDIO_DIR")"
  while IFS= read -r line; do
    case "$line" in
      "git clone "*) printf 'echo %q\n' "# (not run: $line; the plugin is this checkout)" ;;
      "LUCID="*) printf 'echo %q\n' "# (instead of: $line)"; printf 'echo %q\n' "\$ LUCID=$REPO"; printf 'LUCID=%q\n' "$REPO" ;;
      *) printf 'echo %q\n' "\$ $line"; printf '%s\n' "$line" ;;
    esac
  done <<< "$LINES"
} > "$BLOCK"
echo "the README's install lines, in $THREESTUDIO_DIR (log: $LOGS/readme-lines.log):"
if ! bash "$BLOCK" > "$LOGS/readme-lines.log" 2>&1; then
  tail -n 30 "$LOGS/readme-lines.log" >&2
  fail "a line of README.md's install block failed in $THREESTUDIO_DIR (log: $LOGS/readme-lines.log)"
fi
grep -E '^(\$ |# \(|Successfully installed|ERROR)' "$LOGS/readme-lines.log" | sed 's/^/    /'

# --- 4. pip check against the baseline ------------------------------------------------------------------------
pip list --format=freeze > "$LOGS/freeze-after-readme.txt"
pip check > "$LOGS/pip-check-after-readme.txt" 2>&1 || true
echo "pip check after the README's lines:"
sed 's/^/    /' "$LOGS/pip-check-after-readme.txt"
echo "changed by the README's lines (threestudio's -> now):"
"$PY" - "$LOGS/freeze-threestudio.txt" "$LOGS/freeze-after-readme.txt" <<'EOF'
import sys

def read(path):
    pins = {}
    for line in open(path, encoding="utf-8"):
        name, _, version = line.strip().partition("==")
        pins[name.lower()] = version
    return pins

before, after = read(sys.argv[1]), read(sys.argv[2])
for name in sorted(set(before) | set(after)):
    if before.get(name) != after.get(name):
        print(f"    {name}: {before.get(name, '-')} -> {after.get(name, '-')}")
EOF
NEW=$(grep -v -x -F -f "$LOGS/pip-check-threestudio.txt" "$LOGS/pip-check-after-readme.txt" \
      | grep -v -x "No broken requirements found." || true)
if [ -n "$NEW" ]; then
  fail "the README's install lines broke threestudio's environment: pip check now says '$(echo "$NEW" | head -n 1)' (all: $LOGS/pip-check-after-readme.txt); fix the block in README.md's 'Inside threestudio'"
fi

# --- 5. threestudio's launch.py ------------------------------------------------------------------------------
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE} PYTHONUNBUFFERED=1
export THREESTUDIO_LUCID_HOST=0
if [ "$CPU" = 1 ]; then
  export PYTHONPATH="$REPO/scripts/threestudio_cpu" LUCID_THREESTUDIO_CPU=1 THREESTUDIO_DIR
  echo "on the CPU: PYTHONPATH=scripts/threestudio_cpu LUCID_THREESTUDIO_CPU=1 (the CPU stand-ins and patches)"
fi
cd "$THREESTUDIO_DIR"
"$PY" -c "import pytorch_lightning, threestudio, diffusers, peft; print('imports: threestudio', threestudio.__version__, '| pytorch-lightning', pytorch_lightning.__version__, '| diffusers', diffusers.__version__, '| peft', peft.__version__)" \
  > "$LOGS/imports.log" 2>&1 || { tail -n 20 "$LOGS/imports.log" >&2; fail "import pytorch_lightning, threestudio fails in $VENV after the README's lines (log: $LOGS/imports.log)"; }
grep '^imports:' "$LOGS/imports.log" | sed 's/^/    /'
if [ -f load/tiny-sd/model_index.json ]; then
  echo "    load/tiny-sd: already there, used as it is"
else
  echo "\$ lucid-build-tiny-sd load/tiny-sd"
  lucid-build-tiny-sd load/tiny-sd > "$LOGS/tiny-sd.log" 2>&1 \
    || { tail -n 20 "$LOGS/tiny-sd.log" >&2; fail "lucid-build-tiny-sd load/tiny-sd failed (log: $LOGS/tiny-sd.log)"; }
fi

summarise() {  # config trial_dir -> one line: steps, last loss, Gaussians, what save/ holds
  "$PY" - "$@" <<'EOF'
import csv, glob, os, sys

config, trial = sys.argv[1], sys.argv[2]
metrics = os.path.join(trial, "csv_logs", "version_0", "metrics.csv")
rows = list(csv.DictReader(open(metrics, newline=""))) if os.path.exists(metrics) else []
def last(key):
    values = [row[key] for row in rows if row.get(key) not in (None, "")]
    return values[-1] if values else "-"
steps = max((int(row["step"]) for row in rows if row.get("step")), default=0) + 1
save = os.path.join(trial, "save")
made = sorted(os.path.relpath(p, save) for p in glob.glob(os.path.join(save, "*.ply")) + glob.glob(os.path.join(save, "*.mp4"))
              + glob.glob(os.path.join(save, "*-export", "model.*")))
logged = (f"{steps} steps, last train/loss {float(last('train/loss')):.4g}, {float(last('gauss_num')):.0f} Gaussians"
          if last("train/loss") != "-" else "no training step logged (trainer.log_every_n_steps)")
print(f"    {config}: {logged}; save/: {', '.join(made) or 'nothing'}")
EOF
}

echo "one config per guidance under threestudio's launch.py (prompt \"$PROMPT\"${STEPS:+, trainer.max_steps=$STEPS}):"
FAILED=()
for config in "${CONFIGS[@]}"; do
  before=$(ls -d outputs/"$config"/*@* 2>/dev/null || true)
  args=(--config "custom/threestudio-lucid/configs/$config.yaml" --train --gpu 0 "system.prompt_processor.prompt=$PROMPT")
  [ -z "$STEPS" ] || args+=("trainer.max_steps=$STEPS")
  echo "\$ python launch.py ${args[*]:0:5} system.prompt_processor.prompt=\"$PROMPT\"${STEPS:+ trainer.max_steps=$STEPS}"
  if ! python launch.py "${args[@]}" > "$LOGS/$config-train.log" 2>&1; then
    tail -n 20 "$LOGS/$config-train.log" | tr '\r' '\n' | tail -n 20 >&2
    echo "    $config: --train FAILED (log: $LOGS/$config-train.log)"; FAILED+=("$config"); continue
  fi
  trial=$(comm -13 <(printf '%s\n' "$before" | sort) <(ls -d outputs/"$config"/*@* | sort) | tail -n 1)
  [ -n "$trial" ] || { echo "    $config: no new trial folder under outputs/$config"; FAILED+=("$config"); continue; }
  echo "\$ python launch.py --config $trial/configs/parsed.yaml --export --gpu 0 resume=$trial/ckpts/last.ckpt"
  if ! python launch.py --config "$trial/configs/parsed.yaml" --export --gpu 0 "resume=$trial/ckpts/last.ckpt" \
       > "$LOGS/$config-export.log" 2>&1; then
    tail -n 20 "$LOGS/$config-export.log" | tr '\r' '\n' | tail -n 20 >&2
    echo "    $config: --export FAILED (log: $LOGS/$config-export.log)"; FAILED+=("$config"); continue
  fi
  summarise "$config" "$trial"
  grep -h -o 'Mesh from .*watertight[^[]*' "$LOGS/$config-export.log" | sed 's/\x1b\[[0-9;]*m//g; s/^/      /' | tail -n 1 || true
done
if [ ${#FAILED[@]} -gt 0 ]; then
  fail "under threestudio's launch.py ${FAILED[*]} failed (logs: $LOGS/<config>-{train,export}.log)"
fi
echo "install inside threestudio: README lines followed, pip check as threestudio's own, ${#CONFIGS[@]} configs trained and exported"
