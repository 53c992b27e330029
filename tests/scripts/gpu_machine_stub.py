"""The GPU machine's ``python3`` as ``scripts/gpu_check.sh`` uses it, for the driver's CPU tests
(``test_gpu_check.py``): the driver runs unchanged, on a copy of the tree without ``.git``, and only
what needs CUDA, pip's wheels or nvcc is played here, the way those tools behave there. Every call
appends one JSON line to ``$STUB_LOG``: what ran, in which step (``GPU_CHECK_STEP``), where, and the
build environment it saw.

- ``-c`` asking torch about the device: there is one, of compute capability ``9.0`` (an H100), or
  none when ``STUB_CUDA=0``.
- ``-m pip install --target SITE <wheels>``: creates SITE (the tests' wheels are placeholders).
- ``-m pip install --target SITE .`` in diff-gaussian-rasterization's folder: compiles inria into
  ``SITE/diff_gaussian_rasterization/_C*.so``; fails with an nvcc error when ``STUB_INRIA_BUILD=fail``.
- gsplat's JIT build (``-c "from gsplat.cuda._backend import _C"`` in setup, and every step that renders
  on CUDA): as ``torch.utils.cpp_extension`` does it, in ``$TORCH_EXTENSIONS_DIR/gsplat_cuda`` (default
  ``~/.cache/torch_extensions/py312_cu130/gsplat_cuda``); it compiles when there is no library yet or
  when ``TORCH_CUDA_ARCH_LIST`` (default ``9.0+PTX``, torch's for this device) differs from the list the
  build was made for, and only loads otherwise. ``STUB_REBUILD_IN=<step>`` compiles in that step anyway
  (as an edited source or flag would).
- the dry run's C++ kernel build (``-c`` with ``cpu_backend``): compiles it once into
  ``$TORCH_EXTENSIONS_DIR``; the CPU steps then load it.
- ``-m pytest tests/renderer -m gpu``: per backend, passes when it is built, else skips, or fails when
  ``LUCID_REQUIRE_CUDA_BACKENDS=1`` (what tests/renderer promises) unless ``STUB_PYTEST_IGNORES_REQUIRE=1``.
- the pipeline builder, the launcher and the step scripts: write what the real ones write, small.
- ``scripts/gpu_check_report.py modules``: prints the modules (importing torch and the rest would take
  tens of seconds); ``py_compile``, the other report subcommands and stdin scripts run on the real
  interpreter.
"""
import glob
import json
import os
import sys
import time

REAL_PYTHON = sys.executable


def log(event, **fields):
    record = dict(event=event, step=os.environ.get("GPU_CHECK_STEP"), cwd=os.getcwd(),
                  arch=os.environ.get("TORCH_CUDA_ARCH_LIST"), extensions_dir=os.environ.get("TORCH_EXTENSIONS_DIR"),
                  max_jobs=os.environ.get("MAX_JOBS"), **fields)
    with open(os.environ["STUB_LOG"], "a") as f:
        f.write(json.dumps(record) + "\n")


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def cuda():
    return os.environ.get("STUB_CUDA", "1") != "0"


def extensions_root():
    return os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "torch_extensions", "py312_cu130")


def gsplat_jit():
    """torch's JIT for gsplat: ninja rebuilds when the command lines (the arch flags) change."""
    build = os.path.join(extensions_root(), "gsplat_cuda")
    arch = os.environ.get("TORCH_CUDA_ARCH_LIST") or "9.0+PTX"
    library, ninja = os.path.join(build, "gsplat_cuda.so"), os.path.join(build, "build.ninja")
    forced = os.environ.get("GPU_CHECK_STEP") is not None and os.environ.get("STUB_REBUILD_IN") == os.environ.get(
        "GPU_CHECK_STEP")
    if os.path.exists(library) and open(ninja).read() == f"arch {arch}\n" and not forced:
        log("gsplat-load", build=build)
        return True
    if os.environ.get("STUB_GSPLAT_BUILD") == "fail":
        print("Projection.cu(12): error: identifier \"glm\" is undefined\nninja: build stopped: subcommand failed.",
              file=sys.stderr)
        log("gsplat-build-failed", build=build)
        return False
    for name in ("Projection.cuda.o", "RasterizeToPixels3DGSFwd.cuda.o", "ext.o", "gsplat_cuda.so"):
        write(os.path.join(build, name), f"{arch} {time.time_ns()}\n")
    write(ninja, f"arch {arch}\n")
    log("gsplat-compile", build=build)
    return True


def cpu_kernel(build):
    folder = os.path.join(extensions_root(), "lucid_rasterizer_cpu_0")
    if build and not os.path.exists(os.path.join(folder, "lucid_rasterizer_cpu_0.so")):
        for name in ("gaussian_rasterizer_cpu.o", "lucid_rasterizer_cpu_0.so"):
            write(os.path.join(folder, name), f"{time.time_ns()}\n")
        log("cpu-kernel-compile", build=folder)
    else:
        log("cpu-kernel-load", build=folder)


def render_backend():
    """A step that renders: loads gsplat on CUDA (the auto backend), the C++ kernel on the CPU."""
    return gsplat_jit() if cuda() else cpu_kernel(build=False)


def option(args, name):
    return args[args.index(name) + 1]


def pip(args):
    target = option(args, "--target")
    if args[-1] != ".":  # the carried wheels
        os.makedirs(target, exist_ok=True)
        log("pip-wheels", target=target, wheels=sorted(os.path.basename(a) for a in args if a.endswith(".whl")))
        return 0
    if os.environ.get("STUB_INRIA_BUILD") == "fail":
        print("cuda_rasterizer/rasterizer_impl.cu(41): error: namespace \"std\" has no member \"uint32_t\"\n"
              "error: command '/usr/local/cuda/bin/nvcc' failed with exit code 2", file=sys.stderr)
        log("inria-build-failed", target=target)
        return 1
    assert os.path.exists("setup.py"), "pip install . outside diff-gaussian-rasterization's source"
    package = os.path.join(target, "diff_gaussian_rasterization")
    write(os.path.join(package, "__init__.py"), "")
    write(os.path.join(package, "_C.cpython-312-x86_64-linux-gnu.so"), f"{os.environ.get('TORCH_CUDA_ARCH_LIST')}\n")
    log("inria-compile", build=package, nvcc_append_flags=os.environ.get("NVCC_APPEND_FLAGS"))
    return 0


def pytest(args):
    """tests/renderer -m gpu: five gpu tests per CUDA backend."""
    built = {"gsplat": gsplat_jit() if cuda() else False,
             "inria": any(glob.glob(os.path.join(p, "diff_gaussian_rasterization", "_C*.so"))
                          for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)}
    require = (os.environ.get("LUCID_REQUIRE_CUDA_BACKENDS") == "1"
               and os.environ.get("STUB_PYTEST_IGNORES_REQUIRE") != "1")
    log("pytest", args=args, require=os.environ.get("LUCID_REQUIRE_CUDA_BACKENDS"))
    passed, failed, skipped = 0, [], []
    for backend, ok in built.items():
        why = "no CUDA device" if not cuda() else f"backend '{backend}' is not installed here (ImportError)"
        if ok:
            passed += 5
        elif require:
            failed.append("FAILED tests/renderer/test_cuda_backends.py::"
                          f"test_cuda_backend_matches_the_reference[{backend}] - {why}")
        else:
            skipped.append(f"SKIPPED [5] tests/renderer/test_cuda_backends.py:429: {why}")
    print("." * passed + "s" * 5 * len(skipped) + "F" * len(failed))
    if skipped or failed:
        print("=========================== short test summary info ============================")
        print("\n".join(skipped + failed))
    print(f"{passed} passed, {5 * len(skipped)} skipped, {len(failed)} failed, 80 deselected")
    return 1 if failed else 0


def launch(args):
    """threestudio_lucid.host.launch: a run folder with the PLY, the test video and a checkpoint."""
    render_backend()
    overrides = dict(a.split("=", 1) for a in args if "=" in a)
    steps = overrides["trainer.max_steps"]
    trial = os.path.join(overrides["exp_root_dir"], "lucid-ism", "a_DSLR_photo@20261207-000000")
    write(os.path.join(trial, "save", f"it{steps}-test.mp4"), "video\n")
    write(os.path.join(trial, "save", f"it{steps}.ply"),
          "ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nend_header\n0\n1\n")
    write(os.path.join(trial, "ckpts", "last.ckpt"), "checkpoint\n")
    log("launch", steps=steps)
    return 0


def ism_step(args):
    render_backend()
    summary = dict(device="NVIDIA H100 80GB HBM3" if cuda() else "cpu", backend="gsplat" if cuda() else "cpu",
                   unet_dtype="torch.float16", resolution=int(option(args, "--resolution")),
                   views=int(option(args, "--views")), gaussians=int(option(args, "--gaussians")),
                   median_step_seconds=0.5, peak_gib=12.5, unet_calls_per_step=2, all_losses_finite=True,
                   projected_steps=5000, projected_minutes=41.7)
    write(option(args, "--json"), json.dumps(summary))
    log("ism-step")
    return 0


def modules(args):
    site, carried = args[0], args[1:]
    for name in carried:
        print(f"{name} 0.0 from {os.path.join(site, name, '__init__.py')}")
    log("modules", site=site, carried=carried)
    return 0


def main(argv):
    if argv[:1] == ["-c"] and "torch.cuda" in argv[1] and "gsplat" not in argv[1]:  # is there a device, which
        log("device-query")
        if not cuda():
            print("AssertionError", file=sys.stderr)
            return 1
        if "get_device_capability" in argv[1]:
            print("9.0")
        return 0
    if argv[:1] == ["-c"] and "gsplat.cuda._backend" in argv[1]:
        return 0 if gsplat_jit() else 1
    if argv[:1] == ["-c"] and "cpu_backend" in argv[1]:
        cpu_kernel(build=True)
        return 0
    if argv[:3] == ["-m", "pip", "install"]:
        return pip(argv[3:])
    if argv[:2] == ["-m", "pytest"]:
        return pytest(argv[2:])
    if argv[:2] == ["-m", "threestudio_lucid.tiny_pipeline"]:
        write(os.path.join(argv[2], "model_index.json"), "{}\n")
        log("pipeline", args=argv[3:])
        return 0
    if argv[:2] == ["-m", "threestudio_lucid.host.launch"]:
        return launch(argv[2:])
    script = os.path.basename(argv[0]) if argv else ""
    if script == "bench_rasterizers.py":
        render_backend()
        log("bench", args=argv[1:])
        print("gsplat@cuda 20000 256x256: 1.2 ms fwd+bwd")
        return 0
    if script == "gpu_ism_step.py":
        return ism_step(argv[1:])
    if script == "gpu_check_report.py" and argv[1:2] == ["modules"]:
        return modules(argv[2:])
    log("real-python", args=argv[:2])
    os.execv(REAL_PYTHON, [REAL_PYTHON] + argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
