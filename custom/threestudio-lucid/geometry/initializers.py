"""Initial point clouds for Gaussian splats, and the isotropic nearest-neighbour scale.

Every initialiser is a pure function that returns ``(points [N, 3] float32, colors [N, 3] float32 or
None)`` on the CPU; the geometry turns them into Gaussians. ``None`` colours mean "use the configured
initial colour". Random draws come from the ``generator`` argument (the global torch RNG, seeded by
``pl.seed_everything``, when it is ``None``).

Shapes (``radius`` = R):
- ``ball``: uniform in the volume of the ball of radius R (threestudio-3dgs' random init):
  r = R * cbrt(u), direction uniform on the sphere.
- ``sphere_shell``: uniform on the sphere surface |x| = R.
- ``sphere_solid``: LucidDreamer's "sphere": r ~ U[0, R], polar angle ~ U[0, pi], azimuth ~ U[0, 2 pi].
  Every point lies inside the ball, but the density grows towards the centre and the poles.
- ``box``: uniform in the cube [-R, R]^3 (LucidDreamer's "box" is R = 0.5).
- ``point_e``: a Point-E text-to-point-cloud sample (4096 points) densified by jittering each point inside
  a small ball (LucidDreamer: 0.05), see :func:`point_e_points`.
"""
import importlib.util
import math

import numpy as np
import torch

from ..errors import ConfigError

# simple-knn clamps the mean squared neighbour distance at 1e-7 before the log (so duplicates stay finite).
MIN_NEIGHBOR_DIST2 = 1e-7

# Point-E's text pipeline (base40M-textvec + upsample) always returns this many points.
POINT_E_NUM_POINTS = 4096
# Point-E is not on PyPI; LucidDreamer's requirements.txt installs it from its repository
POINT_E_INSTALL = "pip install git+https://github.com/openai/point-e.git"


def _uniform(n: int, generator=None) -> torch.Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64)


def _unit_directions(n: int, generator=None) -> torch.Tensor:
    """Directions uniform on the unit sphere (normalised isotropic Gaussians)."""
    d = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    norm = d.norm(dim=-1, keepdim=True)
    # a zero vector has probability 0; guard anyway so it cannot produce NaN
    d = torch.where(norm > 0, d / norm.clamp_min(1e-300), torch.tensor([0.0, 0.0, 1.0], dtype=d.dtype))
    return d


def _check_count(n: int) -> None:
    if int(n) != n or n < 1:
        raise ConfigError(f"init_num_pts={n} must be a positive integer")


def _check_radius(radius: float) -> None:
    if not radius > 0:
        raise ConfigError(f"init_radius={radius} must be > 0")


def ball_points(n: int, radius: float, generator=None):
    """Uniform in the ball of radius ``radius``: r = R cbrt(u)."""
    _check_count(n)
    _check_radius(radius)
    r = radius * torch.pow(_uniform(n, generator), 1.0 / 3.0)
    pts = _unit_directions(n, generator) * r[:, None]
    return pts.float(), None


def sphere_shell_points(n: int, radius: float, generator=None):
    """Uniform on the sphere |x| = ``radius``."""
    _check_count(n)
    _check_radius(radius)
    pts = _unit_directions(n, generator) * radius
    return pts.float(), None


def sphere_solid_points(n: int, radius: float, generator=None):
    """LucidDreamer's sphere init: r ~ U[0, R], theta ~ U[0, pi], phi ~ U[0, 2 pi] (z is the polar axis)."""
    _check_count(n)
    _check_radius(radius)
    theta = _uniform(n, generator) * math.pi
    phi = _uniform(n, generator) * 2.0 * math.pi
    r = _uniform(n, generator) * radius
    pts = torch.stack(
        [r * torch.sin(theta) * torch.sin(phi), r * torch.sin(theta) * torch.cos(phi), r * torch.cos(theta)],
        dim=-1,
    )
    return pts.float(), None


def box_points(n: int, radius: float, generator=None):
    """Uniform in the cube [-R, R]^3."""
    _check_count(n)
    _check_radius(radius)
    pts = (torch.rand(n, 3, generator=generator, dtype=torch.float64) * 2.0 - 1.0) * radius
    return pts.float(), None


def jitter_point_cloud(base_points, n: int, jitter_radius: float, base_colors=None, generator=None):
    """Densify a small cloud to exactly ``n`` points by placing copies of each point inside a ball.

    Each base point gets ``ceil(n / M)`` copies offset by r ~ U[0, jitter_radius] in a direction with
    theta ~ U[0, pi], phi ~ U[0, 2 pi] (LucidDreamer's jitter); a random subset of ``n`` is kept, so every
    returned point lies within ``jitter_radius`` of a base point. Colours are carried along.
    LucidDreamer shares one set of 20 offsets between all points; here every copy draws its own.
    """
    _check_count(n)
    base = torch.as_tensor(np.asarray(base_points), dtype=torch.float64).reshape(-1, 3)
    m = base.shape[0]
    if m == 0:
        raise ConfigError("the point_e initialiser got an empty point cloud: try another prompt or init_type")
    copies = max(1, math.ceil(n / m))
    theta = _uniform(m * copies, generator) * math.pi
    phi = _uniform(m * copies, generator) * 2.0 * math.pi
    r = _uniform(m * copies, generator) * jitter_radius
    offsets = torch.stack(
        [r * torch.sin(theta) * torch.sin(phi), r * torch.sin(theta) * torch.cos(phi), r * torch.cos(theta)],
        dim=-1,
    )
    idx = torch.arange(m).repeat_interleave(copies)
    keep = torch.randperm(m * copies, generator=generator)[:n]
    pts = (base[idx] + offsets)[keep]
    colors = None
    if base_colors is not None:
        cols = torch.as_tensor(np.asarray(base_colors), dtype=torch.float64).reshape(-1, 3)
        colors = cols[idx][keep].float()
    return pts.float(), colors


def point_e_available() -> bool:
    return importlib.util.find_spec("point_e") is not None


def _point_e_sample(prompt: str, device: str):
    """Run Point-E's text pipeline (base40M-textvec, then the upsampler; 1024 + 3072 points).

    Returns numpy ``(xyz [4096, 3], rgb [4096, 3])``. The checkpoints are downloaded by Point-E itself.
    """
    from point_e.diffusion.configs import DIFFUSION_CONFIGS, diffusion_from_config
    from point_e.diffusion.sampler import PointCloudSampler
    from point_e.models.configs import MODEL_CONFIGS, model_from_config
    from point_e.models.download import load_checkpoint

    dev = torch.device(device)
    models, diffusions = [], []
    for name in ("base40M-textvec", "upsample"):
        model = model_from_config(MODEL_CONFIGS[name], dev)
        model.eval()
        model.load_state_dict(load_checkpoint(name, dev))
        models.append(model)
        diffusions.append(diffusion_from_config(DIFFUSION_CONFIGS[name]))
    sampler = PointCloudSampler(
        device=dev,
        models=models,
        diffusions=diffusions,
        num_points=[1024, POINT_E_NUM_POINTS - 1024],
        aux_channels=["R", "G", "B"],
        guidance_scale=[3.0, 0.0],
        model_kwargs_key_filter=("texts", ""),  # the upsampler is unconditional
    )
    last = None
    for last in sampler.sample_batch_progressive(batch_size=1, model_kwargs=dict(texts=[prompt])):
        pass
    cloud = sampler.output_to_point_clouds(last)[0]
    rgb = np.stack([cloud.channels[c] for c in ("R", "G", "B")], axis=-1)
    return np.asarray(cloud.coords), rgb


def point_e_points(prompt: str, n: int, jitter_radius: float = 0.05, device: str = "cpu", generator=None,
                   sampler=None):
    """LucidDreamer's Point-E init: sample a 4096-point cloud for ``prompt``, flip y and lift z by 0.15
    (its placement in the z-up world), then jitter each point inside a ``jitter_radius`` ball up to ``n``
    points. Point-E's colours come back too; the geometry uses them only with ``init_use_source_colors``
    (LucidDreamer's ``use_pointe_rgb``; by default it starts grey). ``sampler(prompt) -> (xyz, rgb)``
    replaces the Point-E call (tests)."""
    if sampler is None:
        if not point_e_available():
            raise ConfigError(
                "system.geometry.init_type=point_e needs the point_e package, which is not installed: "
                f"install it ({POINT_E_INSTALL}) or set system.geometry.init_type=sphere_solid "
                "(LucidDreamer's init_shape 'sphere'; also ball, sphere_shell, box or ply)"
            )
        if not prompt:
            raise ConfigError(
                "init_type='point_e' needs a text prompt: set system.geometry.init_prompt "
                "(e.g. init_prompt: ${system.prompt_processor.prompt})"
            )
        xyz, rgb = _point_e_sample(prompt, device)
    else:
        xyz, rgb = sampler(prompt)
    xyz = np.array(xyz, dtype=np.float64, copy=True).reshape(-1, 3)
    xyz[:, 1] = -xyz[:, 1]
    xyz[:, 2] = xyz[:, 2] + 0.15
    return jitter_point_cloud(xyz, n, jitter_radius, base_colors=rgb, generator=generator)


SHAPE_INITIALIZERS = {
    "ball": ball_points,
    "sphere_shell": sphere_shell_points,
    "sphere_solid": sphere_solid_points,
    "box": box_points,
}


def nearest_neighbor_dist2(points, k: int = 3) -> torch.Tensor:
    """Mean squared distance from each point to its ``k`` nearest other points, clamped at 1e-7.

    The CPU counterpart of simple-knn's ``distCUDA2`` (which is approximate: it searches nearby boxes of a
    Morton-sorted list; this is exact). With fewer than ``k + 1`` points all other points are used; a single
    point gets the clamp value. Uses scipy's cKDTree, or chunked ``torch.cdist`` when scipy is missing.
    """
    pts = torch.as_tensor(points).detach().to("cpu", torch.float64).reshape(-1, 3)
    n = pts.shape[0]
    kk = min(k, n - 1)
    if kk <= 0:
        return torch.full((n,), MIN_NEIGHBOR_DIST2, dtype=torch.float32)
    try:
        from scipy.spatial import cKDTree
    except ImportError:  # pragma: no cover - scipy is installed wherever tests run
        cKDTree = None
    if cKDTree is not None:
        dist, _ = cKDTree(pts.numpy()).query(pts.numpy(), k=kk + 1)
        # column 0 is the point itself (or a duplicate at distance 0, which is equivalent)
        d2 = torch.from_numpy(np.asarray(dist)[:, 1:] ** 2)
    else:
        rows = []
        for start in range(0, n, 4096):
            block = torch.cdist(pts[start:start + 4096], pts).pow(2)
            rows.append(block.topk(kk + 1, dim=1, largest=False).values[:, 1:])
        d2 = torch.cat(rows, dim=0)
    return d2.mean(dim=1).clamp_min(MIN_NEIGHBOR_DIST2).float()


def nearest_neighbor_log_scales(points, k: int = 3) -> torch.Tensor:
    """Isotropic initial log-scales [N, 3]: log(sqrt(mean squared distance to the k nearest neighbours))."""
    d2 = nearest_neighbor_dist2(points, k)
    return torch.log(torch.sqrt(d2))[:, None].repeat(1, 3)
