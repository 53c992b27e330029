"""``lucid-progressive-camera-datamodule``: LucidDreamer's camera sampling on threestudio's batches.

Same batch keys and conventions as ``random-camera-datamodule`` (z-up world, azimuth 0 on +x is the
front, OpenGL ``c2w``, elevation/azimuth in degrees, fovy in radians, ``index`` on val/test), with
LucidDreamer's training distribution:

- far, narrow cameras: radius ``radius_range`` (5.2-5.5), fovy ``fovy_range`` (0.32-0.60 rad);
- polar angle (from +z) in ``polar_range`` (45-105 deg, i.e. elevation -15..45) and azimuth in
  ``azimuth_range``, both drawn as ``mid + sign * u^gamma * half_width`` (``rand_cam_gamma`` > 1 biases
  towards the middle of the range; 1 is uniform);
- optionally snapped to a grid of views (``azimuth_step_deg``, ``elevation_grid_deg``: not LucidDreamer's;
  for a prior that has seen only such a grid, e.g. a toy world's renders);
- jitter: camera centre + U(-j/2, j/2), look-at target + N(0, j_t), up + N(0, j_u);
- progressive relaxation: from ``progressive_view_iter``, every ``scale_up_cameras_iter`` steps the
  ranges widen (radius x0.95, fovy x[0.75, 1.1], polar and azimuth x1.5), clamped to the ``max_*``
  ranges. ``update_step`` recomputes the ranges from the step, so it is idempotent and resumes right.

The data module checkpoints the training batches drawn but not yet used, with the generator state
they were drawn from (``rng.ResumableCameraStream``): a run resumed from a checkpoint sees the same
cameras as the run it continues.

Val/test orbits circle at ``default_radius``, ``default_polar`` and ``default_fovy``.
"""
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, IterableDataset

from ..compat import (
    Updateable,
    get_mvp_matrix,
    get_projection_matrix,
    get_ray_directions,
    get_rays,
    parse_structured,
    register,
)
from ..errors import ConfigError
from ..rng import ResumableCameraDataModule, ResumableCameraStream

PROJ_NEAR, PROJ_FAR = 0.01, 100.0


@dataclass
class ProgressiveCameraConfig:
    height: int = 512
    width: int = 512
    batch_size: int = 4
    eval_height: int = 512
    eval_width: int = 512
    eval_batch_size: int = 1
    n_val_views: int = 4
    n_test_views: int = 120

    radius_range: Tuple[float, float] = (5.2, 5.5)
    max_radius_range: Tuple[float, float] = (3.5, 5.0)
    polar_range: Tuple[float, float] = (45.0, 105.0)  # degrees from +z (elevation = 90 - polar)
    max_polar_range: Tuple[float, float] = (45.0, 105.0)
    azimuth_range: Tuple[float, float] = (-180.0, 180.0)  # degrees, 0 = front (+x)
    max_azimuth_range: Tuple[float, float] = (-180.0, 180.0)
    fovy_range: Tuple[float, float] = (0.32, 0.60)  # radians
    max_fovy_range: Tuple[float, float] = (0.16, 0.60)
    rand_cam_gamma: float = 1.0

    jitter_pose: bool = True
    jitter_center: float = 0.05
    jitter_target: float = 0.05
    jitter_up: float = 0.01

    progressive_view: bool = True
    progressive_view_iter: int = 500
    scale_up_cameras_iter: int = 500
    scale_up_factor: float = 0.95
    fovy_scale_up_factor: Tuple[float, float] = (0.75, 1.1)
    phi_scale_up_factor: float = 1.5

    default_radius: float = 3.5
    default_polar: float = 90.0
    default_fovy: float = 0.55
    rays_d_normalize: bool = True

    # training cameras on a grid of views (0 and [] = continuous): azimuths rounded to the nearest multiple of
    # azimuth_step_deg, elevations moved to the nearest of elevation_grid_deg, before the pose is built. For a
    # prior that has seen only such a grid (the toy world's renders: 360 / n_azimuths and its elevations)
    azimuth_step_deg: float = 0.0
    elevation_grid_deg: List[float] = field(default_factory=list)


def relaxed_ranges(cfg: ProgressiveCameraConfig, global_step: int) -> Dict[str, List[float]]:
    """The camera ranges in force at ``global_step`` (LucidDreamer's multiplicative widening)."""
    ranges = {
        "radius": list(cfg.radius_range),
        "polar": list(cfg.polar_range),
        "azimuth": list(cfg.azimuth_range),
        "fovy": list(cfg.fovy_range),
    }
    if not cfg.progressive_view or global_step < cfg.progressive_view_iter:
        return ranges
    first = math.ceil(cfg.progressive_view_iter / cfg.scale_up_cameras_iter) * cfg.scale_up_cameras_iter
    n_events = 0 if global_step < first else (global_step - first) // cfg.scale_up_cameras_iter + 1
    f_lo, f_hi = cfg.fovy_scale_up_factor
    for _ in range(n_events):
        ranges["fovy"] = [max(cfg.max_fovy_range[0], ranges["fovy"][0] * f_lo), min(cfg.max_fovy_range[1], ranges["fovy"][1] * f_hi)]
        ranges["radius"] = [
            max(cfg.max_radius_range[0], ranges["radius"][0] * cfg.scale_up_factor),
            max(cfg.max_radius_range[1], ranges["radius"][1] * cfg.scale_up_factor),
        ]
        ranges["polar"] = [
            max(cfg.max_polar_range[0], ranges["polar"][0] / cfg.phi_scale_up_factor),
            min(cfg.max_polar_range[1], ranges["polar"][1] * cfg.phi_scale_up_factor),
        ]
        ranges["azimuth"] = [
            max(cfg.max_azimuth_range[0], ranges["azimuth"][0] * cfg.phi_scale_up_factor),
            min(cfg.max_azimuth_range[1], ranges["azimuth"][1] * cfg.phi_scale_up_factor),
        ]
    return ranges


def biased_uniform(n: int, lo: float, hi: float, gamma: float = 1.0) -> torch.Tensor:
    """``mid + sign * u^gamma * half_width`` with u ~ U[0,1): uniform for gamma = 1."""
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    sign = torch.where(torch.rand(n) > 0.5, -torch.ones(n), torch.ones(n))
    return mid + sign * torch.rand(n) ** gamma * half


def look_at_c2w(centers: torch.Tensor, targets: torch.Tensor, up_noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """OpenGL camera-to-world ``[right, up, -lookat | centre]`` with world up +z."""
    lookat = F.normalize(targets - centers, dim=-1)
    world_up = torch.tensor([0.0, 0.0, 1.0]).expand_as(lookat)
    right = F.normalize(torch.cross(lookat, world_up, dim=-1), dim=-1)
    up = torch.cross(right, lookat, dim=-1)
    if up_noise is not None:
        up = up + up_noise
    up = F.normalize(up, dim=-1)
    c2w = torch.zeros(centers.shape[0], 4, 4)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, up, -lookat, centers
    c2w[:, 3, 3] = 1.0
    return c2w


def camera_batch(
    c2w: torch.Tensor, fovy: torch.Tensor, elevation_deg, azimuth_deg, radius, height: int, width: int, normalize: bool
) -> Dict[str, Any]:
    """threestudio's batch keys for cameras ``c2w`` [B,4,4] with vertical fov ``fovy`` [B] (rad)."""
    focal = 0.5 * height / torch.tan(0.5 * fovy)
    directions = get_ray_directions(height, width, 1.0)[None].repeat(c2w.shape[0], 1, 1, 1)
    directions[..., :2] = directions[..., :2] / focal[:, None, None, None]
    rays_o, rays_d = get_rays(directions, c2w, keepdim=True, normalize=normalize)
    proj = get_projection_matrix(fovy, width / height, PROJ_NEAR, PROJ_FAR)
    positions = c2w[:, :3, 3]
    return {
        "rays_o": rays_o,
        "rays_d": rays_d,
        "mvp_mtx": get_mvp_matrix(c2w, proj),
        "proj_mtx": proj,
        "camera_positions": positions,
        "c2w": c2w,
        "light_positions": positions.clone(),
        "elevation": elevation_deg,
        "azimuth": azimuth_deg,
        "camera_distances": radius,
        "height": height,
        "width": width,
        "fovy": fovy,
    }


def snap_to_grid(elevation: torch.Tensor, azimuth: torch.Tensor, azimuth_step: float,
                 elevation_grid: List[float]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Azimuths to the nearest multiple of ``azimuth_step`` (0: unchanged), elevations to the nearest value of
    ``elevation_grid`` ([]: unchanged), in degrees."""
    if azimuth_step > 0:
        azimuth = torch.round(azimuth / azimuth_step) * azimuth_step
    if len(elevation_grid):
        grid = torch.tensor([float(e) for e in elevation_grid], dtype=elevation.dtype)
        elevation = grid[(elevation[:, None] - grid[None, :]).abs().argmin(dim=1)]
    return elevation, azimuth


def spherical(radius: torch.Tensor, elevation_deg: torch.Tensor, azimuth_deg: torch.Tensor) -> torch.Tensor:
    e, a = torch.deg2rad(elevation_deg), torch.deg2rad(azimuth_deg)
    return torch.stack([radius * e.cos() * a.cos(), radius * e.cos() * a.sin(), radius * e.sin()], dim=-1)


class ProgressiveCameraIterableDataset(ResumableCameraStream, IterableDataset, Updateable):
    def __init__(self, cfg: ProgressiveCameraConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self._init_stream()
        self.ranges = relaxed_ranges(cfg, 0)

    def _apply_step(self, step: Optional[int]) -> None:
        step = step or 0
        if self.__dict__.get("_ranges_step") != step:  # reached several times a step; reading the config is slow
            self.ranges = relaxed_ranges(self.cfg, step)
            self._ranges_step = step

    def __iter__(self):
        while True:
            yield {}

    def _sample_batch(self) -> Dict[str, Any]:
        cfg, r, n = self.cfg, self.ranges, self.cfg.batch_size
        radius = biased_uniform(n, *r["radius"])
        polar = biased_uniform(n, *r["polar"], gamma=cfg.rand_cam_gamma)
        azimuth = biased_uniform(n, *r["azimuth"], gamma=cfg.rand_cam_gamma)
        elevation = 90.0 - polar
        elevation, azimuth = snap_to_grid(elevation, azimuth, cfg.azimuth_step_deg, cfg.elevation_grid_deg)
        azimuth = (azimuth + 180.0) % 360.0 - 180.0
        fovy = torch.rand(n) * (r["fovy"][1] - r["fovy"][0]) + r["fovy"][0]
        centers = spherical(radius, elevation, azimuth)
        targets = torch.zeros_like(centers)
        up_noise = None
        if cfg.jitter_pose:
            centers = centers + torch.rand_like(centers) * cfg.jitter_center - cfg.jitter_center / 2
            targets = targets + torch.randn_like(centers) * cfg.jitter_target
            up_noise = torch.randn_like(centers) * cfg.jitter_up
        c2w = look_at_c2w(centers, targets, up_noise)
        return camera_batch(c2w, fovy, elevation, azimuth, radius, cfg.height, cfg.width, cfg.rays_d_normalize)


class ProgressiveCameraEvalDataset(Dataset):
    """Orbit at the default radius, polar angle and fovy (val: n views, test: n views incl. 360)."""

    def __init__(self, cfg: ProgressiveCameraConfig, split: str) -> None:
        super().__init__()
        self.cfg = cfg
        n = cfg.n_val_views if split == "val" else cfg.n_test_views
        self.azimuth = torch.linspace(0, 360.0, n + 1)[:n] if split == "val" else torch.linspace(0, 360.0, n)

    def __len__(self):
        return len(self.azimuth)

    def __getitem__(self, index):
        return index

    def collate(self, indices) -> Dict[str, Any]:
        cfg = self.cfg
        idx = torch.as_tensor(indices)
        azimuth = self.azimuth[idx]
        n = len(idx)
        elevation = torch.full((n,), 90.0 - cfg.default_polar)
        radius = torch.full((n,), cfg.default_radius)
        fovy = torch.full((n,), cfg.default_fovy)
        c2w = look_at_c2w(spherical(radius, elevation, azimuth), torch.zeros(n, 3))
        batch = camera_batch(c2w, fovy, elevation, azimuth, radius, cfg.eval_height, cfg.eval_width, cfg.rays_d_normalize)
        batch["index"] = idx
        return batch


@register("lucid-progressive-camera-datamodule")
class ProgressiveCameraDataModule(ResumableCameraDataModule, pl.LightningDataModule):
    cfg: ProgressiveCameraConfig

    def __init__(self, cfg=None) -> None:
        super().__init__()
        self.cfg = parse_structured(ProgressiveCameraConfig, cfg)
        c = self.cfg
        for key in ("height", "width", "eval_height", "eval_width", "batch_size", "n_val_views", "n_test_views"):
            value = getattr(c, key)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"data.{key}={value!r} must be a whole number >= 1.")
        if c.eval_batch_size != 1:
            raise ConfigError(f"data.eval_batch_size must be 1, got {c.eval_batch_size}.")
        for key in ("radius_range", "polar_range", "azimuth_range", "fovy_range", "max_radius_range",
                    "max_polar_range", "max_azimuth_range", "max_fovy_range", "fovy_scale_up_factor"):
            value = list(getattr(c, key))
            if len(value) != 2 or not all(isinstance(v, (int, float)) for v in value) or value[0] > value[1]:
                raise ConfigError(f"data.{key}={value} must be two numbers [low, high] with low <= high.")
        if c.scale_up_cameras_iter <= 0:
            raise ConfigError(f"data.scale_up_cameras_iter must be > 0, got {c.scale_up_cameras_iter}.")
        if not 0 < c.default_polar < 180:
            raise ConfigError(f"data.default_polar must be in (0, 180) degrees, got {c.default_polar}.")
        if not 0 <= c.azimuth_step_deg <= 360:
            raise ConfigError(f"data.azimuth_step_deg={c.azimuth_step_deg} must be in [0, 360] degrees (0: continuous "
                              "azimuths; the toy world's grid is 360 / n_azimuths).")
        if any(not -90 <= e <= 90 for e in c.elevation_grid_deg):
            raise ConfigError(f"data.elevation_grid_deg={list(c.elevation_grid_deg)} must hold elevations in "
                              "[-90, 90] degrees ([]: continuous elevations).")

    def setup(self, stage=None) -> None:
        if stage in (None, "fit"):
            self.train_dataset = ProgressiveCameraIterableDataset(self.cfg)
        if stage in (None, "fit", "validate"):
            self.val_dataset = ProgressiveCameraEvalDataset(self.cfg, "val")
        if stage in (None, "test", "predict"):
            self.test_dataset = ProgressiveCameraEvalDataset(self.cfg, "test")

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_dataset, batch_size=None, num_workers=0, collate_fn=self.train_dataset.collate)

    def _eval_loader(self, dataset) -> DataLoader:
        return DataLoader(dataset, batch_size=1, num_workers=0, collate_fn=dataset.collate)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_dataset)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_dataset)

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_dataset)
