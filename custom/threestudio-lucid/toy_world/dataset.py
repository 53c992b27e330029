"""The captioned render set of the toy world, and held-out ground-truth views, cached on disk.

Training views: for each object, cameras on a grid of ``n_azimuths`` azimuths (``k 360 / n``) x the
``elevations_deg`` x the ``camera_distances``, all with one vertical field of view ``fovy_deg`` and
looking at the origin (``random-camera-datamodule``'s conventions, no perturbations). Each render is
captioned with the object's name (``"a red cube"``) and with its view-dependent prompt
(``"a red cube, front view"`` and the ``view_dependent_prompt_front`` form ``"front view of a red
cube"``), the view being chosen with the prompt processor's direction rule (threestudio's):

    overhead if elevation > overhead_threshold, else front if |shift(azimuth)| < front_threshold,
    else back if |shift(azimuth)| > 180 - back_threshold, else side; shift(a) = (a + 180) % 360 - 180.

The thresholds are settings (defaults 60 / 45 / 45, the prompt processor's); they must match the
prompt processor's for the view prompts to select the views the training camera sees.

Held-out views: ``n_eval_views`` azimuths ``k 360 / n_eval_views`` shifted by half the training
azimuth step (never a training azimuth), at ``eval_elevation_deg``, the first camera distance and the
same fovy; with rgb, masks and depth for evaluation.

Renders are made with ``supersample``^2 rays per pixel (rgb and alpha averaged: anti-aliased edges,
as a splat renderer gives) and stored as uint8 rgb/alpha and float16 depth in
``<cache_dir>/<key>.pt``, ``key`` a hash of the settings and of ``RENDERER_VERSION``; the default
``cache_dir`` is ``.threestudio_cache/toy_world`` under the working directory (as threestudio's
text-embedding cache). The renders are regenerated on demand and never committed.
"""
import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .objects import DEFAULT_OBJECTS, get_object, orbit_c2w, render_object

# bump when the renderer or the objects change, so stale caches are not reused
RENDERER_VERSION = 1
DEFAULT_CACHE_DIR = os.path.join(".threestudio_cache", "toy_world")

# threestudio's direction order (index: name) and view-prompt templates, as the prompt processor's
DIRECTION_NAMES = ("side", "front", "back", "overhead")
VIEW_PROMPT_TEMPLATES = {
    "side": ("{}, side view", "side view of {}"),
    "front": ("{}, front view", "front view of {}"),
    "back": ("{}, back view", "backside view of {}"),
    "overhead": ("{}, overhead view", "overhead view of {}"),
}


def shift_azimuth_deg(azimuth: Tensor) -> Tensor:
    """Azimuths in degrees wrapped to ``[-180, 180)``."""
    return (azimuth + 180) % 360 - 180


def view_direction_index(
    elevation: Tensor,
    azimuth: Tensor,
    front_threshold: float = 45.0,
    back_threshold: float = 45.0,
    overhead_threshold: float = 60.0,
) -> Tensor:
    """Direction index (0 side, 1 front, 2 back, 3 overhead) of cameras at ``elevation``,
    ``azimuth`` (degrees): the prompt processor's rule, strict comparisons, overhead wins."""
    elevation, azimuth = torch.as_tensor(elevation), torch.as_tensor(azimuth)
    shifted = shift_azimuth_deg(azimuth)
    idx = torch.zeros(shifted.shape, dtype=torch.long)
    idx[(shifted > -front_threshold) & (shifted < front_threshold)] = 1
    idx[(shifted > 180 - back_threshold) | (shifted < -180 + back_threshold)] = 2
    idx[elevation > overhead_threshold] = 3
    return idx


def view_captions(name: str, direction: str) -> Tuple[str, ...]:
    """The view-dependent captions of ``name`` seen from ``direction``: ``"X, <dir> view"`` and the
    ``view_dependent_prompt_front`` form ``"<dir> view of X"``."""
    return tuple(template.format(name) for template in VIEW_PROMPT_TEMPLATES[direction])


@dataclass
class ToyWorldSettings:
    """Everything that defines the render set (and, with ``bandwidth`` and ``downsample``, the prior).

    ``image_size`` is the render (and the guidance's image) resolution; the latent is
    ``image_size / downsample``. Camera angles are in degrees; ``fovy_deg`` is the vertical field
    of view. ``seed`` seeds the tiny CLIP text encoder's weights (nothing else is random).
    """

    objects: List[str] = field(default_factory=lambda: list(DEFAULT_OBJECTS))
    image_size: int = 64
    downsample: int = 2
    bandwidth: float = 0.1
    n_azimuths: int = 24
    elevations_deg: List[float] = field(default_factory=lambda: [-10.0, 15.0, 40.0, 70.0])
    camera_distances: List[float] = field(default_factory=lambda: [4.0])
    fovy_deg: float = 35.0
    background: List[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    supersample: int = 2
    n_eval_views: int = 8
    eval_elevation_deg: float = 15.0
    front_threshold: float = 45.0
    back_threshold: float = 45.0
    overhead_threshold: float = 60.0
    seed: int = 0

    def __post_init__(self) -> None:
        self.objects = [get_object(o).key for o in self.objects]
        if len(set(self.objects)) != len(self.objects):
            raise ValueError(f"toy world objects must be distinct, got {self.objects}")
        if self.downsample not in (1, 2, 4, 8) or self.image_size % self.downsample:
            raise ValueError(
                f"toy world downsample must be 1, 2, 4 or 8 and divide image_size, got {self.downsample} "
                f"and {self.image_size}"
            )
        if self.bandwidth < 0:
            raise ValueError(f"toy world bandwidth must be >= 0, got {self.bandwidth}")
        if self.n_azimuths < 1 or self.n_eval_views < 1 or not self.elevations_deg or not self.camera_distances:
            raise ValueError("toy world needs at least one azimuth, elevation, distance and eval view")
        self.elevations_deg = [float(e) for e in self.elevations_deg]
        self.camera_distances = [float(d) for d in self.camera_distances]
        self.background = [float(c) for c in self.background]

    @property
    def latent_size(self) -> int:
        return self.image_size // self.downsample

    @property
    def object_names(self) -> List[str]:
        return [get_object(k).name for k in self.objects]

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ToyWorldSettings":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    def render_key(self) -> str:
        """Hash of what the renders depend on (not the prior's bandwidth, downsample nor the seed)."""
        render_fields = {
            k: v for k, v in self.to_dict().items() if k not in ("bandwidth", "downsample", "seed")
        }
        payload = json.dumps({"version": RENDERER_VERSION, **render_fields}, sort_keys=True)
        return hashlib.sha1(payload.encode()).hexdigest()[:16]


@dataclass
class RenderSet:
    """Renders of several objects with their cameras: ``rgb`` uint8 [N,H,W,3] (over the background),
    ``alpha`` uint8 [N,H,W,1], ``depth`` float16 [N,H,W,1] (view z, 0 off the object),
    ``object_index`` [N] (into ``settings.objects``), ``elevation``/``azimuth`` [N] degrees,
    ``distance`` [N], ``fovy`` [N] radians."""

    settings: ToyWorldSettings
    rgb: Tensor
    alpha: Tensor
    depth: Tensor
    object_index: Tensor
    elevation: Tensor
    azimuth: Tensor
    distance: Tensor
    fovy: Tensor

    def __len__(self) -> int:
        return self.rgb.shape[0]

    def rgb_float(self) -> Tensor:
        """[N,H,W,3] in [0, 1]."""
        return self.rgb.float() / 255.0

    def alpha_float(self) -> Tensor:
        return self.alpha.float() / 255.0

    @property
    def c2w(self) -> Tensor:
        return orbit_c2w(self.elevation, self.azimuth, self.distance)

    @property
    def direction_index(self) -> Tensor:
        s = self.settings
        return view_direction_index(
            self.elevation, self.azimuth, s.front_threshold, s.back_threshold, s.overhead_threshold
        )

    def object_name(self, i: int) -> str:
        return get_object(self.settings.objects[int(self.object_index[i])]).name

    def captions_of(self, i: int) -> Tuple[str, ...]:
        """Captions of render ``i``: the object's name and its two view-dependent forms."""
        name = self.object_name(i)
        return (name,) + view_captions(name, DIRECTION_NAMES[int(self.direction_index[i])])

    def subset(self, mask: Tensor) -> "RenderSet":
        fields = ("rgb", "alpha", "depth", "object_index", "elevation", "azimuth", "distance", "fovy")
        return RenderSet(self.settings, **{f: getattr(self, f)[mask] for f in fields})

    def of_object(self, key_or_name: str) -> "RenderSet":
        k = self.settings.objects.index(get_object(key_or_name).key)
        return self.subset(self.object_index == k)

    def tensors(self) -> Dict[str, Tensor]:
        return {
            f: getattr(self, f)
            for f in ("rgb", "alpha", "depth", "object_index", "elevation", "azimuth", "distance", "fovy")
        }


def caption_table(render_set: RenderSet) -> Tuple[List[str], Tensor]:
    """``(captions, members)``: every caption the prior knows and a bool [K,N] membership matrix.

    Captions: ``""`` (every render), each object's name (its renders), and each object's four view
    captions in both forms (its renders in that direction). A view caption with no render (e.g.
    ``overhead`` when no elevation exceeds the threshold) falls back to all of the object's renders.
    """
    settings = render_set.settings
    n = len(render_set)
    captions: List[str] = [""]
    rows: List[Tensor] = [torch.ones(n, dtype=torch.bool)]
    direction = render_set.direction_index
    for k, key in enumerate(settings.objects):
        name = get_object(key).name
        of_object = render_set.object_index == k
        captions.append(name)
        rows.append(of_object)
        for d, direction_name in enumerate(DIRECTION_NAMES):
            members = of_object & (direction == d)
            if not members.any():
                members = of_object
            for caption in view_captions(name, direction_name):
                captions.append(caption)
                rows.append(members)
    return captions, torch.stack(rows, 0)


def _render_views(
    settings: ToyWorldSettings, object_index: Tensor, elevation: Tensor, azimuth: Tensor, distance: Tensor, chunk: int = 32
) -> RenderSet:
    size, ss = settings.image_size, settings.supersample
    fovy = torch.full_like(elevation, math.radians(settings.fovy_deg))
    rgbs, alphas, depths = [], [], []
    for k, key in enumerate(settings.objects):
        idx = (object_index == k).nonzero().squeeze(-1)
        obj = get_object(key)
        for start in range(0, idx.numel(), chunk):
            sel = idx[start : start + chunk]
            c2w = orbit_c2w(elevation[sel], azimuth[sel], distance[sel])
            out = render_object(obj, c2w, fovy[sel], size * ss, size * ss, settings.background)
            hit = out["alpha"]
            # box-filter the supersampled rays; depth averaged over the rays that hit
            rgb = F.avg_pool2d(out["rgb"].permute(0, 3, 1, 2), ss).permute(0, 2, 3, 1)
            alpha = F.avg_pool2d(hit.permute(0, 3, 1, 2), ss).permute(0, 2, 3, 1)
            depth_sum = F.avg_pool2d((out["depth"] * hit).permute(0, 3, 1, 2), ss).permute(0, 2, 3, 1)
            depth = torch.where(alpha > 0, depth_sum / alpha.clamp_min(1e-8), torch.zeros_like(alpha))
            rgbs.append((sel, (rgb * 255).round().to(torch.uint8)))
            alphas.append((alpha * 255).round().to(torch.uint8))
            depths.append(depth.to(torch.float16))
    order = torch.cat([s for s, _ in rgbs])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel())
    return RenderSet(
        settings,
        rgb=torch.cat([r for _, r in rgbs])[inverse],
        alpha=torch.cat(alphas)[inverse],
        depth=torch.cat(depths)[inverse],
        object_index=object_index,
        elevation=elevation,
        azimuth=azimuth,
        distance=distance,
        fovy=fovy,
    )


def training_cameras(settings: ToyWorldSettings) -> Dict[str, Tensor]:
    """The render grid, object-major: ``object_index``, ``elevation``, ``azimuth``, ``distance`` [N]."""
    azimuths = torch.arange(settings.n_azimuths, dtype=torch.float32) * (360.0 / settings.n_azimuths)
    grid = torch.cartesian_prod(
        torch.arange(len(settings.objects), dtype=torch.float32),
        torch.tensor(settings.camera_distances, dtype=torch.float32),
        torch.tensor(settings.elevations_deg, dtype=torch.float32),
        azimuths,
    )
    return {
        "object_index": grid[:, 0].long(),
        "distance": grid[:, 1].contiguous(),
        "elevation": grid[:, 2].contiguous(),
        "azimuth": grid[:, 3].contiguous(),
    }


def eval_azimuths(settings: ToyWorldSettings) -> Tensor:
    """``k 360 / n_eval_views + offset`` with ``offset`` half the training azimuth step (a quarter
    step where that lands on the training grid), so no held-out azimuth is a training azimuth."""
    step = 360.0 / settings.n_azimuths
    base = torch.arange(settings.n_eval_views, dtype=torch.float64) * (360.0 / settings.n_eval_views)
    for offset in (step / 2, step / 4):
        azimuths = (base + offset) % 360.0
        phase = torch.remainder(azimuths, step)
        if not torch.any((phase < 1e-6) | (phase > step - 1e-6)):
            return azimuths.float()
    raise ValueError(
        f"cannot place {settings.n_eval_views} held-out azimuths off a grid of {settings.n_azimuths}: "
        "change n_eval_views or n_azimuths"
    )


def eval_cameras(settings: ToyWorldSettings) -> Dict[str, Tensor]:
    """Held-out cameras: :func:`eval_azimuths` at ``eval_elevation_deg`` and the first distance."""
    azimuths = eval_azimuths(settings)
    grid = torch.cartesian_prod(torch.arange(len(settings.objects), dtype=torch.float32), azimuths)
    m = grid.shape[0]
    return {
        "object_index": grid[:, 0].long(),
        "distance": torch.full((m,), settings.camera_distances[0]),
        "elevation": torch.full((m,), settings.eval_elevation_deg),
        "azimuth": grid[:, 1].contiguous(),
    }


def render_sets(settings: ToyWorldSettings) -> Tuple[RenderSet, RenderSet]:
    """Render the training set and the held-out set (no cache)."""
    return _render_views(settings, **training_cameras(settings)), _render_views(settings, **eval_cameras(settings))


def cache_path(settings: ToyWorldSettings, cache_dir: Optional[str] = None) -> str:
    return os.path.join(cache_dir or DEFAULT_CACHE_DIR, f"{settings.render_key()}.pt")


def load_render_sets(settings: ToyWorldSettings, cache_dir: Optional[str] = None) -> Tuple[RenderSet, RenderSet]:
    """``(training set, held-out set)``, from the cache or rendered now and cached (atomic write)."""
    path = cache_path(settings, cache_dir)
    if os.path.exists(path):
        data = torch.load(path, map_location="cpu")
        if data.get("version") == RENDERER_VERSION:
            return RenderSet(settings, **data["train"]), RenderSet(settings, **data["eval"])
    train, held_out = render_sets(settings)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(
        {"version": RENDERER_VERSION, "settings": settings.to_dict(), "train": train.tensors(), "eval": held_out.tensors()},
        tmp,
    )
    os.replace(tmp, path)
    return train, held_out
