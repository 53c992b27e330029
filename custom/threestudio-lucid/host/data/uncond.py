"""``random-camera-datamodule``: random orbit cameras for training, fixed orbits for val/test.

Behaviour follows threestudio's ``data/uncond.py`` (same config fields and defaults, same batch keys,
same sampling distributions and the same order of random draws, so a given seed gives the same
cameras). Conventions:

- the world is right-handed and z-up; a camera at elevation ``e`` and azimuth ``a`` (degrees) and
  distance ``d`` sits at ``d (cos e cos a, cos e sin a, sin e)``: azimuth 0 is +x, the "front" view;
- ``c2w`` is OpenGL style, ``[right, up, -lookat | position]``, looking at the (perturbed) centre
  with world up +z;
- focal length ``0.5 H / tan(fovy / 2)``; ``proj_mtx`` uses near 0.01 and far 100;
- ``elevation``/``azimuth`` are in degrees, ``fovy`` in radians, ``height``/``width`` Python ints.

Departures from threestudio, all without changing any value in a batch:
- configuration mistakes that threestudio reports with a bare ``assert`` (or at the first batch) are
  :class:`ConfigError` naming the key, raised when the data module is built;
- the val/test dataset builds its rays per view when a view is read, not all at once (120 test views
  at 512x512 would hold ~0.4 GB of ray directions).
"""
import bisect
import math
import random

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import ListConfig
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate

from .. import debug, register, warn
from ..utils.base import Updateable
from ..utils.config import ConfigError, config_to_primitive, parse_structured
from ..utils.ops import get_mvp_matrix, get_projection_matrix, get_ray_directions, get_rays
from ...rng import ResumableCameraDataModule, ResumableCameraStream
from ..utils.typing import *

# near/far planes of proj_mtx (hard-coded in threestudio too)
PROJ_NEAR, PROJ_FAR = 0.01, 100.0
LIGHT_SAMPLE_STRATEGIES = ("dreamfusion", "magic3d")


@dataclass
class RandomCameraDataModuleConfig:
    # int, or one value per resolution stage (OmegaConf has no Union of containers, hence Any)
    height: Any = 64
    width: Any = 64
    batch_size: Any = 1
    # steps at which the next (height, width, batch_size) stage starts; len = stages - 1
    resolution_milestones: List[int] = field(default_factory=lambda: [])
    eval_height: int = 512
    eval_width: int = 512
    eval_batch_size: int = 1  # must be 1
    n_val_views: int = 1
    n_test_views: int = 120
    elevation_range: Tuple[float, float] = (-10, 90)  # degrees
    azimuth_range: Tuple[float, float] = (-180, 180)  # degrees
    camera_distance_range: Tuple[float, float] = (1, 1.5)
    fovy_range: Tuple[float, float] = (40, 70)  # degrees, vertical (along the height)
    camera_perturb: float = 0.1  # uniform in [-p, p] per axis, added to the camera position
    center_perturb: float = 0.2  # normal std, added to the look-at centre
    up_perturb: float = 0.02  # normal std, added to the up vector
    light_position_perturb: float = 1.0
    light_distance_range: Tuple[float, float] = (0.8, 1.5)
    eval_elevation_deg: float = 15.0
    eval_camera_distance: float = 1.5
    eval_fovy_deg: float = 70.0
    light_sample_strategy: str = "dreamfusion"  # or "magic3d"
    batch_uniform_azimuth: bool = True  # stratified azimuths: one per 1/B of the range
    progressive_until: int = 0  # steps over which elevation/azimuth ranges widen from the eval view

    rays_d_normalize: bool = True


# --------------------------------------------------------------------------------------------------
# configuration checks
# --------------------------------------------------------------------------------------------------
def _sizes(cfg: Any, name: str) -> List[int]:
    """``data.<name>``: a whole number >= 1, or a list of them (one per resolution stage)."""
    value = getattr(cfg, name)
    if isinstance(value, ListConfig):
        value = config_to_primitive(value)
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
        raise ConfigError(
            f"data.{name}={value!r} must be a whole number >= 1 or a list of them, one per resolution "
            f"stage (e.g. data.{name}={1 if name == 'batch_size' else 64})."
        )
    return values


def _resolution_stages(cfg: Any) -> Tuple[List[int], List[int], List[int], List[int]]:
    """``(heights, widths, batch_sizes, milestones)`` with milestones prefixed by -1 (stage 0)."""
    heights, widths = _sizes(cfg, "height"), _sizes(cfg, "width")
    batch_sizes = _sizes(cfg, "batch_size")
    if not len(heights) == len(widths) == len(batch_sizes):
        raise ConfigError(
            f"data.height, data.width and data.batch_size must have the same number of stages, got "
            f"{heights}, {widths}, {batch_sizes}: give one value each or lists of equal length."
        )
    milestones = [int(m) for m in cfg.resolution_milestones]
    if len(heights) == 1:
        if milestones:
            warn("Ignoring resolution_milestones since height and width are not changing")
        return heights, widths, batch_sizes, [-1]
    if len(milestones) != len(heights) - 1:
        raise ConfigError(
            f"data.resolution_milestones must have {len(heights) - 1} entries (one fewer than the "
            f"{len(heights)} stages of data.height/width/batch_size), got {milestones}."
        )
    return heights, widths, batch_sizes, [-1] + milestones


def _check_config(cfg: Any) -> None:
    if cfg.eval_batch_size != 1:
        raise ConfigError(
            f"data.eval_batch_size must be 1 (validation and test render one view at a time), "
            f"got {cfg.eval_batch_size}: remove it or set data.eval_batch_size=1."
        )
    if cfg.light_sample_strategy not in LIGHT_SAMPLE_STRATEGIES:
        raise ConfigError(
            f"Unknown data.light_sample_strategy '{cfg.light_sample_strategy}': "
            f"use one of {', '.join(LIGHT_SAMPLE_STRATEGIES)}."
        )
    for name in ("eval_height", "eval_width"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"data.{name}={getattr(cfg, name)} must be a whole number >= 1 (e.g. data.{name}=512).")
    _resolution_stages(cfg)


# --------------------------------------------------------------------------------------------------
# camera geometry shared by the train and eval datasets
# --------------------------------------------------------------------------------------------------
def _uniform(n: int, lo: float, hi: float) -> Float[Tensor, "n"]:
    return torch.rand(n) * (hi - lo) + lo


def _spherical_to_cartesian(
    distance: Float[Tensor, "B"], elevation: Float[Tensor, "B"], azimuth: Float[Tensor, "B"]
) -> Float[Tensor, "B 3"]:
    """z-up spherical coordinates (radians) to positions; azimuth runs from +x towards +y."""
    flat = distance * torch.cos(elevation)
    return torch.stack([flat * torch.cos(azimuth), flat * torch.sin(azimuth), distance * torch.sin(elevation)], dim=-1)


def _look_at_c2w(
    position: Float[Tensor, "B 3"], center: Float[Tensor, "B 3"], up: Float[Tensor, "B 3"]
) -> Float[Tensor, "B 4 4"]:
    """OpenGL camera-to-world matrices ``[right, up, -forward | position]`` looking at ``center``."""
    forward = F.normalize(center - position, dim=-1)
    right = F.normalize(torch.linalg.cross(forward, up.expand_as(forward), dim=-1), dim=-1)
    true_up = F.normalize(torch.linalg.cross(right, forward, dim=-1), dim=-1)
    c2w = torch.zeros(position.shape[0], 4, 4, dtype=position.dtype)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = true_up
    c2w[:, :3, 2] = -forward
    c2w[:, :3, 3] = position
    c2w[:, 3, 3] = 1.0
    return c2w


def _scaled_directions(
    unit_focal_dirs: Float[Tensor, "H W 3"], fovy: Float[Tensor, "B"], height: int
) -> Float[Tensor, "B H W 3"]:
    """Per-camera ray directions: the focal-1 grid with x, y divided by ``0.5 H / tan(fovy / 2)``."""
    focal = 0.5 * height / torch.tan(0.5 * fovy)
    dirs = unit_focal_dirs[None].repeat(fovy.shape[0], 1, 1, 1)
    dirs[..., :2] = dirs[..., :2] / focal[:, None, None, None]
    return dirs


def _world_up(n: int) -> Float[Tensor, "n 3"]:
    return torch.tensor([0.0, 0.0, 1.0]).expand(n, 3).clone()


# --------------------------------------------------------------------------------------------------
# training: a fresh random batch per step
# --------------------------------------------------------------------------------------------------
class RandomCameraIterableDataset(ResumableCameraStream, IterableDataset, Updateable):
    """Endless stream of empty items; :meth:`collate` samples a whole batch of cameras.

    Load it with ``DataLoader(batch_size=None, num_workers=0, collate_fn=dataset.collate)``: the
    resolution and ranges change in :meth:`update_step`, which worker processes would not see.
    """

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg: RandomCameraDataModuleConfig = cfg
        _check_config(cfg)
        self.heights, self.widths, self.batch_sizes, self.resolution_milestones = _resolution_stages(cfg)
        self.directions_unit_focals = [
            get_ray_directions(H=h, W=w, focal=1.0) for h, w in zip(self.heights, self.widths)
        ]
        self._set_stage(0)
        self.elevation_range = list(cfg.elevation_range)
        self.azimuth_range = list(cfg.azimuth_range)
        self.camera_distance_range = list(cfg.camera_distance_range)
        self.fovy_range = list(cfg.fovy_range)
        # the data module checkpoints the batches drawn but not yet used, with the generator state they
        # were drawn from: a resumed run sees the same cameras
        self._init_stream()

    def _set_stage(self, stage: int) -> None:
        self.height: int = self.heights[stage]
        self.width: int = self.widths[stage]
        self.batch_size: int = self.batch_sizes[stage]
        self.directions_unit_focal = self.directions_unit_focals[stage]

    def _apply_step(self, global_step: Optional[int]) -> None:
        """The resolution stage and ranges at ``global_step`` (``None``: as configured, before the
        first ``update_step``, as threestudio's data set starts)."""
        if global_step is None:
            self._set_stage(0)
            self.elevation_range = list(self.cfg.elevation_range)
            self.azimuth_range = list(self.cfg.azimuth_range)
            return
        self._set_stage(bisect.bisect_right(self.resolution_milestones, global_step) - 1)
        debug(f"Training height: {self.height}, width: {self.width}, batch_size: {self.batch_size}")
        self.progressive_view(global_step)

    def progressive_view(self, global_step: int) -> None:
        """Blend elevation/azimuth ranges from the eval view (elevation ``eval_elevation_deg``,
        azimuth 0) to the configured ranges: ``r = min(1, step / (progressive_until + 1))``.

        With the default ``progressive_until=0`` this still gives ``r = 0`` at step 0, so the very
        first training batch looks at the front from the eval elevation (threestudio does the same).
        Distance and fov ranges are not blended (threestudio has that code commented out).
        """
        r = min(1.0, global_step / (self.cfg.progressive_until + 1))
        eval_elev = self.cfg.eval_elevation_deg
        self.elevation_range = [(1 - r) * eval_elev + r * bound for bound in self.cfg.elevation_range]
        self.azimuth_range = [r * bound for bound in self.cfg.azimuth_range]

    def __iter__(self):
        while True:
            yield {}

    # ---- sampling (the order of random draws matches threestudio's) ----
    def _sample_elevation_deg(self, n: int) -> Float[Tensor, "n"]:
        lo, hi = self.elevation_range
        if random.random() < 0.5:
            # uniform in degrees: over-samples the poles relative to area
            return _uniform(n, lo, hi)
        # uniform on the sphere: inverse-CDF sampling of sin(elevation)
        sin_lo, sin_hi = math.sin(math.radians(lo)), math.sin(math.radians(hi))
        return torch.asin(_uniform(n, sin_lo, sin_hi)) / math.pi * 180.0

    def _sample_azimuth_deg(self, n: int) -> Float[Tensor, "n"]:
        lo, hi = self.azimuth_range
        if self.cfg.batch_uniform_azimuth:
            # stratified: sample k falls in the k-th of n equal bins, so a batch spans the range
            return (torch.rand(n) + torch.arange(n)) / n * (hi - lo) + lo
        return _uniform(n, lo, hi)

    def _sample_lights(self, camera_positions: Float[Tensor, "B 3"], light_distances: Float[Tensor, "B"]):
        n = camera_positions.shape[0]
        if self.cfg.light_sample_strategy == "dreamfusion":
            # direction ~ normalize(camera position + N(0, light_position_perturb^2))
            noise = torch.randn(n, 3) * self.cfg.light_position_perturb
            return F.normalize(camera_positions + noise, dim=-1) * light_distances[:, None]
        if self.cfg.light_sample_strategy == "magic3d":
            # a frame whose z is the camera direction; the light sits 30-90 degrees above its xy-plane
            frame_z = F.normalize(camera_positions, dim=-1)
            frame_x = F.normalize(
                torch.stack([frame_z[:, 1], -frame_z[:, 0], torch.zeros_like(frame_z[:, 0])], dim=-1), dim=-1
            )
            frame_y = F.normalize(torch.linalg.cross(frame_z, frame_x, dim=-1), dim=-1)
            frame = torch.stack([frame_x, frame_y, frame_z], dim=-1)
            light_azimuth = torch.rand(n) * math.pi * 2 - math.pi
            light_elevation = torch.rand(n) * math.pi / 3 + math.pi / 6
            local = _spherical_to_cartesian(light_distances, light_elevation, light_azimuth)
            return (frame @ local[:, :, None])[:, :, 0]
        raise ConfigError(
            f"Unknown data.light_sample_strategy '{self.cfg.light_sample_strategy}': "
            f"use one of {', '.join(LIGHT_SAMPLE_STRATEGIES)}."
        )

    def _sample_batch(self) -> Dict[str, Any]:
        cfg, n = self.cfg, self.batch_size
        elevation_deg = self._sample_elevation_deg(n)
        azimuth_deg = self._sample_azimuth_deg(n)
        camera_distances = _uniform(n, *self.camera_distance_range)
        camera_positions = _spherical_to_cartesian(
            camera_distances, elevation_deg * math.pi / 180, azimuth_deg * math.pi / 180
        )

        camera_positions = camera_positions + (torch.rand(n, 3) * 2 * cfg.camera_perturb - cfg.camera_perturb)
        center = torch.randn(n, 3) * cfg.center_perturb  # around the origin
        up = _world_up(n) + torch.randn(n, 3) * cfg.up_perturb

        fovy = _uniform(n, *self.fovy_range) * math.pi / 180
        light_distances = _uniform(n, *cfg.light_distance_range)
        light_positions = self._sample_lights(camera_positions, light_distances)

        c2w = _look_at_c2w(camera_positions, center, up)
        directions = _scaled_directions(self.directions_unit_focal, fovy, self.height)
        # rays_d must be unit length for volume renderers (rays_d_normalize=True)
        rays_o, rays_d = get_rays(directions, c2w, keepdim=True, normalize=cfg.rays_d_normalize)
        proj_mtx = get_projection_matrix(fovy, self.width / self.height, PROJ_NEAR, PROJ_FAR)
        mvp_mtx = get_mvp_matrix(c2w, proj_mtx)
        # the last batch's matrices, as threestudio keeps them on the dataset
        self.proj_mtx, self.fovy = proj_mtx, fovy

        return {
            "rays_o": rays_o,
            "rays_d": rays_d,
            "mvp_mtx": mvp_mtx,
            "camera_positions": camera_positions,
            "c2w": c2w,
            "light_positions": light_positions,
            "elevation": elevation_deg,
            "azimuth": azimuth_deg,
            "camera_distances": camera_distances,
            "height": self.height,
            "width": self.width,
            "fovy": fovy,
            "proj_mtx": proj_mtx,
        }


# --------------------------------------------------------------------------------------------------
# validation / test: a fixed orbit at the eval elevation, distance and fov
# --------------------------------------------------------------------------------------------------
class RandomCameraDataset(Dataset):
    """``n_val_views`` (split "val") or ``n_test_views`` (any other split) views on a circle.

    Val azimuths are ``linspace(0, 360, n + 1)[:n]`` (first and last views differ); test azimuths
    are ``linspace(0, 360, n)`` (a closed loop for videos). Lights sit at the cameras.
    """

    def __init__(self, cfg: Any, split: str) -> None:
        super().__init__()
        self.cfg: RandomCameraDataModuleConfig = cfg
        _check_config(cfg)
        self.split = split
        self.n_views = cfg.n_val_views if split == "val" else cfg.n_test_views

        if split == "val":
            azimuth_deg = torch.linspace(0, 360.0, self.n_views + 1)[: self.n_views]
        else:
            azimuth_deg = torch.linspace(0, 360.0, self.n_views)
        elevation_deg = torch.full_like(azimuth_deg, cfg.eval_elevation_deg)
        camera_distances = torch.full_like(azimuth_deg, cfg.eval_camera_distance)
        self.elevation_deg, self.azimuth_deg = elevation_deg, azimuth_deg
        self.elevation, self.azimuth = elevation_deg * math.pi / 180, azimuth_deg * math.pi / 180
        self.camera_distances = camera_distances

        self.camera_positions = _spherical_to_cartesian(camera_distances, self.elevation, self.azimuth)
        self.light_positions = self.camera_positions
        self.c2w = _look_at_c2w(
            self.camera_positions, torch.zeros_like(self.camera_positions), _world_up(self.n_views)
        )
        self.fovy = torch.full_like(azimuth_deg, cfg.eval_fovy_deg) * math.pi / 180
        self.proj_mtx = get_projection_matrix(self.fovy, cfg.eval_width / cfg.eval_height, PROJ_NEAR, PROJ_FAR)
        self.mvp_mtx = get_mvp_matrix(self.c2w, self.proj_mtx)
        self._unit_focal_dirs = get_ray_directions(H=cfg.eval_height, W=cfg.eval_width, focal=1.0)

    def __len__(self):
        return self.n_views

    def _rays(self, index: int):
        view = slice(index, index + 1)
        directions = _scaled_directions(self._unit_focal_dirs, self.fovy[view], self.cfg.eval_height)
        rays_o, rays_d = get_rays(directions, self.c2w[view], keepdim=True, normalize=self.cfg.rays_d_normalize)
        return rays_o[0], rays_d[0]

    def __getitem__(self, index):
        rays_o, rays_d = self._rays(index)
        return {
            "index": index,
            "rays_o": rays_o,
            "rays_d": rays_d,
            "mvp_mtx": self.mvp_mtx[index],
            "c2w": self.c2w[index],
            "camera_positions": self.camera_positions[index],
            "light_positions": self.light_positions[index],
            "elevation": self.elevation_deg[index],
            "azimuth": self.azimuth_deg[index],
            "camera_distances": self.camera_distances[index],
            "height": self.cfg.eval_height,
            "width": self.cfg.eval_width,
            "fovy": self.fovy[index],
            "proj_mtx": self.proj_mtx[index],
        }

    def collate(self, batch):
        out = default_collate(batch)
        # default_collate turns the ints into tensors; systems expect plain ints
        out["height"], out["width"] = self.cfg.eval_height, self.cfg.eval_width
        return out


@register("random-camera-datamodule")
class RandomCameraDataModule(ResumableCameraDataModule, pl.LightningDataModule):
    cfg: RandomCameraDataModuleConfig

    def __init__(self, cfg: Optional[Union[dict, DictConfig]] = None) -> None:
        super().__init__()
        self.cfg = parse_structured(RandomCameraDataModuleConfig, cfg)
        _check_config(self.cfg)

    def setup(self, stage=None) -> None:
        if stage in (None, "fit"):
            self.train_dataset = RandomCameraIterableDataset(self.cfg)
        if stage in (None, "fit", "validate"):
            self.val_dataset = RandomCameraDataset(self.cfg, "val")
        if stage in (None, "test", "predict"):
            self.test_dataset = RandomCameraDataset(self.cfg, "test")

    def prepare_data(self):
        pass

    @staticmethod
    def general_loader(dataset, batch_size, collate_fn=None) -> DataLoader:
        # num_workers must stay 0: update_step changes the train dataset's attributes in place
        return DataLoader(dataset, num_workers=0, batch_size=batch_size, collate_fn=collate_fn)

    def train_dataloader(self) -> DataLoader:
        return self.general_loader(self.train_dataset, batch_size=None, collate_fn=self.train_dataset.collate)

    def val_dataloader(self) -> DataLoader:
        return self.general_loader(self.val_dataset, batch_size=1, collate_fn=self.val_dataset.collate)

    def test_dataloader(self) -> DataLoader:
        return self.general_loader(self.test_dataset, batch_size=1, collate_fn=self.test_dataset.collate)

    def predict_dataloader(self) -> DataLoader:
        return self.general_loader(self.test_dataset, batch_size=1, collate_fn=self.test_dataset.collate)


__all__ = [
    "RandomCameraDataModuleConfig",
    "RandomCameraIterableDataset",
    "RandomCameraDataset",
    "RandomCameraDataModule",
]
