"""Time the reference torch rasterizer, forward and forward+backward (prints; asserts nothing).

    .venv/bin/python scripts/bench_reference_rasterizer.py [--repeats 5] [--threads 2]

Scene: N Gaussians uniform in a ball of radius 0.6 around the origin, seen from threestudio's
default distance (2.5) with fovy 40 degrees; scales 0.01-0.05 (a few pixels at 128^2), random
rotations, opacities U(0.05, 0.95), SH degree 3. Reported: the fastest of the repeats in seconds
(the minimum is the least disturbed by other processes on a shared machine).
"""
import argparse
import math
import time

import torch

from threestudio_lucid.renderer.camera import camera_from_threestudio
from threestudio_lucid.renderer.reference import bin_tiles, project_gaussians, rasterize_reference


def look_at_c2w(position):
    position = torch.tensor(position, dtype=torch.float32)
    lookat = -position / position.norm()
    right = torch.linalg.cross(lookat, torch.tensor([0.0, 0.0, 1.0]))
    right = right / right.norm()
    up = torch.linalg.cross(right, lookat)
    c2w = torch.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, -lookat, position
    return c2w


def scene(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    means = direction * 0.6 * torch.rand(n, 1, generator=g) ** (1 / 3)
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1)
    scales = 0.01 + 0.04 * torch.rand(n, 3, generator=g)
    opacities = 0.05 + 0.9 * torch.rand(n, generator=g)
    features = 0.3 * torch.randn(n, 16, 3, generator=g)
    return means, quats, scales, opacities, features


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--sizes", type=int, nargs="*", default=[1000, 5000])
    parser.add_argument("--resolutions", type=int, nargs="*", default=[64, 128])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, best of {args.repeats}")
    print(f"{'N':>6} {'res':>5} {'pairs':>10} {'forward s':>10} {'fwd+bwd s':>10}")
    for n in args.sizes:
        for res in args.resolutions:
            camera = camera_from_threestudio(look_at_c2w([2.5, 0.0, 0.0]), math.radians(40), res, res)
            params = scene(n)
            proj = project_gaussians(*params[:3], camera)
            pairs = bin_tiles(proj.means2d, proj.radii, proj.depths, res, res).gauss_ids.numel() * 256

            def forward():
                with torch.no_grad():
                    rasterize_reference(*params[:4], camera, features=params[4], sh_degree=3)

            def forward_backward():
                leaves = [t.clone().requires_grad_() for t in params]
                screen = torch.zeros(n, 3, requires_grad=True)
                out = rasterize_reference(*leaves[:4], camera, features=leaves[4], sh_degree=3,
                                          background=torch.ones(3), screen_points=screen)
                (out["rgb"].sum() + out["depth"].sum()).backward()

            forward()  # warm-up
            print(f"{n:>6} {res:>5} {pairs:>10} {timed(forward, args.repeats):>10.3f} "
                  f"{timed(forward_backward, args.repeats):>10.3f}")


if __name__ == "__main__":
    main()
