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

Worlds beyond the default (each off by default, so a default world, its render cache key and its
renders are what they were before these settings existed):

- multi-modal (``variants``): each object is rendered in several appearance variants (``objects.VARIANTS``:
  stripes, spots, checks, markings, shape details) under the SAME captions, so a caption's renders
  hold several modes and the prior's posterior mean at high noise is a blend of them, as a real
  text-to-image model's is. ``variants`` is a count ``n`` (the first ``n`` of each object's variants,
  ``plain`` first), ``"all"``, or a list of names (``"striped"``: that variant of every object;
  ``"cube:striped"``: of the cube only; objects no entry names keep ``plain``).
- biased (``view_distribution: front_heavy``): the renders are drawn front-heavy, as photos are: the
  render at azimuth ``a`` appears ``r(a) = floor(R^((1 + cos a) / 2) + 1/2)`` times in the render set
  (``R = front_repeats``, default 8: 8 copies at the front, 3 at the sides, 1 at the back), every
  elevation alike. Repeated renders are identical mixture components, so this is a mixture weight
  ``r(a)`` per render without a new prior. Held-out views stay uniform in azimuth.
- without view words (``caption_views: false``): renders are captioned with the object's name only,
  so no caption pins a direction down (train with ``system.guidance.view_dependent_prompting=false``:
  view-suffixed prompts are text this world does not know, i.e. the empty prompt).

Held-out views: ``n_eval_views`` azimuths ``k 360 / n_eval_views`` shifted by half the training
azimuth step (never a training azimuth), at ``eval_elevation_deg``, the first camera distance and the
same fovy; with rgb, masks and depth for evaluation, for every variant.

Renders are made with ``supersample``^2 rays per pixel (rgb and alpha averaged: anti-aliased edges,
as a splat renderer gives) and stored as uint8 rgb/alpha and float16 depth in
``<cache_dir>/<key>.pt``, ``key`` a hash of the settings and of ``RENDERER_VERSION``; the default
``cache_dir`` is ``.threestudio_cache/toy_world`` under the working directory (as threestudio's
text-embedding cache). The renders are regenerated on demand and never committed.
"""
import hashlib
import io
import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..atomic_files import CACHE_HINT, write_bytes
from .objects import DEFAULT_OBJECTS, get_object, get_variant, orbit_c2w, render_object, variant_names

# bump when the renderer or the objects change, so stale caches are not reused
RENDERER_VERSION = 1
# bump when the variants (objects.VARIANTS) change; it enters only the keys of worlds that use them,
# so the caches of plain worlds stay valid
VARIANTS_VERSION = 1
VIEW_DISTRIBUTIONS = ("uniform", "front_heavy")
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
    ``variants``, ``view_distribution`` / ``front_repeats`` and ``caption_views`` make the multi-modal,
    biased and view-word-free worlds (module docstring); their defaults give the plain world.
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
    variants: Union[int, str, List[str]] = 1
    view_distribution: str = "uniform"
    front_repeats: int = 8
    caption_views: bool = True

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
        self.variants = self._checked_variants(self.variants)
        if self.view_distribution not in VIEW_DISTRIBUTIONS:
            allowed = ", ".join(VIEW_DISTRIBUTIONS)
            raise ValueError(f"toy world view_distribution: got {self.view_distribution!r}; use one of {allowed}")
        if isinstance(self.front_repeats, bool) or not isinstance(self.front_repeats, int) or self.front_repeats < 1:
            raise ValueError(f"toy world front_repeats: got {self.front_repeats!r}; use an integer >= 1")
        if not isinstance(self.caption_views, bool):
            raise ValueError(f"toy world caption_views: got {self.caption_views!r}; use true or false")

    def _checked_variants(self, value: Any) -> Union[int, str, List[str]]:
        """``variants`` in one of its three forms (a count, ``"all"``, a list of names), after folding
        the command line's spellings (``["3"]``, ``["all"]``, ``"3"``) into them."""
        if isinstance(value, (list, tuple)) and len(value) == 1 and (str(value[0]).isdigit() or value[0] == "all"):
            value = value[0]
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        available = {key: variant_names(key) for key in self.objects}
        allowed = (
            "use a count 1.." + str(min(len(v) for v in available.values())) + ", 'all', or variant names "
            "('name' for every object, 'object:name' for one); this world's objects have: "
            + "; ".join(f"{k}: {', '.join(v)}" for k, v in available.items())
        )
        if isinstance(value, bool) or not isinstance(value, (int, str, list, tuple)):
            raise ValueError(f"toy world variants: got {value!r}; {allowed}")
        if isinstance(value, int):
            short = [k for k, v in available.items() if len(v) < value]
            if value < 1 or short:
                fewer = f", but {', '.join(short)} {'has' if len(short) == 1 else 'have'} fewer" if short else ""
                raise ValueError(f"toy world variants: got {value}{fewer}; {allowed}")
            return value
        if value == "all":
            return value
        if isinstance(value, str) or not value or not all(isinstance(v, str) for v in value):
            raise ValueError(f"toy world variants: got {value!r}; {allowed}")
        names = list(value)
        for name in names:
            key, _, variant = name.rpartition(":")
            if key and key not in available:
                raise ValueError(f"toy world variants: {name!r} names {key!r}, which is not in this world; {allowed}")
            bad = [k for k in ([key] if key else self.objects) if variant not in available[k]]
            if bad:
                raise ValueError(f"toy world variants: {name!r} is not a variant of {', '.join(bad)}; {allowed}")
        if len(set(names)) != len(names):
            raise ValueError(f"toy world variants: got {names}, which repeats a name; {allowed}")
        return names

    def variants_of(self, key_or_name: str) -> List[str]:
        """The variants of an object rendered in this world, in catalogue order."""
        key = get_object(key_or_name).key
        names = variant_names(key)
        if isinstance(self.variants, int):
            return list(names[: self.variants])
        if self.variants == "all":
            return list(names)
        chosen = {v.rpartition(":")[2] for v in self.variants if v.rpartition(":")[0] in ("", key)}
        return [n for n in names if n in chosen] or ["plain"]

    @property
    def variant_table(self) -> Dict[str, List[str]]:
        """``{object key: its rendered variants}``."""
        return {key: self.variants_of(key) for key in self.objects}

    @property
    def is_multimodal(self) -> bool:
        """Whether some object is rendered in more than one variant."""
        return any(len(v) > 1 for v in self.variant_table.values())

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
        """Hash of what the renders depend on (not the prior's bandwidth, downsample, seed nor the
        caption mode). The variants and the view distribution enter only when they differ from the
        plain world's, so a plain world's key is what it was before they existed."""
        later = ("variants", "view_distribution", "front_repeats", "caption_views")
        render_fields = {
            k: v for k, v in self.to_dict().items() if k not in ("bandwidth", "downsample", "seed") + later
        }
        table = self.variant_table
        if any(v != ["plain"] for v in table.values()):
            render_fields.update(variants=table, variants_version=VARIANTS_VERSION)
        if self.view_distribution != "uniform":
            render_fields.update(view_distribution=self.view_distribution, front_repeats=self.front_repeats)
        payload = json.dumps({"version": RENDERER_VERSION, **render_fields}, sort_keys=True)
        return hashlib.sha1(payload.encode()).hexdigest()[:16]


RENDER_FIELDS = ("rgb", "alpha", "depth", "object_index", "elevation", "azimuth", "distance", "fovy", "variant_index")


@dataclass
class RenderSet:
    """Renders of several objects with their cameras: ``rgb`` uint8 [N,H,W,3] (over the background),
    ``alpha`` uint8 [N,H,W,1], ``depth`` float16 [N,H,W,1] (view z, 0 off the object),
    ``object_index`` [N] (into ``settings.objects``), ``elevation``/``azimuth`` [N] degrees,
    ``distance`` [N], ``fovy`` [N] radians, ``variant_index`` [N] (into the object's
    ``settings.variants_of``; zeros when not given, as in caches written before variants existed)."""

    settings: ToyWorldSettings
    rgb: Tensor
    alpha: Tensor
    depth: Tensor
    object_index: Tensor
    elevation: Tensor
    azimuth: Tensor
    distance: Tensor
    fovy: Tensor
    variant_index: Optional[Tensor] = None

    def __post_init__(self) -> None:
        if self.variant_index is None:
            self.variant_index = torch.zeros_like(self.object_index)

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

    def variant_name(self, i: int) -> str:
        return self.settings.variants_of(self.settings.objects[int(self.object_index[i])])[int(self.variant_index[i])]

    def captions_of(self, i: int) -> Tuple[str, ...]:
        """Captions of render ``i``: the object's name and its two view-dependent forms (the name
        alone when the world's captions have no view words)."""
        name = self.object_name(i)
        if not self.settings.caption_views:
            return (name,)
        return (name,) + view_captions(name, DIRECTION_NAMES[int(self.direction_index[i])])

    def subset(self, mask: Tensor) -> "RenderSet":
        """The renders a bool mask or an index tensor selects (indices may repeat)."""
        return RenderSet(self.settings, **{f: getattr(self, f)[mask] for f in RENDER_FIELDS})

    def of_object(self, key_or_name: str) -> "RenderSet":
        k = self.settings.objects.index(get_object(key_or_name).key)
        return self.subset(self.object_index == k)

    def of_variant(self, key_or_name: str, variant: str) -> "RenderSet":
        key = get_object(key_or_name).key
        k, v = self.settings.objects.index(key), self.settings.variants_of(key).index(variant)
        return self.subset((self.object_index == k) & (self.variant_index == v))

    def tensors(self) -> Dict[str, Tensor]:
        return {f: getattr(self, f) for f in RENDER_FIELDS}


def caption_table(render_set: RenderSet) -> Tuple[List[str], Tensor]:
    """``(captions, members)``: every caption the prior knows and a bool [K,N] membership matrix.

    Captions: ``""`` (every render), each object's name (its renders, every variant), and each
    object's four view captions in both forms (its renders in that direction), unless the world's
    captions have no view words (``caption_views: false``). A view caption with no render (e.g.
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
        if not settings.caption_views:
            continue
        for d, direction_name in enumerate(DIRECTION_NAMES):
            members = of_object & (direction == d)
            if not members.any():
                members = of_object
            for caption in view_captions(name, direction_name):
                captions.append(caption)
                rows.append(members)
    return captions, torch.stack(rows, 0)


def _render_views(
    settings: ToyWorldSettings,
    object_index: Tensor,
    elevation: Tensor,
    azimuth: Tensor,
    distance: Tensor,
    variant_index: Optional[Tensor] = None,
    chunk: int = 32,
) -> RenderSet:
    size, ss = settings.image_size, settings.supersample
    variant_index = torch.zeros_like(object_index) if variant_index is None else variant_index
    fovy = torch.full_like(elevation, math.radians(settings.fovy_deg))
    rgbs, alphas, depths = [], [], []
    for k, key in enumerate(settings.objects):
        for v, variant in enumerate(settings.variants_of(key)):
            idx = ((object_index == k) & (variant_index == v)).nonzero().squeeze(-1)
            obj = get_variant(key, variant)
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
        variant_index=variant_index,
    )


def azimuth_repeats(settings: ToyWorldSettings, azimuth: Tensor) -> Tensor:
    """How often the render at ``azimuth`` (degrees) is in the training set: 1 for the uniform
    distribution; ``floor(R^((1 + cos a) / 2) + 1/2)``, ``R = front_repeats``, for ``front_heavy``
    (R at the front, about sqrt(R) at the sides, 1 at the back)."""
    if settings.view_distribution == "uniform":
        return torch.ones(azimuth.shape, dtype=torch.long)
    weight = (1 + torch.cos(torch.deg2rad(azimuth.double()))) / 2
    return torch.floor(float(settings.front_repeats) ** weight + 0.5).long()


def training_grid(settings: ToyWorldSettings) -> Dict[str, Tensor]:
    """The distinct training cameras, object-major then variant, distance, elevation, azimuth:
    ``object_index``, ``variant_index``, ``elevation``, ``azimuth``, ``distance`` [M] and ``repeats``
    [M] (how often each render is in the training set, :func:`azimuth_repeats`)."""
    azimuths = torch.arange(settings.n_azimuths, dtype=torch.float32) * (360.0 / settings.n_azimuths)
    names = ("object_index", "variant_index", "distance", "elevation", "azimuth")
    cams: Dict[str, List[Tensor]] = {k: [] for k in names}
    for k, key in enumerate(settings.objects):
        n_variants = len(settings.variants_of(key))
        grid = torch.cartesian_prod(
            torch.arange(n_variants, dtype=torch.float32),
            torch.tensor(settings.camera_distances, dtype=torch.float32),
            torch.tensor(settings.elevations_deg, dtype=torch.float32),
            azimuths,
        )
        cams["object_index"].append(torch.full((grid.shape[0],), k, dtype=torch.long))
        cams["variant_index"].append(grid[:, 0].long())
        cams["distance"].append(grid[:, 1].contiguous())
        cams["elevation"].append(grid[:, 2].contiguous())
        cams["azimuth"].append(grid[:, 3].contiguous())
    out = {k: torch.cat(v) for k, v in cams.items()}
    out["repeats"] = azimuth_repeats(settings, out["azimuth"])
    return out


def training_cameras(settings: ToyWorldSettings) -> Dict[str, Tensor]:
    """The cameras of the training set, object-major (then variant, distance, elevation, azimuth;
    repeated renders next to each other): ``object_index``, ``variant_index``, ``elevation``,
    ``azimuth``, ``distance`` [N]."""
    grid = training_grid(settings)
    repeats = grid.pop("repeats")
    return {k: v.repeat_interleave(repeats) for k, v in grid.items()}


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
    """Held-out cameras: :func:`eval_azimuths` at ``eval_elevation_deg`` and the first distance, for
    every object and variant (object-major, then variant, then azimuth); never repeated."""
    azimuths = eval_azimuths(settings)
    pairs = [(k, v) for k, key in enumerate(settings.objects) for v in range(len(settings.variants_of(key)))]
    m = len(pairs) * azimuths.numel()
    return {
        "object_index": torch.tensor([k for k, _ in pairs]).repeat_interleave(azimuths.numel()),
        "variant_index": torch.tensor([v for _, v in pairs]).repeat_interleave(azimuths.numel()),
        "distance": torch.full((m,), settings.camera_distances[0]),
        "elevation": torch.full((m,), settings.eval_elevation_deg),
        "azimuth": azimuths.repeat(len(pairs)),
    }


def render_sets(settings: ToyWorldSettings) -> Tuple[RenderSet, RenderSet]:
    """Render the training set and the held-out set (no cache). Repeated training renders (a biased
    view distribution) are rendered once."""
    grid = training_grid(settings)
    repeats = grid.pop("repeats")
    train = _render_views(settings, **grid)
    if bool((repeats != 1).any()):
        train = train.subset(torch.arange(len(train)).repeat_interleave(repeats))
    return train, _render_views(settings, **eval_cameras(settings))


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
    buffer = io.BytesIO()
    torch.save(
        {"version": RENDERER_VERSION, "settings": settings.to_dict(), "train": train.tensors(), "eval": held_out.tensors()},
        buffer,
    )
    write_bytes(path, buffer.getbuffer(), hint=CACHE_HINT)
    return train, held_out
