#!/usr/bin/env bash
# The GPU path in one prepared command: install what the GPU machine lacks from carried wheels and
# sources, build the CUDA rasterizers for the local GPU only, then
#   1. pytest tests/renderer -m gpu          gsplat and inria parity against the reference on CUDA
#   2. scripts/bench_rasterizers.py --cuda-only   reference, gsplat, inria at 20k/100k Gaussians, 256/512 px
#   3. scripts/gpu_ism_step.py               a full ISM step at the real size: SD 2.1-base's UNet, VAE and
#                                            text encoder (random weights, fp16), 512x512, 4 views, 100k
#                                            Gaussians: s/step, peak GPU memory, UNet calls per step
#   4. lucid-launch lucid-ism.yaml           40 steps on that pipeline, densification inside the window,
#                                            the test stage (video) and the PLY
# Each step writes $OUT/<n>-<step>.log as it finishes and a line to $OUT/summary.txt, so a timeout keeps
# what ran before it. The steps share one deadline (GPU_CHECK_BUDGET seconds, default 570).
#
#   bash scripts/gpu_check.sh --prepare [--inria-src DIR]   here (network): wheels and sources into .gpu_carry/
#   bash scripts/gpu_check.sh --dry-run                     here (CPU): check the carry, rehearse every step small
#   bash scripts/gpu_check.sh                               there (CUDA): the check itself; OUT=... for the results
#
# With the device tool: run(command="bash scripts/gpu_check.sh", carry=[".gpu_carry"], timeout_s=600).
# The GPU machine has torch, transformers, peft, pytorch-lightning, imageio and nvcc but no network;
# .gpu_carry/ (ignored by git) holds the rest: the wheels below and diff-gaussian-rasterization's source
# with glm. Nothing here asserts a speed: the results are for reading.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
CARRY=${GPU_CHECK_CARRY:-$REPO/.gpu_carry}
# the versions the CPU test suite runs with; gsplat as pinned in setup.py's test extra; imageio-ffmpeg
# 0.5.1 because its wheel is 27 MB (0.8 is 68 MB; 0.4 imports pkg_resources, gone from setuptools 81, over the device tool's 64 MiB for everything carried)
WHEELS=(diffusers==0.42.1 omegaconf==2.4.0 plyfile==1.1.5 gsplat==1.5.3 imageio-ffmpeg==0.5.1)
INRIA_URL=https://github.com/graphdeco-inria/diff-gaussian-rasterization
CARRY_LIMIT_MIB=60
PROMPT="a DSLR photo of a corgi wearing a red hat"

die() { echo "error: $*" >&2; exit 2; }

usage() { sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; }

# ---------------------------------------------------------------------------------------------
# --prepare: fetch the carry (run where pip and the network work)
# ---------------------------------------------------------------------------------------------
prepare() {
  local inria_src=${1:-}
  local py=${PYTHON:-$REPO/.venv/bin/python}
  [ -x "$py" ] || py=python3
  mkdir -p "$CARRY/whl" "$CARRY/src"
  rm -f "$CARRY"/whl/*.whl
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux2010_x86_64 -d "$CARRY/whl" "${WHEELS[@]}" || die "pip download of ${WHEELS[*]} failed"

  local dst=$CARRY/src/diff-gaussian-rasterization
  rm -rf "$dst"; mkdir -p "$dst"
  if [ -z "$inria_src" ]; then
    git clone -q --recursive "$INRIA_URL" "$dst" || die "git clone $INRIA_URL failed; pass --inria-src DIR (a checkout or a bare mirror)"
    rm -rf "$dst/.git"
  elif [ -f "$inria_src/HEAD" ] && [ -d "$inria_src/objects" ]; then  # a bare repository / mirror
    git --git-dir="$inria_src" archive HEAD | tar -x -C "$dst" || die "git archive of $inria_src failed"
  elif [ -f "$inria_src/setup.py" ]; then
    cp -r "$inria_src"/. "$dst"/ && rm -rf "$dst/.git"
  else
    die "--inria-src $inria_src is neither a checkout of diff-gaussian-rasterization (setup.py) nor a git mirror"
  fi
  if [ ! -f "$dst/third_party/glm/glm/glm.hpp" ]; then  # the glm submodule is empty in an archive
    local tmp; tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download -q libglm-dev >/dev/null 2>&1 && dpkg -x libglm-dev_*.deb root) \
      || die "third_party/glm is empty and 'apt-get download libglm-dev' failed: give a --recursive checkout"
    mkdir -p "$dst/third_party/glm" && cp -r "$tmp/root/usr/include/glm" "$dst/third_party/glm/glm"
    rm -rf "$tmp"
  fi
  check_carry && echo "carry ready in $CARRY ($(du -sm "$CARRY" | cut -f1) MiB)"
}

# every carried file is there, once, and everything that travels fits the device tool's limit
check_carry() {
  local ok=0 spec name n
  if [ ! -d "$CARRY/whl" ] || [ ! -d "$CARRY/src" ]; then
    echo "error: $CARRY is not prepared: run scripts/gpu_check.sh --prepare [--inria-src DIR] where the network works" >&2
    return 1
  fi
  for spec in "${WHEELS[@]}"; do
    name=${spec%%==*}; name=${name//-/_}
    n=$(find "$CARRY/whl" -maxdepth 1 -iname "${name}-${spec##*==}-*.whl" 2>/dev/null | wc -l)
    [ "$n" = 1 ] || { echo "error: .gpu_carry/whl needs exactly one wheel of $spec (found $n): run scripts/gpu_check.sh --prepare" >&2; ok=1; }
  done
  n=$(find "$CARRY/whl" -maxdepth 1 -name '*.whl' 2>/dev/null | wc -l)
  [ "$n" = "${#WHEELS[@]}" ] || { echo "error: .gpu_carry/whl holds $n wheels, expected ${#WHEELS[@]}: run --prepare again" >&2; ok=1; }
  local src=$CARRY/src/diff-gaussian-rasterization f
  for f in setup.py ext.cpp rasterize_points.cu cuda_rasterizer/forward.cu cuda_rasterizer/backward.cu \
           cuda_rasterizer/rasterizer_impl.cu diff_gaussian_rasterization/__init__.py third_party/glm/glm/glm.hpp; do
    [ -f "$src/$f" ] || { echo "error: .gpu_carry/src/diff-gaussian-rasterization/$f is missing: run --prepare" >&2; ok=1; }
  done
  local tree carry_mib
  tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
  carry_mib=$(( ($(du -sb "$CARRY" 2>/dev/null | cut -f1) + tree) / 1048576 ))
  [ "$carry_mib" -le "$CARRY_LIMIT_MIB" ] || { echo "error: tree + .gpu_carry is $carry_mib MiB, over $CARRY_LIMIT_MIB MiB" >&2; ok=1; }
  return $ok
}

# ---------------------------------------------------------------------------------------------
# the steps (each runs as `gpu_check.sh --step NAME` under its own timeout)
# ---------------------------------------------------------------------------------------------
step_setup() {  # GPU machine only
  set -e
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$CARRY"/whl/*.whl
  ln -sfn "$REPO/custom/threestudio-lucid" "$SITE/threestudio_lucid"
  local arch; arch=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  export TORCH_CUDA_ARCH_LIST=$arch MAX_JOBS=${MAX_JOBS:-16}
  echo "building for compute capability $arch only, MAX_JOBS=$MAX_JOBS"
  # CUDA code: inria (pip build of the carried source) and gsplat (its JIT build) side by side
  rm -rf "$WORK/dgr" && cp -r "$CARRY/src/diff-gaussian-rasterization" "$WORK/dgr"
  # newer host compilers no longer pull <cstdint> in transitively; the upstream source relies on it
  (cd "$WORK/dgr" && NVCC_APPEND_FLAGS="-include cstdint" CXXFLAGS="-include cstdint" \
     "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target "$SITE" .) \
     >"$WORK/inria-build.log" 2>&1 &
  local inria=$!
  "$PY" -c "from gsplat.cuda._backend import _C; assert _C is not None, 'gsplat did not build'" \
     >"$WORK/gsplat-build.log" 2>&1 &
  local gsplat=$!
  set +e
  # SD 2.1-base's models with random weights, initialised on the GPU while the kernels compile
  "$PY" -m threestudio_lucid.tiny_pipeline "$PIPE" --architecture sd21-base --fp16 --device cuda
  local pipe_rc=$? inria_rc gsplat_rc
  wait $inria; inria_rc=$?
  wait $gsplat; gsplat_rc=$?
  echo "--- inria build (rc $inria_rc)"; tail -n 30 "$WORK/inria-build.log"
  echo "--- gsplat build (rc $gsplat_rc)"; tail -n 30 "$WORK/gsplat-build.log"
  "$PY" - <<'EOF'
import importlib
for name in ("torch", "diffusers", "transformers", "peft", "pytorch_lightning", "omegaconf", "gsplat",
             "diff_gaussian_rasterization", "imageio_ffmpeg", "threestudio_lucid"):
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '')} from {getattr(module, '__file__', '?')}")
    except Exception as e:
        print(f"{name} unavailable: {type(e).__name__}: {e}")
EOF
  echo "pipeline rc $pipe_rc, inria build rc $inria_rc, gsplat build rc $gsplat_rc"
  [ $pipe_rc = 0 ]  # the kernels may fail (their parity tests then skip with the reason); the pipeline may not
}

step_parity() {
  "$PY" -m pytest tests/renderer -m gpu -q -rs -p no:cacheprovider
}

step_bench() {
  if [ "$DRY" = 1 ]; then
    "$PY" scripts/bench_rasterizers.py --sizes 1000 --resolutions 64 --repeats 1
  else
    "$PY" scripts/bench_rasterizers.py --cuda-only --sizes 20000 100000 --resolutions 256 512 --repeats 3
  fi
}

step_ism_step() {
  if [ "$DRY" = 1 ]; then
    "$PY" scripts/gpu_ism_step.py --pipeline "$PIPE" --architecture tiny --resolution 64 --views 2 \
      --gaussians 2000 --steps 2 --warmup 1 --json "$OUT/03-ism-step.json"
  else
    "$PY" scripts/gpu_ism_step.py --pipeline "$PIPE" --architecture sd21-base --resolution 512 --views 4 \
      --gaussians 100000 --steps 6 --warmup 2 --json "$OUT/03-ism-step.json"
  fi
}

step_e2e() {
  local res=512 views=4 steps=40 every=10 test_views=8
  [ "$DRY" = 1 ] && res=64 views=2 steps=8 every=2 test_views=4
  local root=$WORK/outputs
  rm -rf "$root"
  "$PY" -m threestudio_lucid.host.launch --config custom/threestudio-lucid/configs/lucid-ism.yaml --train --gpu 0 \
    "system.prompt_processor.prompt=$PROMPT" exp_root_dir="$root" \
    system.prompt_processor.pretrained_model_name_or_path="$PIPE" system.guidance.pretrained_model_name_or_path="$PIPE" \
    data.width=$res data.height=$res data.eval_width=$res data.eval_height=$res data.batch_size=$views \
    data.n_val_views=2 data.n_test_views=$test_views trainer.max_steps=$steps trainer.val_check_interval=$((steps / 2)) \
    system.geometry.init_num_pts=$([ "$DRY" = 1 ] && echo 2000 || echo 100000) \
    system.geometry.densify_from_iter=$every system.geometry.densification_interval=$every \
    system.geometry.densify_until_iter=$((steps - every)) system.geometry.prune_from_iter=$every \
    system.geometry.prune_interval=$every system.geometry.prune_until_iter=$((steps - every)) \
    system.geometry.opacity_reset_interval=$((steps * 3 / 4)) || return
  "$PY" - "$root" "$steps" <<'EOF'
import glob, os, sys
from plyfile import PlyData
root, steps = sys.argv[1], int(sys.argv[2])
trial = glob.glob(os.path.join(root, "*", "*"))[0]
plys = glob.glob(os.path.join(trial, "save", "*.ply"))
videos = glob.glob(os.path.join(trial, "save", f"it{steps}-test.mp4"))
ckpts = sorted(os.listdir(os.path.join(trial, "ckpts")))
assert plys, f"no PLY in {trial}/save"
assert videos, f"no it{steps}-test.mp4 in {trial}/save"
vertices = PlyData.read(plys[0])["vertex"].count
print(f"run folder {trial}: PLY {os.path.basename(plys[0])} with {vertices} Gaussians, "
      f"video {os.path.basename(videos[0])}, checkpoints {ckpts}")
EOF
}

# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------
run_step() {  # run_step <n> <name> <cap seconds>: the step under min(cap, time to the deadline)
  local num=$1 name=$2 cap=$3 left t start rc status
  left=$(( DEADLINE - $(date +%s) ))
  t=$(( cap < left ? cap : left ))
  if [ "$t" -lt 15 ]; then
    echo "step $num $name: not run, the ${BUDGET} s budget is spent" | tee -a "$SUMMARY"
    return 1
  fi
  start=$(date +%s)
  echo "== step $num $name (up to $t s)"
  timeout --kill-after=10 "$t" bash "$0" --step "$name" >"$OUT/$num-$name.log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status="TIMEOUT after $t s" ;;
    *) status="FAILED (exit $rc)" ;;
  esac
  echo "step $num $name: $status in $(( $(date +%s) - start )) s" | tee -a "$SUMMARY"
  tail -n 4 "$OUT/$num-$name.log"
  return $rc
}

MODE=run INRIA_SRC=
while [ $# -gt 0 ]; do
  case $1 in
    --prepare) MODE=prepare ;;
    --inria-src) INRIA_SRC=${2:?--inria-src needs a folder}; shift ;;
    --dry-run) MODE=dry ;;
    --step) MODE=step STEP=${2:?}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1'; see scripts/gpu_check.sh --help" ;;
  esac
  shift
done

if [ "$MODE" = prepare ]; then prepare "$INRIA_SRC"; exit $?; fi
if [ "$MODE" = step ]; then "step_${STEP//-/_}"; exit $?; fi

export DRY=0 BUDGET=${GPU_CHECK_BUDGET:-570} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
[ "$MODE" = dry ] && DRY=1
export WORK=${GPU_CHECK_WORK:-/tmp/lucid-gpu-check}
if [ "$DRY" = 1 ]; then
  export PY=${PYTHON:-$REPO/.venv/bin/python} OUT=${OUT:-$WORK/dry-run} PIPE=$WORK/tiny-sd
  export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
  [ -x "$PY" ] || die "$PY not found: run scripts/setup.sh first (or set PYTHON)"
else
  export PY=${PYTHON:-python3} OUT=${OUT:-$REPO/gpu_check_out} PIPE=$WORK/sd21-base-random SITE=$WORK/site
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || die "no CUDA device for $PY: this is the GPU run; use --dry-run on a CPU machine"
fi
check_carry || exit 2  # before anything is written
mkdir -p "$OUT" "$WORK"
export SUMMARY=$OUT/summary.txt
START=$(date +%s); export DEADLINE=$((START + BUDGET))
: >"$SUMMARY"
echo "gpu_check $([ "$DRY" = 1 ] && echo --dry-run) $(git rev-parse --short HEAD 2>/dev/null) $(date -u +%FT%TZ), budget $BUDGET s" | tee -a "$SUMMARY"

echo "carry: ${#WHEELS[@]} wheels and diff-gaussian-rasterization's source are in .gpu_carry" | tee -a "$SUMMARY"
bash -n "$0" || die "$0 does not parse"
"$PY" -m py_compile scripts/gpu_ism_step.py scripts/bench_rasterizers.py || die "a step script does not parse"

if [ "$DRY" = 1 ]; then
  # the GPU run's setup step minus CUDA: the carried wheels install offline and import beside the
  # plugin's symlink, and the random pipeline is built (the tiny architecture here)
  rm -rf "$PIPE" "$WORK/site-dry"
  { "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site-dry" "$CARRY"/whl/*.whl \
    && ln -sfn "$REPO/custom/threestudio-lucid" "$WORK/site-dry/threestudio_lucid" \
    && PYTHONPATH=$WORK/site-dry "$PY" -c "
import os, sys, diffusers, omegaconf, plyfile, gsplat, imageio_ffmpeg, threestudio_lucid
site = os.path.realpath(sys.argv[1])
for m in (diffusers, omegaconf, plyfile, gsplat, imageio_ffmpeg):
    assert os.path.realpath(m.__file__).startswith(site), (m.__name__, m.__file__)
print('carried wheels import from', site, '; diffusers', diffusers.__version__, '; gsplat', gsplat.__version__)
" "$WORK/site-dry" \
    && "$PY" -m threestudio_lucid.tiny_pipeline "$PIPE" --architecture tiny; } >"$OUT/00-setup.log" 2>&1 \
    && echo "step 00 setup: ok (dry run: carried wheels installed offline and imported; tiny pipeline; no CUDA build)" | tee -a "$SUMMARY" \
    || { echo "step 00 setup: FAILED" | tee -a "$SUMMARY"; cat "$OUT/00-setup.log"; exit 1; }
else
  rm -rf "$PIPE"
  run_step 00 setup 300 || { echo "setup failed: see $OUT/00-setup.log" | tee -a "$SUMMARY"; exit 1; }
fi
failed=0
run_step 01 parity 90 || failed=1
run_step 02 bench 120 || failed=1
run_step 03 ism-step 150 || failed=1
run_step 04 e2e 200 || failed=1
if [ -f "$OUT/03-ism-step.json" ]; then
  "$PY" - "$OUT/03-ism-step.json" <<'EOF' | tee -a "$SUMMARY"
import json, sys
s = json.load(open(sys.argv[1]))
print(f"ISM step: {s['device']}, backend {s['backend']}, UNet {s['unet_dtype']}, {s['resolution']}px x {s['views']} views, "
      f"{s['gaussians']} Gaussians: {s['median_step_seconds']} s/step (median), peak "
      f"{'-' if s['peak_gib'] is None else round(s['peak_gib'], 2)} GiB, "
      f"{s['unet_calls_per_step']} UNet calls/step, losses finite: {s['all_losses_finite']}; "
      f"{s['projected_steps']} steps at this size: {s['projected_minutes']} min (LucidDreamer: ~35 min on an A100)")
EOF
fi
echo "total $(( $(date +%s) - START )) s; results in $OUT" | tee -a "$SUMMARY"
exit $failed
