"""Splats placed from the toy world's analytic objects, the way a good fit lays them: flat discs on the
surface, facing out, with the surface's colour; or round splats filling the inside."""
import math

import torch

from threestudio_lucid.toy_world.objects import get_object


def fibonacci_directions(n: int) -> torch.Tensor:
    i = torch.arange(n, dtype=torch.float64) + 0.5
    polar = torch.acos(1 - 2 * i / n)
    azimuth = math.pi * (1 + 5 ** 0.5) * i
    return torch.stack([torch.cos(azimuth) * torch.sin(polar), torch.sin(azimuth) * torch.sin(polar),
                        torch.cos(polar)], -1).float()


def quaternion_z_to(normals: torch.Tensor) -> torch.Tensor:
    """(w, x, y, z) rotating +z onto each unit normal."""
    z = torch.tensor([0.0, 0.0, 1.0]).expand_as(normals)
    q = torch.cat([(1 + (z * normals).sum(-1))[:, None], torch.cross(z, normals, dim=-1)], -1)
    flip = q[:, 0] < 1e-6  # normal = -z: half a turn about x
    q[flip] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    return torch.nn.functional.normalize(q, dim=-1)


def surface_hits(key: str, n_rays: int):
    """Rays from a sphere of radius 2 towards the origin: hit points, normals and albedos of the object
    (all of its surface for an object star-shaped about the origin)."""
    obj = get_object(key)
    d = fibonacci_directions(n_rays)
    t, normal, albedo = obj.intersect(2.0 * d, -d)
    hit = torch.isfinite(t)
    return (2.0 * d - t[:, None] * d)[hit], normal[hit], albedo[hit]


def surface_splats(key: str, n_rays: int = 6000, opacity: float = 0.9, thickness: float = 1e-4):
    """Flat discs on the object's surface: ``(means, quats, scales, opacities, colors)``; each disc's
    radius (standard deviation) is 0.6 of the distance to its third nearest neighbour."""
    points, normals, colors = surface_hits(key, n_rays)
    d = torch.cdist(points, points)
    spacing = d.topk(4, largest=False).values[:, 3]
    scales = torch.stack([0.6 * spacing, 0.6 * spacing, torch.full_like(spacing, thickness)], -1)
    return points, quaternion_z_to(normals), scales, torch.full((len(points),), opacity), colors


INSIDE = {  # the solid of each object whose inside has a closed form
    "ball": lambda p: p.norm(dim=-1) <= 0.45,
    "cube": lambda p: p.abs().max(dim=-1).values <= 0.33,
    "donut": lambda p: ((p[:, :2].norm(dim=-1) - 0.38) ** 2 + p[:, 2] ** 2).sqrt() <= 0.15,
}


def solid_splats(key: str, spacing: float, opacity: float = 0.5):
    """Round splats on a cubic lattice filling the object, each of standard deviation half the lattice
    spacing, with the object's colour: a fit whose inside holds splats too."""
    r = torch.arange(-0.6, 0.6 + 1e-9, spacing) + spacing / 2
    grid = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    means = grid[INSIDE[key](grid)]
    n = len(means)
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1
    color = get_object(key).primitives[0].color.float()
    return means, quats, torch.full((n, 3), 0.5 * spacing), torch.full((n,), opacity), color.expand(n, 3)
