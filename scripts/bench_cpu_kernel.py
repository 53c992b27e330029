"""The ``cpu`` backend's kernel against a git ref's, side by side in one run: forward and backward time,
and nanoseconds per blend (prints; asserts nothing).

    .venv/bin/python scripts/bench_cpu_kernel.py                        # working tree vs 98d61b7
    .venv/bin/python scripts/bench_cpu_kernel.py --ref HEAD~1 --sizes 20000 --resolutions 256 --views 1 4

Scenes: ``bench_rasterizers.scene`` (the working tree's), seen from threestudio's default distance,
``--views`` cameras around the object; the loss is a fixed random weighting of rgb, depth and alpha
with ``screen_points`` attached, as in training. Each tree renders all views of a case the way its
renderer does: the ref one ``rasterize_cpu`` call per view if it has no batched entry, the working
tree one ``rasterize_cpu_views`` call. Each measurement is a fresh process on one tree (the ref
exported with ``git archive``, as in bench_training_step.py); rounds alternate the trees; a row is the
median over rounds of the best of ``--repeats`` calls.

A blend is one (Gaussian, pixel) contribution composited (counted by the working tree's kernel on the
same inputs; both trees composite the same ones). ns/blend is per thread: time x threads / blends.

The stated per-blend limit ("limit" rows): ``scripts/blend_limit.cpp``, the arithmetic and memory
traffic of that many blends and nothing else (forward: exp, alpha, the float64 transmittance, five
sums, the 12-byte record; backward: the record replayed into feature, alpha and geometry gradients),
over blends laid out contiguously, compiled like the kernel and run on the same threads. The kernel
also has to find the blends (tile lists, bounds, rows, early termination); the gap is that search.
The working tree's outputs are also checked against the reference backend (images within 1e-4,
gradients within 1e-3 relative) on the first case where that is affordable.
"""
import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))


def worker(args):
    import torch

    from threestudio_lucid.renderer import cpu_backend
    from threestudio_lucid.renderer.camera import camera_from_threestudio

    sys.path.insert(0, os.path.join(args.tree, "scripts"))
    from bench_rasterizers import c2w_at

    scene = json.loads(args.scene)
    n, res, n_views = scene["n"], scene["res"], scene["views"]
    params = load_scene(n)
    cameras = [camera_from_threestudio(c2w_at([2.5 * math.cos(a), 2.5 * math.sin(a), 0.3]), math.radians(40), res, res)
               for a in [2 * math.pi * i / n_views for i in range(n_views)]]
    g = torch.Generator().manual_seed(1)
    weights = [torch.rand(res, res, 5, generator=g) for _ in cameras]
    batched = getattr(cpu_backend, "rasterize_cpu_views", None)
    cpu_backend.load_kernel(strict=True)

    def run():
        leaves = [t.clone().requires_grad_() for t in params]
        screens = [torch.zeros(n, 3, requires_grad=True) for _ in cameras]
        start = time.perf_counter()
        if batched is not None:
            out = batched(leaves[0], leaves[1], [leaves[2]] * n_views, leaves[3], cameras, features=leaves[4],
                          sh_degrees=[3] * n_views, screen_points=screens)
            images = torch.cat([out["rgb"], out["depth"], out["alpha"]], dim=-1).unbind(0)
        else:
            outs = [cpu_backend.rasterize_cpu(leaves[0], leaves[1], leaves[2], leaves[3], cam, features=leaves[4],
                                              sh_degree=3, screen_points=sp) for cam, sp in zip(cameras, screens)]
            images = [torch.cat([o["rgb"], o["depth"], o["alpha"]], dim=-1) for o in outs]
        mid = time.perf_counter()
        loss = sum((img * w).sum() for img, w in zip(images, weights))
        loss.backward()
        end = time.perf_counter()
        return mid - start, end - mid

    run()
    runs = [run() for _ in range(args.repeats)]
    result = {"fwd": min(r[0] for r in runs), "bwd": min(r[1] for r in runs), "threads": torch.get_num_threads()}
    print("RESULT " + json.dumps(result), flush=True)


def load_scene(n):
    from bench_rasterizers import scene

    return [t.contiguous() for t in scene(n)]


def count_blends_and_check(n, res, n_views, check):
    """Blends of the case (the working tree's kernel) and, with ``check``, its parity with the reference."""
    import torch

    from threestudio_lucid.renderer import cpu_backend
    from threestudio_lucid.renderer.camera import camera_from_threestudio
    from threestudio_lucid.renderer.reference import (ALPHA_MAX, ALPHA_MIN, MIN_DISCRIMINANT, RADIUS_SIGMAS, T_MIN,
                                                      rasterize_reference)
    from bench_rasterizers import c2w_at

    params = load_scene(n)
    cameras = [camera_from_threestudio(c2w_at([2.5 * math.cos(a), 2.5 * math.sin(a), 0.3]), math.radians(40), res, res)
               for a in [2 * math.pi * i / n_views for i in range(n_views)]]
    out = cpu_backend.load_kernel(strict=True).rasterize_forward(
        params[0], params[1], params[2][None].contiguous(), params[3], params[4], params[0].new_empty(0),
        cpu_backend.camera_params(cameras, 0.2), torch.full((n_views,), 3, dtype=torch.long), True, res, res, 16,
        ALPHA_MAX, ALPHA_MIN, T_MIN, MIN_DISCRIMINANT, RADIUS_SIGMAS)
    spans = out[15]
    blends = int((spans[:, 2] - spans[:, 1]).sum())
    verdict = None
    if check:
        results = []
        for rasterize in (cpu_backend.rasterize_cpu, rasterize_reference):
            leaves = [t.clone().requires_grad_() for t in params]
            o = rasterize(*leaves[:4], cameras[0], features=leaves[4], sh_degree=3)
            image = torch.cat([o["rgb"], o["depth"], o["alpha"]], dim=-1)
            (image * torch.rand(image.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
            results.append((image.detach(), [t.grad for t in leaves]))
        (img, grads), (ref_img, ref_grads) = results
        image_err = float((img - ref_img).abs().max())
        grad_err = max(float((g - r).norm() / r.norm().clamp_min(1e-12)) for g, r in zip(grads, ref_grads))
        verdict = (f"parity with the reference (1 view): max image error {image_err:.1e} (limit 1e-4), "
                   f"largest relative gradient error {grad_err:.1e} (limit 1e-3): "
                   f"{'ok' if image_err <= 1e-4 and grad_err <= 1e-3 else 'FAILED'}")
    return blends, verdict


def blend_limit(blends, repeats):
    """ns per blend per thread of ``scripts/blend_limit.cpp``: a blend's arithmetic and memory traffic
    alone (see the docstring), built here with torch's cpp_extension; best of ``repeats``."""
    import torch
    from torch.utils import cpp_extension

    from threestudio_lucid.renderer import cpu_backend

    source = os.path.join(REPO, "scripts", "blend_limit.cpp")
    if not hasattr(torch.ops.lucid_blend_limit, "blend_limit"):
        cflags, ldflags = cpu_backend._compiler_flags()  # the kernel's
        cpp_extension.load(name="lucid_blend_limit", sources=[source], extra_cflags=cflags, extra_ldflags=ldflags,
                           is_python_module=False, verbose=False)
    runs = [torch.ops.lucid_blend_limit.blend_limit(blends) for _ in range(repeats + 1)][1:]
    scale = 1e9 * torch.get_num_threads() / blends
    return min(r[0] for r in runs) * scale, min(r[1] for r in runs) * scale


def main():
    from bench_training_step import export_ref, run_script_worker

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="98d61b7", help="git ref whose kernel to compare with")
    parser.add_argument("--sizes", type=int, nargs="*", default=[20000, 100000])
    parser.add_argument("--resolutions", type=int, nargs="*", default=[256])
    parser.add_argument("--views", type=int, nargs="*", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (best is kept)")
    parser.add_argument("--rounds", type=int, default=2, help="measurements per tree and case, interleaved")
    parser.add_argument("--no-check", action="store_true", help="skip the parity check against the reference")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    parser.add_argument("--scene", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    with tempfile.TemporaryDirectory(prefix="lucid-bench-kernel-") as tmp:
        ref_tree, ref_shim = export_ref(args.ref, os.path.join(tmp, "ref"))
        trees = {args.ref: (ref_tree, ref_shim), "working tree": (REPO, None)}
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        print(f"{os.cpu_count()} cores, load average {load:.1f}, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}; "
              f"best of {args.repeats} calls, median over {args.rounds} interleaved rounds; ns/blend per thread")
        print(f"{'N':>7} {'res':>4} {'views':>5} {'blends':>8} | {'tree':>14} | {'fwd ms':>8} {'bwd ms':>8} "
              f"{'fwd ns/bl':>9} {'bwd ns/bl':>9} | {'f+b x':>6}")
        checked = args.no_check
        for n in args.sizes:
            for res in args.resolutions:
                for n_views in args.views:
                    blends, verdict = count_blends_and_check(n, res, n_views, check=not checked and n <= 20000)
                    checked = checked or verdict is not None
                    scene = json.dumps({"n": n, "res": res, "views": n_views})
                    results = {name: [] for name in trees}
                    for _ in range(args.rounds):
                        for name, (tree, shim) in trees.items():
                            results[name].append(run_script_worker(
                                __file__, ["--scene", scene, "--repeats", str(args.repeats)], tree, shim, tmp, name))
                    table = {name: {k: statistics.median(r[k] for r in runs) for k in ("fwd", "bwd", "threads")}
                             for name, runs in results.items()}
                    ref_total = table[args.ref]["fwd"] + table[args.ref]["bwd"]
                    for name, t in table.items():
                        ns = 1e9 * t["threads"] / max(blends, 1)
                        print(f"{n:>7} {res:>4} {n_views:>5} {blends / 1e6:>7.2f}M | {name[:14]:>14} | "
                              f"{t['fwd'] * 1e3:>8.1f} {t['bwd'] * 1e3:>8.1f} {t['fwd'] * ns:>9.1f} {t['bwd'] * ns:>9.1f} | "
                              f"{ref_total / (t['fwd'] + t['bwd']):>5.2f}x", flush=True)
                    limit_fwd, limit_bwd = blend_limit(blends, args.repeats)
                    print(f"{'':>29} | {'limit':>14} | {'':>8} {'':>8} {limit_fwd:>9.1f} {limit_bwd:>9.1f} |")
                    if verdict:
                        print(f"  {verdict}")


if __name__ == "__main__":
    sys.exit(main())
