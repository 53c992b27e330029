"""Compare the rasterizer backends side by side: forward, backward and peak memory, as ratios to the
reference backend measured in the same run (prints; asserts nothing).

    .venv/bin/python scripts/bench_rasterizers.py                 # default grid, ~1-2 min on 2 idle cores
    .venv/bin/python scripts/bench_rasterizers.py --sizes 20000 --resolutions 256 --repeats 5

Scene (seeded): N Gaussians in a ball of radius 0.6, seen from threestudio's default distance (2.5)
with fovy 40 degrees, a mix like a scene in training: 90% small splats (scales log-uniform in
0.004-0.04, anisotropic) and 10% large ones (0.04-0.12); opacities 40% faint U(0.01, 0.2), 40%
U(0.2, 0.8), 20% nearly opaque U(0.8, 0.99); SH degree 3. The loss is a fixed random weighting of rgb
(over a white background), depth and alpha, with ``screen_points`` attached, as in training.

Measured, per backend and scene:
- forward: the rasterize call with autograd recording (as in training), best of ``--repeats`` after
  one warm-up call (the reference: ``--reference-repeats``, no warm-up -- its calls take seconds);
- backward: ``loss.backward()`` after it, best of the same runs; fwd+bwd is their sum;
- peak memory: the peak resident set size during the first timed forward+backward above the
  resident size just before it. Linux: freed heap pages are first handed back (malloc_trim), then
  the peak counter is reset through /proc/self/clear_refs and read from VmHWM. Elsewhere: the
  growth of ru_maxrss, a lower bound. On CUDA: torch's peak allocated memory.
``--cuda-only`` measures only the GPU rows (no C++ kernel build, no CPU reference).
On a machine with a GPU, every available CUDA backend (``gsplat``, ``inria``) is measured on the same
scenes as ``<name>@cuda`` rows, against the reference backend run on the GPU (``reference@cuda``).
Ratios: "x" = reference time / backend time; "mem x" = backend peak / reference peak.

OMP_WAIT_POLICY defaults to PASSIVE here (see below); pass OMP_WAIT_POLICY=ACTIVE in the environment
to measure OpenMP's default spinning. The reference costs ~0.25 us per (Gaussian, pixel) tile pair
on 2 cores, so it is skipped where a scene has more than ``--reference-max-pairs`` pairs (default
60M: ~15 s per forward+backward); such rows print absolute times only. ``--reference-max-pairs 0``
skips it always; a large value runs it everywhere (100k Gaussians at 512^2: several minutes).
"""
import argparse
import ctypes
import gc
import math
import os
import platform
import sys
import time

# OpenMP threads that spin-wait lose their core whenever another process is busy, which slowed every
# backend here 10-20x, unevenly, on a shared 2-core machine; passive waiting keeps the comparison
# stable (set OMP_WAIT_POLICY=ACTIVE to measure the default). Must be set before torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from threestudio_lucid.data.progressive_camera import look_at_c2w  # noqa: E402
from threestudio_lucid.renderer import cpu_backend  # noqa: E402
from threestudio_lucid.renderer.camera import camera_from_threestudio  # noqa: E402
from threestudio_lucid.renderer.gaussian_rasterizer import RASTERIZER_BACKENDS  # noqa: E402
from threestudio_lucid.renderer.reference import bin_tiles, project_gaussians  # noqa: E402

CPU_BACKENDS = ("reference", "cpu")


def c2w_at(position):
    """threestudio's OpenGL camera-to-world for a camera at ``position`` looking at the origin, z up."""
    return look_at_c2w(torch.tensor([position], dtype=torch.float32), torch.zeros(1, 3))[0]


def scene(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    means = direction * 0.6 * torch.rand(n, 1, generator=g) ** (1 / 3)
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1)
    small = torch.exp(math.log(0.004) + math.log(10.0) * torch.rand(n, 3, generator=g))
    large = 0.04 + 0.08 * torch.rand(n, 3, generator=g)
    scales = torch.where(torch.rand(n, 1, generator=g) < 0.1, large, small)
    u = torch.rand(n, generator=g)
    level = torch.rand(n, generator=g)
    opacities = torch.where(u < 0.4, 0.01 + 0.19 * level, torch.where(u < 0.8, 0.2 + 0.6 * level, 0.8 + 0.19 * level))
    features = 0.3 * torch.randn(n, 16, 3, generator=g)
    return means, quats, scales, opacities, features


# ---------------------------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------------------------
def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


_LIBC = _libc() if sys.platform.startswith("linux") else None


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def with_peak_memory(fn, device):
    """``(fn(), peak MiB)``: the peak memory during ``fn()`` above the memory in use just before it
    (see the module docstring)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        result = fn()
        torch.cuda.synchronize()
        return result, (torch.cuda.max_memory_allocated() - before) / 2**20
    if _LIBC is not None:
        _LIBC.malloc_trim(0)  # hand freed heap pages back, so the resident size starts at live memory
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        before = _status_kb("VmRSS")
        result = fn()
        return result, (_status_kb("VmHWM") - before) / 1024
    except OSError:
        import resource  # Unix only

        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result = fn()
        return result, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_step(rasterize, params, camera, weights, device):
    """One training-like step: leaves, rasterize, weighted loss. Returns run() -> (fwd s, bwd s)."""

    def run():
        leaves = [t.detach().to(device).clone().requires_grad_() for t in params]
        screen = torch.zeros(leaves[0].shape[0], 3, device=device, requires_grad=True)
        _sync(device)
        start = time.perf_counter()
        out = rasterize(*leaves[:4], camera, features=leaves[4], sh_degree=3,
                        background=torch.ones(3, device=device), screen_points=screen)
        _sync(device)
        mid = time.perf_counter()
        loss = (out["rgb"] * weights[0]).sum() + (out["depth"] * weights[1]).sum() + (out["alpha"] * weights[2]).sum()
        loss.backward()
        _sync(device)
        return mid - start, time.perf_counter() - mid

    return run


def measure(rasterize, params, camera, weights, device, repeats, warm_up=True):
    """(best forward s, best backward s, peak MiB, slowest forward+backward s) over ``repeats`` runs."""
    run = make_step(rasterize, params, camera, weights, device)
    if warm_up:
        run()
    first, memory = with_peak_memory(run, device)  # memory: the first timed run only
    runs = [first] + [run() for _ in range(repeats - 1)]
    return min(r[0] for r in runs), min(r[1] for r in runs), memory, max(r[0] + r[1] for r in runs)


def pixel_pairs(params, camera, res):
    proj = project_gaussians(*params[:3], camera)
    return bin_tiles(proj.means2d, proj.radii, proj.depths, res, res).gauss_ids.numel() * 256


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1000, 5000, 20000, 100000])
    parser.add_argument("--resolutions", type=int, nargs="*", default=[64, 256, 512])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per backend (best is kept)")
    parser.add_argument("--reference-repeats", type=int, default=1, help="timed runs of the slow reference")
    parser.add_argument("--reference-max-pairs", type=float, default=60e6,
                        help="skip the reference above this many (Gaussian, pixel) tile pairs")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--cuda-only", action="store_true",
                        help="only the @cuda rows (reference, gsplat, inria on the GPU); an error without CUDA")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    backends = ["reference"]
    if args.cuda_only:
        if not torch.cuda.is_available():
            sys.exit("error: --cuda-only needs a CUDA device; drop it to measure the CPU backends")
        backends = []
    elif cpu_backend.kernel_available():
        backends.append("cpu")
    else:
        print(f"backend 'cpu' skipped: C++ kernel unavailable ({cpu_backend._STATE.error})")
    cuda_names = [n for n in RASTERIZER_BACKENDS if n not in CPU_BACKENDS + ("auto",)]
    if not torch.cuda.is_available():
        print(f"CUDA backends skipped: no CUDA device (registered: {', '.join(cuda_names) or 'none'})")
        cuda_names = []
    for name in list(cuda_names):
        library = getattr(RASTERIZER_BACKENDS[name], "library", None)
        if library is not None and library.load() is None:
            print(f"backend '{name}' skipped: {library.module_name} unavailable ({library.error})")
            cuda_names.remove(name)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, "
          f"{os.cpu_count()} cores, load average {load:.1f}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}; "
          f"best of {args.repeats} (reference: {args.reference_repeats})")
    if load > (os.cpu_count() or 1):
        print("note: the machine is busy with other processes; absolute times are inflated")
    print("seconds, MiB; x = speedup over the reference on the same device (mem x: fraction of its peak); "
          "@cuda rows ran on the GPU")
    header = (f"{'N':>6} {'res':>4} {'pairs':>7} {'backend':>14} | {'fwd s':>7} {'bwd s':>7} {'f+b s':>7}"
              f" {'mem MiB':>8} | {'fwd x':>7} {'bwd x':>7} {'f+b x':>7} {'mem x':>6}")
    print(header)
    print("-" * len(header))
    headline = None
    cpu = torch.device("cpu")
    for n in args.sizes:
        params = scene(n)
        for res in args.resolutions:
            camera = camera_from_threestudio(c2w_at([2.5, 0.0, 0.0]), math.radians(40), res, res)
            g = torch.Generator().manual_seed(1)
            weights = [torch.rand(res, res, c, generator=g) for c in (3, 1, 1)]
            pairs = pixel_pairs(params, camera, res)  # counted on the CPU: same binning everywhere
            results = {}
            for name in backends:
                if name == "reference" and pairs > args.reference_max_pairs:
                    continue
                slow = name == "reference"  # seconds per call: no warm-up, fewer repeats
                results[name] = measure(RASTERIZER_BACKENDS[name], params, camera, weights, cpu,
                                        args.reference_repeats if slow else args.repeats, warm_up=not slow)
            if cuda_names or args.cuda_only:
                # on the GPU the baseline is the reference backend run there (torch on CUDA)
                dev = torch.device("cuda")
                cam = camera_from_threestudio(c2w_at([2.5, 0.0, 0.0]).to(dev), math.radians(40), res, res)
                for name in ["reference"] + cuda_names:
                    try:
                        results[f"{name}@cuda"] = measure(RASTERIZER_BACKENDS[name], params, cam,
                                                          [w.to(dev) for w in weights], dev, args.repeats)
                    except Exception as e:  # e.g. out of memory: keep the other rows
                        print(f"{n:>6} {res:>4} {pairs / 1e6:>6.1f}M {name + '@cuda':>14} | failed: "
                              f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}", flush=True)
                        torch.cuda.empty_cache()
            for name, (fwd, bwd, mem, slowest) in results.items():
                ref = results.get("reference@cuda" if name.endswith("@cuda") else "reference")
                line = (f"{n:>6} {res:>4} {pairs / 1e6:>6.1f}M {name:>14} | {fwd:>7.3f} {bwd:>7.3f} {fwd + bwd:>7.3f}"
                        f" {mem:>8.1f} | ")
                if ref is None:
                    line += "no reference row (skipped by --reference-max-pairs, or failed)"
                else:
                    line += (f"{ref[0] / fwd:>6.1f}x {ref[1] / bwd:>6.1f}x {(ref[0] + ref[1]) / (fwd + bwd):>6.1f}x"
                             f" {mem / max(ref[2], 1e-9):>6.2f}")
                print(line, flush=True)
                if name == "cpu" and n == 20000 and res == 256 and ref is not None:
                    headline = ((ref[0] + ref[1]) / (fwd + bwd), (ref[0] + ref[1]) / slowest)
    if headline is not None:
        print(f"\ncpu vs reference, forward+backward, 20k Gaussians at 256x256: {headline[0]:.1f}x "
              f"({headline[1]:.1f}x with cpu's slowest run; target >= 30x)")


if __name__ == "__main__":
    main()
