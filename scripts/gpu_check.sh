#!/usr/bin/env bash
# The GPU path in one prepared command: install what the GPU machine lacks from carried wheels and
# sources, build the CUDA rasterizers for the local GPU only (once: every later step loads that build), then
#   1. pytest tests/renderer -m gpu          gsplat and inria parity against the reference on CUDA
#                                            (a backend that does not load fails; it does not skip)
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
#   bash scripts/gpu_check.sh --dry-run                     here (CPU): check the carry, then rehearse every step
#                                                           small on a copy of the tree without .git, as it travels
#   bash scripts/gpu_check.sh                               there (CUDA): the check itself; OUT=... for the results
#
# With the device tool: run(command="bash scripts/gpu_check.sh", carry=[".gpu_carry"], timeout_s=600).
# The GPU machine has torch, transformers, peft, pytorch-lightning, imageio, ninja and nvcc but no network;
# .gpu_carry/ (ignored by git) holds the rest: the wheels below and diff-gaussian-rasterization's source
# with glm. Nothing here asserts a speed: the results are for reading.
set -uo pipefail
# paths given relative to where the script was called from (symbolic links kept: a venv's python is one)
[ -n "${GPU_CHECK_CARRY:-}" ] && GPU_CHECK_CARRY=$(realpath -ms -- "$GPU_CHECK_CARRY")
[[ ${PYTHON:-} == */* ]] && PYTHON=$(realpath -ms -- "$PYTHON")
cd "$(dirname "$0")/.."
REPO=$PWD
SELF=$REPO/scripts/gpu_check.sh  # $0 may be relative to where it was called from
CARRY=${GPU_CHECK_CARRY:-$REPO/.gpu_carry}
# the versions the CPU test suite runs with; gsplat as pinned in setup.py's test extra; imageio-ffmpeg
# 0.5.1 because its wheel is 27 MB (0.8 is 68 MB; 0.4 imports pkg_resources, gone from setuptools 81, over the device tool's 64 MiB for everything carried)
WHEELS=(diffusers==0.42.1 omegaconf==2.4.0 plyfile==1.1.5 gsplat==1.5.3 imageio-ffmpeg==0.5.1)
INRIA_URL=https://github.com/graphdeco-inria/diff-gaussian-rasterization
CARRY_LIMIT_MIB=60  # the device tool takes 64 MiB; the rest is room for what a warm machine keeps
PROMPT="a DSLR photo of a corgi wearing a red hat"

# Time. The device tool stops the command at 600 s; the budget (570 s) leaves 30 s for what the driver does
# outside the steps (the device query, the carry check, a killed step's 10 s grace, the summary).
# Setup compiles both CUDA libraries side by side (MAX_JOBS=16 each, 16 cores) while the SD 2.1-base-sized
# random pipeline is built on the GPU. What it compiles, measured on the CPU machine (2 cores of an AMD
# EPYC at 2.6 GHz, shared: load 4-5) on 2026-12-07 with nvcc 13.0, g++ 12.2, torch 2.13's extension builds,
# for sm_90 only (TORCH_CUDA_ARCH_LIST=9.0), CPU seconds per object (user + system, so hardly moved by the
# load; the wall times there were 2-3x longer):
#     bash scripts/gpu_check.sh --prepare --inria-src /work/.mirror/graphdeco-inria+diff-gaussian-rasterization/repo
#     bash scripts/measure_cuda_build.sh --jobs 2      (gsplat's JIT build, inria's setup.py build_ext)
#   gsplat 1.5.3: 29 objects, 766 CPU s; slowest RasterizeToPixels2DGSBwd 79, RasterizeToPixelsFromWorld3DGSBwd 71,
#     RasterizeToPixelsFromWorld3DGSFwd 58, ProjectionUT3DGSFused 51, RasterizeToPixels3DGSBwd 47, ext.cpp 47;
#     the 20 others 12-35 each (1049 s wall on the 2 loaded cores)
#   inria (diff-gaussian-rasterization 59f5f77): 5 objects, 201 CPU s; rasterize_points.cu 108, ext.cpp 61,
#     rasterizer_impl.cu 17, forward.cu 8, backward.cu 8 (223 s wall there)
#   together 968 CPU s: on 16 cores at that speed per core at least 108 s (the slowest object; 968/16 = 61),
#   108 s with the longest started first, at most 168 s in any order (968/16 + 108).
# Setup adds ~40 s that is not compiling (wheels, imports, the JIT's link, the module report; the pipeline's
# ~1.3B random parameters are made on the GPU and saved while nvcc runs): ~150-210 s expected. Its cap,
# 300 s, covers a device core 1.4x slower than the EPYC's; a setup timeout loses the whole run, a later
# step's loses that step. The later caps stop a hung step; expected there: parity 30-60 s, bench 40-80,
# ISM step 45-90 (pipeline load, 8 steps), end to end 60-120 (40 steps, validation, test video, PLY):
# ~200-350 s after a ~150-210 s setup fits in 570 s, and a slow setup (300 s) still leaves 270 s, the
# end-to-end step last. Building here instead (were it needed) would take torch 2.11+cu130 here to link
# against (libtorch_cuda; the CPU torch has none) and Python 3.12 for the ABI, and the built code (the
# objects are 17 MB for gsplat, 21 MB for inria) would push the 42 MiB carry past its 60 MiB.
BUDGET_DEFAULT=570
SETUP_CAP=300 PARITY_CAP=90 BENCH_CAP=120 ISM_CAP=150 E2E_CAP=200

die() { echo "error: $*" >&2; exit 2; }

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$SELF"; }  # the header above

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
  check_carry && echo "carry ready in $CARRY; travels: $TRAVELS"
}

# ---------------------------------------------------------------------------------------------
# what travels to the GPU machine
# ---------------------------------------------------------------------------------------------
# The device tool sends the tracked and the untracked-not-ignored files (and shared/) plus the carry, into
# a folder without .git. So with .git, git says what it would send; without (there, or in the dry run's
# copy) the tree as it is, minus the __pycache__ folders a warm machine keeps from an earlier run.
tree_files() {  # NUL-separated paths relative to $REPO
  if [ -e "$REPO/.git" ]; then
    git -C "$REPO" ls-files -z --cached --others --exclude-standard
    if [ -d "$REPO/shared" ]; then (cd "$REPO" && find shared \( -type f -o -type l \) -print0); fi
  else
    (cd "$REPO" && find . -name .git -prune -o -name __pycache__ -prune -o \( -type f -o -type l \) -print0) \
      | sed -z 's|^\./||'
  fi
}

carry_files() { find "$CARRY" \( -type f -o -type l \) -print0 2>/dev/null; }

bytes_of() {  # the size of the NUL-separated paths on stdin, in bytes (files and links; folders count 0)
  xargs -0 -r stat -c '%F|%s' -- 2>/dev/null | awk -F'|' '$1 != "directory" { s += $2 } END { print s + 0 }'
}

mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

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
  # each file once: the carry may sit inside the tree (it does: .gpu_carry/), and git may list it too
  local total carry_bytes how="as git sends it" prefix
  [ -e "$REPO/.git" ] || how="no .git: the tree as it is"
  prefix=$(printf '%s/' "$REPO" | sed 's/[&|\\]/\\&/g')  # $REPO/ as a sed replacement
  carry_bytes=$(carry_files | bytes_of)
  total=$({ tree_files | sed -z "s|^|$prefix|"; carry_files; } | sort -zu | bytes_of)
  TRAVELS="$(mib "$total") MiB ($how: tree $(mib $((total - carry_bytes))) MiB + .gpu_carry $(mib "$carry_bytes") MiB)"
  [ "$total" -le $((CARRY_LIMIT_MIB * 1048576)) ] || {
    echo "error: what travels to the GPU machine is $TRAVELS, over $CARRY_LIMIT_MIB MiB: carry less in .gpu_carry or ignore large files" >&2
    ok=1
  }
  return $ok
}

# the files that travel, copied without .git (the dry run rehearses on what the GPU machine gets)
copy_tree() {  # copy_tree DEST
  local dest=$1
  rm -rf "$dest" && mkdir -p "$dest" || return 1
  # --no-recursion: a nested repository that git lists as a folder travels empty, as with the device tool
  tree_files | (cd "$REPO" && tar --null --no-recursion --ignore-failed-read -T - -cf -) | tar -xf - -C "$dest" \
    && rm -rf "$dest/.gpu_carry" && cp -a "$CARRY" "$dest/.gpu_carry"
}

# ---------------------------------------------------------------------------------------------
# the steps (each runs as `gpu_check.sh --step NAME` under its own timeout, with the driver's environment)
# ---------------------------------------------------------------------------------------------
timed() {  # run a command; its last output line says how it ended and how long it took
  local start=$SECONDS rc
  "$@"; rc=$?
  echo "[exit $rc after $((SECONDS - start)) s]"
  return $rc
}

report_modules() {  # versions and files of what the steps import; carried wheels must come from $SITE
  local spec carried=()
  for spec in "${WHEELS[@]}"; do carried+=("$(tr - _ <<<"${spec%%==*}")"); done
  "$PY" scripts/gpu_check_report.py modules "$SITE" "${carried[@]}"
}

step_setup() {
  set -e
  [ "$DRY" = 1 ] || nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$CARRY"/whl/*.whl
  ln -sfn "$REPO/custom/threestudio-lucid" "$SITE/threestudio_lucid"
  if [ "$DRY" = 1 ]; then
    # no CUDA here: the C++ kernel the CPU steps render with is what gets built once, here, instead
    timed "$PY" -c "from threestudio_lucid.renderer import cpu_backend; cpu_backend.load_kernel(strict=True)"
    timed "$PY" -m threestudio_lucid.tiny_pipeline "$PIPE" --architecture tiny
    report_modules
    return
  fi
  echo "building for compute capability $TORCH_CUDA_ARCH_LIST only, MAX_JOBS=$MAX_JOBS, into $TORCH_EXTENSIONS_DIR and $SITE"
  # CUDA code: inria (pip build of the carried source) and gsplat (its JIT build) side by side
  rm -rf "$WORK/dgr" && cp -r "$CARRY/src/diff-gaussian-rasterization" "$WORK/dgr"
  # newer host compilers no longer pull <cstdint> in transitively; the upstream source relies on it
  (cd "$WORK/dgr" && NVCC_APPEND_FLAGS="-include cstdint" CXXFLAGS="-include cstdint" \
     timed "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target "$SITE" .) \
     >"$WORK/inria-build.log" 2>&1 &
  local inria=$!
  timed "$PY" -c "from gsplat.cuda._backend import _C; assert _C is not None, 'gsplat did not build'" \
     >"$WORK/gsplat-build.log" 2>&1 &
  local gsplat=$!
  set +e
  # SD 2.1-base's models with random weights, initialised on the GPU while the kernels compile
  timed "$PY" -m threestudio_lucid.tiny_pipeline "$PIPE" --architecture sd21-base --fp16 --device cuda
  local pipe_rc=$? inria_rc gsplat_rc modules_rc
  wait $inria; inria_rc=$?
  wait $gsplat; gsplat_rc=$?
  echo "--- inria build (rc $inria_rc)"; tail -n 30 "$WORK/inria-build.log"
  echo "--- gsplat build (rc $gsplat_rc)"; tail -n 30 "$WORK/gsplat-build.log"
  report_modules; modules_rc=$?
  echo "pipeline rc $pipe_rc, inria build rc $inria_rc, gsplat build rc $gsplat_rc, modules rc $modules_rc"
  # the kernels may fail here (the parity step then fails with their build logs); the pipeline may not
  [ $pipe_rc = 0 ] && [ $modules_rc = 0 ]
}

step_parity() {
  if [ "$DRY" = 1 ]; then  # no CUDA here: the gpu tests collect and skip
    "$PY" -m pytest tests/renderer -m gpu -q -rs -p no:cacheprovider
    return
  fi
  # tests/renderer fails (instead of skipping) a gpu test whose device or backend is missing when asked to
  local out=$WORK/parity-pytest.txt rc
  LUCID_REQUIRE_CUDA_BACKENDS=1 "$PY" -m pytest tests/renderer -m gpu -q -rs -p no:cacheprovider 2>&1 | tee "$out"
  rc=${PIPESTATUS[0]}
  # and whatever the tests do: every test here is a gpu test, so any skip (-rs lists them) is a failure
  if grep -q '^SKIPPED' "$out"; then
    echo "error: gpu tests skipped on the GPU machine (SKIPPED lines above): a CUDA backend did not load; its build log is in summary.txt"
    [ "$rc" != 0 ] || rc=1
  fi
  return "$rc"
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
  "$PY" scripts/gpu_check_report.py e2e "$root" "$steps"
}

# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------
# Compiled code, to prove that setup built each extension once and the later steps only loaded it:
# the object and library files of torch's extension builds (gsplat's JIT, the dry run's CPU kernel) and
# of pip's (inria's _C*.so in $SITE), with size and modification time.
built_code() {
  find "$TORCH_EXTENSIONS_DIR" "$SITE" -type f \( -name '*.so' -o -name '*.o' \) -printf '%p %s %T@\n' 2>/dev/null | sort
}

rebuilt() {  # rebuilt BEFORE AFTER: "extension (n files)" for each whose compiled files changed between two built_code lists
  diff "$1" "$2" | sed -n 's/^[<>] \(.*\) [0-9]* [0-9.]*$/\1/p' | sort -u \
    | sed "s|^$TORCH_EXTENSIONS_DIR/||; s|^$SITE/||" | cut -d/ -f1 | uniq -c \
    | awk '{ printf "%s%s (%d files)", (NR > 1 ? ", " : ""), $2, $1 }'
}

run_step() {  # run_step <n> <name> <cap seconds>: the step under min(cap, time to the deadline)
  local num=$1 name=$2 cap=$3 left t start rc status changed=
  left=$(( DEADLINE - $(date +%s) ))
  t=$(( cap < left ? cap : left ))
  if [ "$t" -lt 15 ]; then
    echo "step $num $name: not run, the ${BUDGET} s budget is spent" | tee -a "$SUMMARY"
    return 1
  fi
  start=$(date +%s)
  echo "== step $num $name (up to $t s)"
  built_code >"$WORK/built-before"
  timeout --kill-after=10 "$t" bash "$SELF" --step "$name" >"$OUT/$num-$name.log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status="TIMEOUT after $t s" ;;
    *) status="FAILED (exit $rc)" ;;
  esac
  # setup builds; any later step that compiles (another arch list, another folder) is a failure
  if [ "$name" != setup ]; then
    built_code >"$WORK/built-after"
    changed=$(rebuilt "$WORK/built-before" "$WORK/built-after")
    if [ -n "$changed" ]; then
      [ "$rc" != 0 ] || { rc=1; status="FAILED (it compiled)"; }
    fi
  fi
  echo "step $num $name: $status in $(( $(date +%s) - start )) s" | tee -a "$SUMMARY"
  [ -z "$changed" ] || echo "step $num $name rebuilt compiled code that setup builds once: $changed" \
    "(TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, TORCH_EXTENSIONS_DIR=$TORCH_EXTENSIONS_DIR)" | tee -a "$SUMMARY"
  tail -n 4 "$OUT/$num-$name.log"
  return $rc
}

build_log_tails() {  # the end of each CUDA build's log, for the summary when parity fails
  local log
  for log in inria-build.log gsplat-build.log; do
    if [ -f "$WORK/$log" ]; then
      echo "--- last 15 lines of $log"; tail -n 15 "$WORK/$log"
    else
      echo "--- $log: not written ($([ "$DRY" = 1 ] && echo "the dry run builds no CUDA code" || echo "setup did not get that far"))"
    fi
  done
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
# a step's processes know which step they are in (the CPU tests' stand-in for the GPU machine reads it)
if [ "$MODE" = step ]; then export GPU_CHECK_STEP=$STEP; "step_${STEP//-/_}"; exit $?; fi

export DRY=0 BUDGET=${GPU_CHECK_BUDGET:-$BUDGET_DEFAULT} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
[ "$MODE" = dry ] && DRY=1
export WORK=${GPU_CHECK_WORK:-/tmp/lucid-gpu-check}
if [ "$DRY" = 1 ]; then
  export PY=${PYTHON:-$REPO/.venv/bin/python}
  [ -x "$PY" ] || die "$PY not found: run scripts/setup.sh first (or set PYTHON)"
  check_carry || exit 2  # before anything is written
  if [ "${GPU_CHECK_IN_COPY:-0}" != 1 ]; then
    # rehearse on what the GPU machine gets: the files that travel, without .git, the carry inside
    [ "$REPO" != "$(realpath -m -- "$WORK/tree")" ] \
      || die "$REPO is the dry run's own copy (replaced by every dry run): run scripts/gpu_check.sh --dry-run from the checkout"
    copy_tree "$WORK/tree" || die "could not copy the tree to $WORK/tree: is there room? (GPU_CHECK_WORK sets another folder)"
    echo "dry run: what travels ($TRAVELS) copied to $WORK/tree, without .git; the driver runs there"
    exec env -u GPU_CHECK_CARRY GPU_CHECK_IN_COPY=1 PYTHON="$PY" bash "$WORK/tree/scripts/gpu_check.sh" --dry-run
  fi
  export OUT=${OUT:-$WORK/dry-run} PIPE=$WORK/tiny-sd SITE=$WORK/site-dry TORCH_CUDA_ARCH_LIST=9.0  # the lent H100/H200's
  export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
else
  export PY=${PYTHON:-python3} OUT=${OUT:-$REPO/gpu_check_out} PIPE=$WORK/sd21-base-random SITE=$WORK/site
  arch=$("$PY" -c "import torch; assert torch.cuda.is_available(); print('%d.%d' % torch.cuda.get_device_capability())") \
    || die "no CUDA device for $PY: this is the GPU run; use --dry-run on a CPU machine"
  check_carry || exit 2  # before anything is written
  export TORCH_CUDA_ARCH_LIST=$arch
fi
# Every step is a new process: the build environment is set here, once, for all of them. torch's
# extension builds (gsplat's JIT) recompile when the arch list changes (it defaults to "<arch>+PTX") and
# build per folder (default ~/.cache/torch_extensions): one arch list, one folder under $WORK.
export TORCH_EXTENSIONS_DIR=$WORK/torch_extensions MAX_JOBS=${MAX_JOBS:-$(nproc)}
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$OUT" "$WORK"
rm -rf "$PIPE" "$SITE"
export SUMMARY=$OUT/summary.txt
START=$(date +%s); export DEADLINE=$((START + BUDGET))
: >"$SUMMARY"
echo "gpu_check $([ "$DRY" = 1 ] && echo "--dry-run ")$([ -e .git ] && git rev-parse --short HEAD 2>/dev/null || echo "(no .git)") $(date -u +%FT%TZ), budget $BUDGET s" | tee -a "$SUMMARY"
echo "carry: ${#WHEELS[@]} wheels and diff-gaussian-rasterization's source; travels: $TRAVELS" | tee -a "$SUMMARY"
echo "build environment of every step: TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS TORCH_EXTENSIONS_DIR=$TORCH_EXTENSIONS_DIR" | tee -a "$SUMMARY"
bash -n "$SELF" || die "$SELF does not parse"
"$PY" -m py_compile scripts/gpu_ism_step.py scripts/bench_rasterizers.py scripts/gpu_check_report.py || die "a step script does not parse"

run_step 00 setup "$SETUP_CAP" || { echo "setup failed: see $OUT/00-setup.log" | tee -a "$SUMMARY"; exit 1; }
failed=0
run_step 01 parity "$PARITY_CAP" || { failed=1; build_log_tails >>"$SUMMARY"; }
run_step 02 bench "$BENCH_CAP" || failed=1
run_step 03 ism-step "$ISM_CAP" || failed=1
run_step 04 e2e "$E2E_CAP" || failed=1
if [ -f "$OUT/03-ism-step.json" ]; then
  "$PY" scripts/gpu_check_report.py ism "$OUT/03-ism-step.json" | tee -a "$SUMMARY"
fi
echo "total $(( $(date +%s) - START )) s; results in $OUT" | tee -a "$SUMMARY"
exit $failed
