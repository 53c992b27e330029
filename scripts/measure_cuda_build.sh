#!/usr/bin/env bash
# Measures what the GPU check's setup step compiles, here on the CPU, with the builds' own commands:
#   gsplat: its JIT build (importing gsplat.cuda._backend runs torch.utils.cpp_extension and ninja);
#   inria:  diff-gaussian-rasterization's setup.py (torch's BuildExtension and ninja), the carried source.
# Both for one architecture (TORCH_CUDA_ARCH_LIST, as gpu_check.sh sets it) with MAX_JOBS parallel jobs.
# Linking fails on a CPU torch (no libtorch_cuda): the object files are the cost and they all get built.
# Every compiler call (nvcc, c++) is timed by GNU time: wall seconds and CPU seconds (user + system, its
# children included: cicc, ptxas, the host compiler). CPU seconds hardly move with the load of others on
# the machine; wall seconds do. Prints each object's seconds and, from the CPU seconds, the wall time on
# --cores cores: at least the slowest object (or all / cores), that with the longest objects started
# first, and at most all / cores + the slowest, whatever order the builds start them in.
#
#   bash scripts/measure_cuda_build.sh [--jobs 2] [--arch 9.0] [--cores 16] [--work DIR] [--inria-src DIR]
#   bash scripts/measure_cuda_build.sh --report-only [--cores 16] [--work DIR]   the last measurement again
#
# --inria-src defaults to the carry (.gpu_carry/src/diff-gaussian-rasterization, with glm): run
# scripts/gpu_check.sh --prepare first. Needs nvcc (CUDA_HOME, default /usr/local/cuda), ninja, GNU time.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-$REPO/.venv/bin/python}
JOBS=$(nproc) ARCH=9.0 CORES=16 WORK=/tmp/lucid-cuda-build-measure REPORT_ONLY=0
INRIA_SRC=${GPU_CHECK_CARRY:-$REPO/.gpu_carry}/src/diff-gaussian-rasterization

die() { echo "error: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case $1 in
    --jobs) JOBS=${2:?--jobs needs a number}; shift ;;
    --arch) ARCH=${2:?--arch needs a compute capability such as 9.0}; shift ;;
    --cores) CORES=${2:?--cores needs a number}; shift ;;
    --work) WORK=${2:?--work needs a folder}; shift ;;
    --inria-src) INRIA_SRC=${2:?--inria-src needs a folder}; shift ;;
    --report-only) REPORT_ONLY=1 ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1'; see scripts/measure_cuda_build.sh --help" ;;
  esac
  shift
done

report() {  # per object and library, and the projection, from $WORK/timing
  "$PY" - "$CORES" "$WORK/timing" <<'EOF'
import heapq, os, sys
cores, folder = int(sys.argv[1]), sys.argv[2]
rows = []  # (cpu seconds, wall seconds, library, object)
for library in ("gsplat", "inria"):
    path = os.path.join(folder, f"{library}.txt")
    failed = False  # GNU time writes "Command exited with non-zero status N" before the call's own line
    for line in open(path) if os.path.exists(path) else ():
        fields = line.split()
        if line.startswith("Command exited with non-zero status"):
            failed = True
            continue
        if len(fields) == 4 and fields[3].endswith(".o"):
            if failed:
                sys.exit(f"error: compiling {fields[3]} failed: see the {library} build log in {os.path.dirname(folder)}")
            rows.append((float(fields[1]) + float(fields[2]), float(fields[0]), library, os.path.basename(fields[3])))
        failed = False  # (the link, which fails on a CPU torch, and the compilers' version probes)
    if not any(r[2] == library for r in rows):
        sys.exit(f"error: no {library} object was compiled: see its build log in {os.path.dirname(folder)}")
for library in ("gsplat", "inria"):
    mine = sorted((r for r in rows if r[2] == library), reverse=True)
    print(f"{library}: {len(mine)} objects, {sum(r[0] for r in mine):.0f} CPU s in all; per object (CPU s, wall s here):")
    for cpu, wall, _, name in mine:
        print(f"  {cpu:6.1f}  {wall:6.1f}  {name}")
total, slowest = sum(r[0] for r in rows), max(rows)[0]
loads = [0.0] * cores
for cpu, *_ in sorted(rows, reverse=True):  # longest first, onto the least busy core: the best order
    heapq.heapreplace(loads, loads[0] + cpu)
print(f"both libraries together, {total:.0f} CPU s, on {cores} cores at this machine's speed per core: "
      f"at least {max(total / cores, slowest):.0f} s (all / {cores}, or the slowest object, {slowest:.0f} s); "
      f"{max(loads):.0f} s with the longest objects started first; at most {total / cores + slowest:.0f} s "
      f"whatever the order (all / {cores} + the slowest)")
EOF
}
if [ "$REPORT_ONLY" = 1 ]; then
  [ -d "$WORK/timing" ] || die "$WORK/timing is missing: measure first (without --report-only)"
  report; exit $?
fi
CUDA=${CUDA_HOME:-/usr/local/cuda}
[ -x "$PY" ] || die "$PY not found: run scripts/setup.sh first (or set PYTHON)"
[ -x "$CUDA/bin/nvcc" ] || die "$CUDA/bin/nvcc not found: set CUDA_HOME to the CUDA toolkit"
[ -x /usr/bin/time ] || die "/usr/bin/time (GNU time) not found: apt-get install time"
[ -f "$INRIA_SRC/setup.py" ] && [ -f "$INRIA_SRC/third_party/glm/glm/glm.hpp" ] \
  || die "$INRIA_SRC is not diff-gaussian-rasterization's source with glm: run scripts/gpu_check.sh --prepare (or pass --inria-src)"
export PATH=$(dirname "$PY"):$PATH
command -v ninja >/dev/null || die "ninja not found: pip install ninja"
export TORCH_CUDA_ARCH_LIST=$ARCH MAX_JOBS=$JOBS TORCH_EXTENSIONS_DIR=$WORK/torch_extensions
rm -rf "$WORK" && mkdir -p "$WORK/timing"

# The timing: a CUDA_HOME whose bin/nvcc (and a CXX) run the real compiler under GNU time, one line per
# object ("wall user system output") in $WORK/timing/<library>.txt
timing_wrapper() {  # timing_wrapper PATH REAL_COMPILER
  cat >"$1" <<EOF
#!/usr/bin/env bash
out=?; prev=
for a in "\$@"; do [ "\$prev" = -o ] && out=\$a; prev=\$a; done
exec /usr/bin/time -a -o "$WORK/timing/\$MEASURE_LIBRARY.txt" -f "%e %U %S \$out" "$2" "\$@"
EOF
  chmod +x "$1"
}
SHIM=$WORK/cuda-home
mkdir -p "$SHIM/bin"
for f in "$CUDA"/*; do [ "$(basename "$f")" = bin ] || ln -s "$f" "$SHIM/"; done
for f in "$CUDA"/bin/*; do [ "$(basename "$f")" = nvcc ] || ln -s "$f" "$SHIM/bin/"; done
timing_wrapper "$SHIM/bin/nvcc" "$CUDA/bin/nvcc"
timing_wrapper "$WORK/c++" "$(command -v "${CXX:-c++}")"
export CXX=$WORK/c++

# Two stand-ins for what a CPU torch lacks, nothing else changed in the builds: cpp_extension.CUDA_HOME,
# which a CPU torch leaves unset whatever the environment says, and the one header its CUDA wheels
# generate at build time (c10/cuda/impl/cuda_cmake_macros.h: one #define, used on Windows only),
# found through CPATH by g++ and by nvcc's host preprocessor.
SEES_NVCC="import torch.utils.cpp_extension as e; e.CUDA_HOME = '$SHIM'"
if "$PY" -c "import torch; assert torch.version.cuda is None" 2>/dev/null; then
  mkdir -p "$WORK/cpu-torch-shim/c10/cuda/impl"
  echo '#define C10_CUDA_BUILD_SHARED_LIBS' >"$WORK/cpu-torch-shim/c10/cuda/impl/cuda_cmake_macros.h"
  export CPATH=$WORK/cpu-torch-shim${CPATH:+:$CPATH}
fi

echo "nvcc: $("$CUDA/bin/nvcc" --version | tail -1); $(c++ --version | head -1)"
echo "torch $("$PY" -c 'import torch; print(torch.__version__)'); TORCH_CUDA_ARCH_LIST=$ARCH MAX_JOBS=$JOBS;" \
  "$(nproc) cores here, load average $(cut -d' ' -f1-3 /proc/loadavg) at the start"

# gsplat: the import is the build (the link step fails here, after every object is compiled)
start=$SECONDS
MEASURE_LIBRARY=gsplat "$PY" -c "$SEES_NVCC; from gsplat.cuda._backend import _C" >"$WORK/gsplat-build.log" 2>&1
rc=$?
echo "gsplat JIT build: $((SECONDS - start)) s wall here (exit $rc; a link error is expected on a CPU torch)"

# inria: the BuildExtension that pip runs, with setup.py called directly to keep its build folder
rm -rf "$WORK/dgr" && cp -r "$INRIA_SRC" "$WORK/dgr"
start=$SECONDS
(cd "$WORK/dgr" && MEASURE_LIBRARY=inria NVCC_APPEND_FLAGS="-include cstdint" CXXFLAGS="-include cstdint" \
   "$PY" -c "$SEES_NVCC; import runpy, sys; sys.argv[0] = 'setup.py'; runpy.run_path('setup.py', run_name='__main__')" \
     build_ext --build-temp "$WORK/inria-temp" --build-lib "$WORK/inria-lib") >"$WORK/inria-build.log" 2>&1
rc=$?
echo "inria setup.py build: $((SECONDS - start)) s wall here (exit $rc; a link error is expected on a CPU torch)"
echo "load average $(cut -d' ' -f1-3 /proc/loadavg) at the end"

report
