"""Procedural 3D objects with known shape and colour, and an analytic ray-casting renderer.

Every object is a union of analytic primitives (ellipsoids, boxes, capped cylinders and cones: exact
ray intersection; a torus: sphere tracing of its exact signed distance), each with an albedo. The
renderer is independent of the Gaussian rasterizer: one ray per pixel on the host's camera
conventions (threestudio's ``get_ray_directions``: OpenGL camera looking down -z, focal
``0.5 H / tan(fovy / 2)``, pixel centres at +0.5; ``c2w`` OpenGL camera-to-world in a z-up world),
the nearest hit wins, and the shading is view-independent Lambertian under one fixed world light,

    ``rgb = albedo * (AMBIENT + DIFFUSE * max(0, n . LIGHT_DIRECTION))``,

so a 3D model with view-independent colours (Gaussians with SH degree 0) can reproduce every view
exactly. ``render_object`` returns rgb composited over a background colour, alpha (the object mask,
0 or 1 per ray) and depth (the view-space z of the hit, as the Gaussian renderer's ``comp_depth``;
0 off the object).

Objects fit in a ball of radius ~0.6 around the origin. Azimuth 0 (+x) is the front, so the
penguin, whose white belly, beak and eyes face +x, has a distinct front and back: a Janus result (a
second face on the back) is measurable on it.

Appearance variants (``VARIANTS``): every object comes in several named variants under the same
caption: ``plain`` (the object of ``OBJECTS``) and others with markings painted on the surface
(stripes, spots, checks: detail a few pixels wide, so that a blend of variants is measurably blurrier
than any one of them), other face colours or extra shape details (the penguin's crests). Markings
are functions of the hit point in object coordinates with ``y`` folded to ``|y|``, so every variant
stays mirror-symmetric in ``y`` like the plain objects.
"""
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..compat import get_ray_directions

# Fixed world light from above and in front, in the xz-plane: every object is mirror-symmetric in y,
# shading included, so a horizontally flipped view at azimuth a is the view at -a (LucidDreamer's
# flip augmentation, ``guidance_flip_prob``, stays on the data).
LIGHT_DIRECTION = (0.45, 0.0, 1.0)
AMBIENT = 0.55
DIFFUSE = 0.45

_EPS_T = 1e-6  # smallest accepted ray parameter
_INF = float("inf")


def _unit(v: Sequence[float]) -> Tensor:
    t = torch.tensor(v, dtype=torch.float32)
    return t / t.norm()


def _vec(v: Sequence[float]) -> Tensor:
    return torch.tensor([float(x) for x in v], dtype=torch.float32)


def _nearest_positive_root(a: Tensor, b: Tensor, c: Tensor) -> Tuple[Tensor, Tensor]:
    """Both roots of ``a t^2 + b t + c`` (inf where there is none), smaller first."""
    disc = b * b - 4 * a * c
    ok = (disc >= 0) & (a.abs() > 1e-12)
    sq = disc.clamp_min(0).sqrt()
    a_safe = torch.where(ok, a, torch.ones_like(a))
    t1 = (-b - sq) / (2 * a_safe)
    t2 = (-b + sq) / (2 * a_safe)
    lo, hi = torch.minimum(t1, t2), torch.maximum(t1, t2)
    inf = torch.full_like(a, _INF)
    return torch.where(ok, lo, inf), torch.where(ok, hi, inf)


def _first_valid(candidates: List[Tuple[Tensor, Tensor]]) -> Tuple[Tensor, Tensor]:
    """Among ``(t, valid)`` pairs, the smallest valid ``t > 0`` per ray (inf if none) and its index."""
    ts = torch.stack(
        [torch.where(valid & (t > _EPS_T), t, torch.full_like(t, _INF)) for t, valid in candidates], dim=0
    )
    return ts.min(dim=0)


class Primitive:
    """A solid with an exact ray intersection. ``intersect(o, d)`` takes rays [R,3] (``d`` need not
    be unit length: ``t`` is in units of ``d``) and returns ``(t [R], normal [R,3])`` with
    ``t = inf`` where the ray misses. ``albedo(normal)`` gives the surface colour [R,3], which the
    ``patterns`` (markings, see :func:`painted`; none by default) then paint over."""

    color: Tensor
    patterns: Tuple["Pattern", ...] = ()

    def intersect(self, o: Tensor, d: Tensor) -> Tuple[Tensor, Tensor]:
        raise NotImplementedError

    def albedo(self, normal: Tensor) -> Tensor:
        return self.color.to(normal).expand(normal.shape[0], 3)


class Ellipsoid(Primitive):
    """``sum(((p - center) / radii)^2) <= 1`` (a sphere when the radii are equal)."""

    def __init__(self, center, radii, color):
        self.center, self.radii, self.color = _vec(center), _vec(radii), _vec(color)

    def intersect(self, o, d):
        c, r = self.center.to(o), self.radii.to(o)
        o_s, d_s = (o - c) / r, d / r
        lo, hi = _nearest_positive_root(
            (d_s * d_s).sum(-1), 2 * (o_s * d_s).sum(-1), (o_s * o_s).sum(-1) - 1
        )
        t, _ = _first_valid([(lo, torch.isfinite(lo)), (hi, torch.isfinite(hi))])
        p = o + torch.where(torch.isfinite(t), t, torch.zeros_like(t))[:, None] * d
        return t, F.normalize((p - c) / (r * r), dim=-1)


class Box(Primitive):
    """Axis-aligned box ``|p - center| <= half_size`` per axis. ``face_colors`` maps faces named
    ``"+x"``, ``"-x"``, ``"+y"``, ... to colours that replace ``color`` on those faces."""

    _FACES = ("+x", "-x", "+y", "-y", "+z", "-z")

    def __init__(self, center, half_size, color, face_colors: Optional[Dict[str, Sequence[float]]] = None):
        self.center, self.half_size, self.color = _vec(center), _vec(half_size), _vec(color)
        self.face_colors = {k: _vec(v) for k, v in (face_colors or {}).items()}
        unknown = set(self.face_colors) - set(self._FACES)
        if unknown:
            raise ValueError(f"Box face_colors: unknown faces {sorted(unknown)}; use {self._FACES}")

    def intersect(self, o, d):
        c, h = self.center.to(o), self.half_size.to(o)
        d_safe = torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
        t0, t1 = (c - h - o) / d_safe, (c + h - o) / d_safe
        t_min, t_max = torch.minimum(t0, t1), torch.maximum(t0, t1)
        t_near, axis = t_min.max(dim=-1)
        t_far = t_max.min(dim=-1).values
        hit = (t_near <= t_far) & (t_near > _EPS_T)
        t = torch.where(hit, t_near, torch.full_like(t_near, _INF))
        normal = torch.zeros_like(o)
        sign = -torch.sign(d_safe.gather(-1, axis[:, None]))
        normal.scatter_(-1, axis[:, None], sign)
        return t, normal

    def albedo(self, normal):
        out = self.color.to(normal).expand(normal.shape[0], 3).clone()
        for name, color in self.face_colors.items():
            axis = "xyz".index(name[1])
            sign = 1.0 if name[0] == "+" else -1.0
            on_face = normal[:, axis] * sign > 0.5
            out[on_face] = color.to(normal)
        return out


class Cylinder(Primitive):
    """Capped cylinder along z: ``|p_xy - center_xy| <= radius``, ``|p_z - center_z| <= half_height``."""

    def __init__(self, center, radius, half_height, color):
        self.center, self.radius, self.half_height, self.color = _vec(center), float(radius), float(half_height), _vec(color)

    def intersect(self, o, d):
        c = self.center.to(o)
        q = o - c
        r, h = self.radius, self.half_height
        lo, hi = _nearest_positive_root(
            d[:, 0] ** 2 + d[:, 1] ** 2, 2 * (q[:, 0] * d[:, 0] + q[:, 1] * d[:, 1]), q[:, 0] ** 2 + q[:, 1] ** 2 - r * r
        )
        dz = torch.where(d[:, 2].abs() < 1e-12, torch.full_like(d[:, 2], 1e-12), d[:, 2])
        t_top, t_bottom = (h - q[:, 2]) / dz, (-h - q[:, 2]) / dz

        def z_at(t):
            return q[:, 2] + torch.nan_to_num(t, posinf=0.0) * d[:, 2]

        def r2_at(t):
            tt = torch.nan_to_num(t, posinf=0.0)
            return (q[:, 0] + tt * d[:, 0]) ** 2 + (q[:, 1] + tt * d[:, 1]) ** 2

        t, which = _first_valid(
            [
                (lo, torch.isfinite(lo) & (z_at(lo).abs() <= h)),
                (hi, torch.isfinite(hi) & (z_at(hi).abs() <= h)),
                (t_top, r2_at(t_top) <= r * r),
                (t_bottom, r2_at(t_bottom) <= r * r),
            ]
        )
        p = q + torch.nan_to_num(t, posinf=0.0)[:, None] * d
        side = F.normalize(torch.stack([p[:, 0], p[:, 1], torch.zeros_like(p[:, 0])], -1), dim=-1)
        cap = torch.zeros_like(p)
        cap[:, 2] = torch.where(which == 2, 1.0, -1.0)
        return t, torch.where((which <= 1)[:, None], side, cap)


class Cone(Primitive):
    """Capped cone along +z: base disk of ``radius`` centred at ``base_center``, apex ``height`` above."""

    def __init__(self, base_center, radius, height, color):
        self.base_center, self.radius, self.height, self.color = _vec(base_center), float(radius), float(height), _vec(color)

    def intersect(self, o, d):
        apex = self.base_center.to(o) + torch.tensor([0.0, 0.0, self.height]).to(o)
        q = o - apex  # apex coordinates: the cone is x^2 + y^2 = k^2 z^2 for -height <= z <= 0
        k2 = (self.radius / self.height) ** 2
        lo, hi = _nearest_positive_root(
            d[:, 0] ** 2 + d[:, 1] ** 2 - k2 * d[:, 2] ** 2,
            2 * (q[:, 0] * d[:, 0] + q[:, 1] * d[:, 1] - k2 * q[:, 2] * d[:, 2]),
            q[:, 0] ** 2 + q[:, 1] ** 2 - k2 * q[:, 2] ** 2,
        )

        def on_mantle(t):
            z = q[:, 2] + torch.nan_to_num(t, posinf=0.0) * d[:, 2]
            return torch.isfinite(t) & (z <= 0) & (z >= -self.height)

        dz = torch.where(d[:, 2].abs() < 1e-12, torch.full_like(d[:, 2], 1e-12), d[:, 2])
        t_base = (-self.height - q[:, 2]) / dz
        tb = torch.nan_to_num(t_base, posinf=0.0)
        in_base = (q[:, 0] + tb * d[:, 0]) ** 2 + (q[:, 1] + tb * d[:, 1]) ** 2 <= self.radius**2
        t, which = _first_valid([(lo, on_mantle(lo)), (hi, on_mantle(hi)), (t_base, in_base)])
        p = q + torch.nan_to_num(t, posinf=0.0)[:, None] * d
        mantle = F.normalize(torch.stack([p[:, 0], p[:, 1], -k2 * p[:, 2]], -1), dim=-1)
        base = torch.zeros_like(p)
        base[:, 2] = -1.0
        return t, torch.where((which <= 1)[:, None], mantle, base)


class Torus(Primitive):
    """Torus of major radius ``major`` and tube radius ``minor`` around ``axis`` ("x", "y" or "z")
    through ``center``. Signed distance ``|(|p_perp| - major, p_axis)| - minor`` (exact), so sphere
    tracing converges; rays that graze the silhouette without converging count as misses."""

    STEPS = 96

    def __init__(self, center, major, minor, color, axis: str = "z"):
        if axis not in ("x", "y", "z"):
            raise ValueError(f"Torus axis must be x, y or z, got {axis!r}")
        self.center, self.major, self.minor, self.color = _vec(center), float(major), float(minor), _vec(color)
        # permutation taking the torus axis to the last coordinate
        self.perm = {"x": [1, 2, 0], "y": [2, 0, 1], "z": [0, 1, 2]}[axis]
        self.inv_perm = [self.perm.index(i) for i in range(3)]

    def sdf(self, p: Tensor) -> Tensor:
        """Signed distance of points [R,3] given in torus coordinates (axis last, centre at 0)."""
        ring = p[:, :2].norm(dim=-1) - self.major
        return torch.stack([ring, p[:, 2]], -1).norm(dim=-1) - self.minor

    def intersect(self, o, d):
        scale = d.norm(dim=-1)
        u = (d / scale[:, None])[:, self.perm]
        q = (o - self.center.to(o))[:, self.perm]
        bound = self.major + self.minor
        enter, leave = _nearest_positive_root(torch.ones_like(scale), 2 * (q * u).sum(-1), (q * q).sum(-1) - bound**2)
        active = torch.isfinite(enter) & (leave > 0)
        t = torch.where(active, enter.clamp_min(0), torch.zeros_like(enter))
        t_end = torch.where(active, leave, torch.zeros_like(leave))
        idx = active.nonzero().squeeze(-1)
        tt, te, qq, uu = t[idx], t_end[idx], q[idx], u[idx]
        for _ in range(self.STEPS):
            s = self.sdf(qq + tt[:, None] * uu)
            tt = torch.where(tt <= te, tt + s, tt)
        hit_sub = (self.sdf(qq + tt[:, None] * uu).abs() < 1e-4) & (tt <= te)
        t_unit = torch.full_like(scale, _INF)
        t_unit[idx] = torch.where(hit_sub, tt, torch.full_like(tt, _INF))
        p = q + torch.nan_to_num(t_unit, posinf=0.0)[:, None] * u
        rho = p[:, :2].norm(dim=-1).clamp_min(1e-9)
        normal = torch.stack([p[:, 0] * (1 - self.major / rho), p[:, 1] * (1 - self.major / rho), p[:, 2]], -1)
        normal = F.normalize(normal, dim=-1)[:, self.inv_perm]
        return t_unit / scale, normal


# --------------------------------------------------------------------------------------------------
# surface markings (the appearance variants)
# --------------------------------------------------------------------------------------------------
def _folded(point: Tensor) -> Tensor:
    """``(x, |y|, z)``: markings drawn in these coordinates are mirror-symmetric in ``y``, as the objects
    and the light are, so a flipped view stays the view from the mirrored azimuth."""
    return torch.stack([point[:, 0], point[:, 1].abs(), point[:, 2]], -1)


class Pattern:
    """A marking: ``paint(point [R,3], albedo [R,3]) -> [R,3]`` paints over the albedo at hit points
    given in object coordinates."""

    def paint(self, point: Tensor, albedo: Tensor) -> Tensor:
        raise NotImplementedError


def _axis_index(axis: str) -> int:
    if axis not in ("x", "y", "z"):
        raise ValueError(f"pattern axis must be x, y or z, got {axis!r}")
    return "xyz".index(axis)


class Stripes(Pattern):
    """Bands of ``color`` across ``axis``: painted where ``frac((u - offset) / period) < duty``, ``u``
    the folded coordinate along ``axis``."""

    def __init__(self, color, period: float, axis: str = "z", duty: float = 0.5, offset: float = 0.0):
        self.color, self.period, self.duty, self.offset = _vec(color), float(period), float(duty), float(offset)
        self.axis = _axis_index(axis)

    def paint(self, point, albedo):
        u = _folded(point)[:, self.axis]
        on = torch.remainder((u - self.offset) / self.period, 1.0) < self.duty
        return torch.where(on[:, None], self.color.to(albedo), albedo)


class Band(Pattern):
    """One band of ``color``: ``low <= u <= high``, ``u`` the folded coordinate along ``axis``."""

    def __init__(self, color, low: float, high: float, axis: str = "z"):
        self.color, self.low, self.high = _vec(color), float(low), float(high)
        self.axis = _axis_index(axis)

    def paint(self, point, albedo):
        u = _folded(point)[:, self.axis]
        return torch.where(((u >= self.low) & (u <= self.high))[:, None], self.color.to(albedo), albedo)


class Checker(Pattern):
    """A 3D checkerboard of cells ``period`` wide, centred on the origin (folded coordinates): the cells
    whose index sum is odd get ``color``."""

    def __init__(self, color, period: float):
        self.color, self.period = _vec(color), float(period)

    def paint(self, point, albedo):
        cell = torch.floor(_folded(point) / self.period + 0.5).long()
        on = torch.remainder(cell.sum(-1), 2) == 1
        return torch.where(on[:, None], self.color.to(albedo), albedo)


class Spots(Pattern):
    """Round spots: the surface is painted where it passes within ``radius`` of a point of the cubic
    lattice of spacing ``period`` (folded coordinates, shifted by ``offset``). With ``along`` set to an
    axis, the lattice is the square one of the other two coordinates (spots seen head-on along that
    axis, as on a belly facing +x). With several ``colors`` the colour changes from one lattice cell to
    the next (sprinkles)."""

    def __init__(self, colors, period: float, radius: float, offset=(0.0, 0.0, 0.0), along: Optional[str] = None):
        self.colors = torch.as_tensor(colors, dtype=torch.float32).reshape(-1, 3)  # one colour or several
        self.period, self.radius, self.offset = float(period), float(radius), _vec(offset)
        self.keep = [i for i in range(3) if along is None or i != _axis_index(along)]

    def paint(self, point, albedo):
        q = ((_folded(point) - self.offset.to(point)) / self.period)[:, self.keep]
        cell = torch.round(q)
        on = (q - cell).norm(dim=-1) * self.period < self.radius
        which = (cell.long() * torch.arange(1, len(self.keep) + 1, device=cell.device)).sum(-1)
        color = self.colors.to(albedo)[torch.remainder(which, self.colors.shape[0])]
        return torch.where(on[:, None], color, albedo)


def painted(primitive: Primitive, *patterns: Pattern) -> Primitive:
    """``primitive`` with ``patterns`` painted over its albedo, in order."""
    primitive.patterns = tuple(patterns)
    return primitive


@dataclass
class ToyObject:
    """A named union of primitives. ``key`` is the short name (``--objects cube``), ``name`` the
    caption (``"a red cube"``), ``variant`` the appearance variant's name (``"plain"``, ``"striped"``,
    ...; all variants of an object share ``key`` and ``name``)."""

    key: str
    name: str
    primitives: List[Primitive]
    description: str = ""
    bounding_radius: float = 0.6
    variant: str = "plain"

    def intersect(self, o: Tensor, d: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Nearest hit over the primitives: ``(t [R], normal [R,3], albedo [R,3])``, ``t = inf`` on a miss."""
        ts, normals, albedos = [], [], []
        for prim in self.primitives:
            t, n = prim.intersect(o, d)
            ts.append(t)
            normals.append(n)
            albedo = prim.albedo(n)
            if prim.patterns:  # markings need the hit point; unmarked primitives skip it
                point = o + torch.nan_to_num(t, posinf=0.0)[:, None] * d
                for pattern in prim.patterns:
                    albedo = pattern.paint(point, albedo)
            albedos.append(albedo)
        t, which = torch.stack(ts, 0).min(dim=0)
        pick = which[None, :, None].expand(1, -1, 3)
        normal = torch.stack(normals, 0).gather(0, pick)[0]
        albedo = torch.stack(albedos, 0).gather(0, pick)[0]
        return t, normal, albedo


RED, BLUE, GREEN, YELLOW = (0.85, 0.12, 0.10), (0.15, 0.30, 0.85), (0.15, 0.70, 0.20), (0.95, 0.80, 0.15)
PENGUIN_BLACK, PENGUIN_WHITE, PENGUIN_ORANGE = (0.10, 0.10, 0.12), (0.95, 0.95, 0.95), (1.0, 0.55, 0.05)


def _penguin_parts() -> List[Primitive]:
    """The plain penguin's primitives, made anew on each call (variants paint them or add to them)."""
    return [
        Ellipsoid((0.0, 0.0, -0.08), (0.30, 0.30, 0.40), PENGUIN_BLACK),  # body
        Ellipsoid((0.08, 0.0, -0.12), (0.25, 0.24, 0.32), PENGUIN_WHITE),  # belly, bulging out at the front
        Ellipsoid((0.0, 0.0, 0.34), (0.20, 0.20, 0.19), PENGUIN_BLACK),  # head
        Ellipsoid((0.16, 0.075, 0.40), (0.05, 0.045, 0.05), PENGUIN_WHITE),  # eyes
        Ellipsoid((0.16, -0.075, 0.40), (0.05, 0.045, 0.05), PENGUIN_WHITE),
        Ellipsoid((0.22, 0.0, 0.32), (0.09, 0.05, 0.035), PENGUIN_ORANGE),  # beak
        Ellipsoid((0.10, 0.11, -0.47), (0.12, 0.07, 0.035), PENGUIN_ORANGE),  # feet
        Ellipsoid((0.10, -0.11, -0.47), (0.12, 0.07, 0.035), PENGUIN_ORANGE),
    ]


def _penguin() -> ToyObject:
    """Black body and head; white belly, white eyes, orange beak and feet on the front (+x) only."""
    return ToyObject(
        key="penguin",
        name="a penguin",
        description="black ellipsoid body and head; white belly, eyes, orange beak and feet facing +x (front)",
        primitives=_penguin_parts(),
    )


def _catalogue() -> Dict[str, ToyObject]:
    objects = [
        ToyObject("cube", "a red cube", [Box((0, 0, 0), (0.33, 0.33, 0.33), RED)], "axis-aligned cube, half size 0.33"),
        ToyObject("ball", "a blue ball", [Ellipsoid((0, 0, 0), (0.45, 0.45, 0.45), BLUE)], "sphere of radius 0.45"),
        ToyObject(
            "cone", "a green cone", [Cone((0, 0, -0.35), 0.40, 0.80, GREEN)], "cone along +z: base radius 0.4 at z=-0.35, apex at z=0.45"
        ),
        ToyObject(
            "donut",
            "a yellow donut",
            [Torus((0, 0, 0), 0.38, 0.15, YELLOW, axis="z")],
            "torus lying flat (axis z): major radius 0.38, tube radius 0.15",
        ),
        _penguin(),
    ]
    return {o.key: o for o in objects}


OBJECTS: Dict[str, ToyObject] = _catalogue()
DEFAULT_OBJECTS: Tuple[str, ...] = tuple(OBJECTS)


def get_object(key_or_name: str) -> ToyObject:
    """An object by short key (``"cube"``) or caption (``"a red cube"``)."""
    if key_or_name in OBJECTS:
        return OBJECTS[key_or_name]
    for obj in OBJECTS.values():
        if obj.name == key_or_name:
            return obj
    known = ", ".join(f"{o.key} ({o.name!r})" for o in OBJECTS.values())
    raise KeyError(f"Unknown toy object {key_or_name!r}: known objects are {known}")


# --------------------------------------------------------------------------------------------------
# appearance variants
# --------------------------------------------------------------------------------------------------
WHITE, PINK = (0.95, 0.95, 0.95), (0.95, 0.45, 0.65)
CREST_YELLOW, PATCH_ORANGE = (1.0, 0.85, 0.10), (1.0, 0.70, 0.15)
SPRINKLE_COLORS = (PINK, (0.20, 0.45, 0.95), WHITE, (0.20, 0.75, 0.35))
# marking scale: at the default 64 px (distance 4, fovy 35 deg) one world unit is ~25 px, so a
# stripe period of 0.2 is a 5 px pair of bands (2.5 latent pixels at the default downsample 2): real
# high-frequency detail that the latent still carries
STRIPE_PERIOD = 0.22  # the cube's: 3 periods across its 0.66 side


def _variant(base: ToyObject, variant: str, description: str, primitives: List[Primitive]) -> ToyObject:
    return ToyObject(base.key, base.name, primitives, description, base.bounding_radius, variant)


def _variant_catalogue(objects: Dict[str, ToyObject]) -> Dict[str, Dict[str, ToyObject]]:
    """Per object key, its variants by name in a fixed order, ``plain`` (the object itself) first."""

    def cube(**box) -> Box:
        return Box((0, 0, 0), (0.33, 0.33, 0.33), RED, **box)

    def ball() -> Ellipsoid:
        return Ellipsoid((0, 0, 0), (0.45, 0.45, 0.45), BLUE)

    def cone() -> Cone:
        return Cone((0, 0, -0.35), 0.40, 0.80, GREEN)

    def donut() -> Torus:
        return Torus((0, 0, 0), 0.38, 0.15, YELLOW, axis="z")

    def penguin(belly_patterns=(), extra=()) -> List[Primitive]:
        parts = _penguin_parts()
        painted(parts[1], *belly_patterns)
        return parts + list(extra)

    o = objects
    table = {
        "cube": [
            _variant(o["cube"], "striped", "the red cube with white horizontal stripes, period 0.22",
                     [painted(cube(), Stripes(WHITE, STRIPE_PERIOD))]),
            _variant(o["cube"], "spotted", "the red cube with white spots, 5 x 5 per face (lattice 0.165, radius 0.05)",
                     [painted(cube(), Spots(WHITE, 0.165, 0.05))]),
            _variant(o["cube"], "checkered", "the red cube with white checks, 3 x 3 per face",
                     [painted(cube(), Checker(WHITE, STRIPE_PERIOD))]),
            _variant(o["cube"], "marked", "the red cube with a yellow front (+x) face",
                     [cube(face_colors={"+x": YELLOW})]),
        ],
        "ball": [
            _variant(o["ball"], "striped", "the blue ball with white horizontal stripes, period 0.2",
                     [painted(ball(), Stripes(WHITE, 0.2))]),
            _variant(o["ball"], "spotted", "the blue ball with white spots (lattice 0.2, radius 0.07)",
                     [painted(ball(), Spots(WHITE, 0.2, 0.07))]),
            _variant(o["ball"], "checkered", "the blue ball with white checks, period 0.2",
                     [painted(ball(), Checker(WHITE, 0.2))]),
        ],
        "cone": [
            _variant(o["cone"], "striped", "the green cone with white rings, period 0.2",
                     [painted(cone(), Stripes(WHITE, 0.2))]),
            _variant(o["cone"], "spotted", "the green cone with white spots (lattice 0.2, radius 0.07)",
                     [painted(cone(), Spots(WHITE, 0.2, 0.07))]),
            _variant(o["cone"], "checkered", "the green cone with white checks, period 0.2",
                     [painted(cone(), Checker(WHITE, 0.2))]),
        ],
        "donut": [
            _variant(o["donut"], "sprinkled", "the yellow donut with pink, blue, white and green sprinkles",
                     [painted(donut(), Spots(SPRINKLE_COLORS, 0.15, 0.05))]),
            _variant(o["donut"], "frosted", "the yellow donut with pink icing on its upper half (z > 0.03)",
                     [painted(donut(), Band(PINK, 0.03, 1.0))]),
        ],
        "penguin": [
            _variant(o["penguin"], "african", "the penguin with a black chest band and black spots on its belly",
                     penguin(belly_patterns=(Band(PENGUIN_BLACK, -0.03, 0.02),
                                             Spots(PENGUIN_BLACK, 0.15, 0.04, offset=(0, 0.075, -0.13), along="x")))),
            _variant(o["penguin"], "rockhopper", "the penguin with yellow crests over its eyes (a shape detail)",
                     penguin(extra=[Ellipsoid((0.06, y, 0.45), (0.14, 0.035, 0.03), CREST_YELLOW) for y in (0.12, -0.12)])),
            _variant(o["penguin"], "emperor", "the penguin with yellow-orange patches on the sides of its head",
                     penguin(extra=[Ellipsoid((0.03, y, 0.30), (0.08, 0.07, 0.10), PATCH_ORANGE) for y in (0.15, -0.15)])),
        ],
    }
    return {key: {"plain": obj, **{v.variant: v for v in table.get(key, [])}} for key, obj in objects.items()}


VARIANTS: Dict[str, Dict[str, ToyObject]] = _variant_catalogue(OBJECTS)


def variant_names(key_or_name: str) -> Tuple[str, ...]:
    """The variants of an object, in catalogue order (``plain`` first)."""
    return tuple(VARIANTS[get_object(key_or_name).key])


def get_variant(key_or_name: str, variant: str = "plain") -> ToyObject:
    """Variant ``variant`` of an object given by key or caption."""
    variants = VARIANTS[get_object(key_or_name).key]
    if variant not in variants:
        key = get_object(key_or_name).key
        raise KeyError(f"toy object {key!r} has no variant {variant!r}: its variants are {', '.join(variants)}")
    return variants[variant]


# --------------------------------------------------------------------------------------------------
# cameras and rendering
# --------------------------------------------------------------------------------------------------
def orbit_c2w(elevation_deg: Tensor, azimuth_deg: Tensor, distance: Tensor) -> Tensor:
    """OpenGL camera-to-world [B,4,4] of cameras at ``d (cos e cos a, cos e sin a, sin e)`` looking at
    the origin with world up +z (``random-camera-datamodule``'s convention, without perturbations)."""
    e = torch.as_tensor(elevation_deg, dtype=torch.float32).reshape(-1) * math.pi / 180
    a = torch.as_tensor(azimuth_deg, dtype=torch.float32).reshape(-1) * math.pi / 180
    dist = torch.as_tensor(distance, dtype=torch.float32).reshape(-1).expand_as(e)
    position = torch.stack([dist * e.cos() * a.cos(), dist * e.cos() * a.sin(), dist * e.sin()], -1)
    forward = F.normalize(-position, dim=-1)
    up = torch.tensor([0.0, 0.0, 1.0]).expand_as(forward)
    right = F.normalize(torch.linalg.cross(forward, up, dim=-1), dim=-1)
    true_up = F.normalize(torch.linalg.cross(right, forward, dim=-1), dim=-1)
    c2w = torch.zeros(e.shape[0], 4, 4)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, true_up, -forward, position
    c2w[:, 3, 3] = 1.0
    return c2w


def camera_rays(c2w: Tensor, fovy: Tensor, height: int, width: int) -> Tuple[Tensor, Tensor]:
    """World rays ``(rays_o, rays_d)`` [B,H,W,3] of OpenGL cameras ``c2w`` [B,4,4] with vertical field
    of view ``fovy`` [B] (radians). ``rays_d`` is NOT normalised: its camera-space z is -1, so a ray
    parameter ``t`` is the view-space depth of the point ``o + t d``."""
    c2w = torch.as_tensor(c2w, dtype=torch.float32).reshape(-1, 4, 4)
    fovy = torch.as_tensor(fovy, dtype=torch.float32).reshape(-1).expand(c2w.shape[0])
    unit = get_ray_directions(H=height, W=width, focal=1.0)  # [H,W,3], focal 1
    focal = 0.5 * height / torch.tan(0.5 * fovy)
    dirs = unit[None].repeat(c2w.shape[0], 1, 1, 1)
    dirs[..., :2] = dirs[..., :2] / focal[:, None, None, None]
    rays_d = torch.einsum("bij,bhwj->bhwi", c2w[:, :3, :3], dirs)
    rays_o = c2w[:, None, None, :3, 3].expand_as(rays_d)
    return rays_o, rays_d


def shade(normal: Tensor, albedo: Tensor) -> Tensor:
    """``albedo * (AMBIENT + DIFFUSE * max(0, n . L))``, clamped to [0, 1]."""
    light = _unit(LIGHT_DIRECTION).to(normal)
    return (albedo * (AMBIENT + DIFFUSE * (normal @ light).clamp_min(0))[:, None]).clamp(0, 1)


@torch.no_grad()
def render_object(
    obj: ToyObject,
    c2w: Tensor,
    fovy: Tensor,
    height: int,
    width: int,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    chunk_rays: int = 1 << 18,
) -> Dict[str, Tensor]:
    """Ray-cast ``obj`` from cameras ``c2w`` [B,4,4] (OpenGL), ``fovy`` [B] radians.

    Returns ``rgb`` [B,H,W,3] over ``background``, ``alpha`` [B,H,W,1] (1 on the object) and
    ``depth`` [B,H,W,1] (view-space z of the hit, 0 off the object), all float32 on the CPU.
    """
    rays_o, rays_d = camera_rays(c2w, fovy, height, width)
    shape = rays_o.shape[:-1]
    o, d = rays_o.reshape(-1, 3), rays_d.reshape(-1, 3)
    bg = torch.tensor([float(x) for x in background], dtype=torch.float32)
    rgb = bg.expand(o.shape[0], 3).clone()
    alpha = torch.zeros(o.shape[0])
    depth = torch.zeros(o.shape[0])
    for start in range(0, o.shape[0], chunk_rays):
        sl = slice(start, start + chunk_rays)
        oc, dc = o[sl], d[sl]
        # only rays that reach the bounding sphere are traced
        lo, hi = _nearest_positive_root(
            (dc * dc).sum(-1), 2 * (oc * dc).sum(-1), (oc * oc).sum(-1) - obj.bounding_radius**2
        )
        near = (torch.isfinite(lo) & (hi > 0)).nonzero().squeeze(-1)
        if near.numel() == 0:
            continue
        t, normal, albedo = obj.intersect(oc[near], dc[near])
        hit = torch.isfinite(t)
        idx = start + near[hit]
        rgb[idx] = shade(normal[hit], albedo[hit])
        alpha[idx] = 1.0
        depth[idx] = t[hit]
    return {
        "rgb": rgb.reshape(*shape, 3),
        "alpha": alpha.reshape(*shape, 1),
        "depth": depth.reshape(*shape, 1),
    }
