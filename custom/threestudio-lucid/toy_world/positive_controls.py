"""Positive controls: assets whose right score is known, rendered from the world's analytic objects, that
an instrument must tell apart before its verdicts count (issue 27).

Each control is a renderer ``(elevation, azimuth, distance) -> (rgb [V,H,W,3], alpha [V,H,W,1])``, the
interface :func:`structure_metrics.score_structure` scores, so a control goes through exactly the path
an asset's renders do:

- :func:`truth`: an object rendered as the world's training renders (anti-aliased);
- :func:`two_faced_object`: the object with its front's parts copied onto its back (a Janus asset);
- :func:`blend`: the mean of several variants (the posterior mean of a mode blend);
- :func:`blurred`: a 3 x 3 or 5 x 5 binomial blur of the renders (replicate padding);
- :func:`flat_disc`: one flat colour on the true silhouette (:func:`mean_colour` of a variant, or a
  grey): no structure at all;
- :func:`shifted`: ``a * colour + b`` of the object's colours, over the same background (a brightness /
  contrast change of the asset);
- :func:`collapsed`: every view shows the object from one azimuth (all views collapsed onto the front).

:func:`separation` scores the controls with one metric and checks the orderings it must show (stated
in ``REQUIREMENTS`` before any run); ``sees`` is False when one fails, and a verdict from that metric
should then be refused.

These controls are drawn; the trained one, the oracle fit (the same splats, cameras and budget as a method run,
fitted to the true renders: each score's ceiling), is ``oracle.py``.
"""
import copy
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .dataset import ToyWorldSettings
from .objects import Ellipsoid, ToyObject, get_variant
from .structure_metrics import Renderer, held_out_cameras, object_colours, render_truth, score_structure


def two_faced_object(obj: ToyObject, min_x: float = 0.02) -> ToyObject:
    """``obj`` with a copy of every ellipsoid centred in front (centre x > ``min_x``: the penguin's belly,
    eyes, beak and feet) mirrored to the back (x -> -x): from behind it shows a front, the Janus face."""
    parts = list(obj.primitives)
    for p in obj.primitives:
        if isinstance(p, Ellipsoid) and float(p.center[0]) > min_x:
            q = copy.copy(p)
            q.center = p.center.clone()
            q.center[0] = -q.center[0]
            parts.append(q)
    if len(parts) == len(obj.primitives):
        raise ValueError(f"{obj.key} ({obj.variant}) has no ellipsoid in front to copy onto its back")
    return ToyObject(obj.key, obj.name, parts, f"{obj.description}; its front copied onto its back",
                     obj.bounding_radius, f"{obj.variant}, two-faced")


def truth(settings, obj: ToyObject, cache: Optional[Dict] = None) -> Renderer:
    """``obj`` as the world renders it (``cache``: see ``structure_metrics.render_truth``, as for every
    control below)."""
    return lambda el, az, d: _pair(render_truth(settings, obj, el, az, d, cache))


def _pair(r: Dict[str, Tensor]):
    return r["rgb"], r["alpha"]


def blend(settings, objs: Sequence[ToyObject], cache: Optional[Dict] = None) -> Renderer:
    """The mean of the renders of ``objs`` (variants of one object: one silhouette), on the first's alpha."""

    def render(el, az, d):
        rs = [render_truth(settings, o, el, az, d, cache) for o in objs]
        return torch.stack([r["rgb"] for r in rs]).mean(0), rs[0]["alpha"]

    return render


def binomial_blur(rgb: Tensor, size: int) -> Tensor:
    """``rgb`` [V,H,W,C] convolved with the ``size`` x ``size`` binomial kernel (3 or 5), replicate padding."""
    rows = {3: [1.0, 2.0, 1.0], 5: [1.0, 4.0, 6.0, 4.0, 1.0]}
    if size not in rows:
        raise ValueError(f"binomial_blur size must be 3 or 5, got {size}")
    k = torch.tensor(rows[size])
    kernel = (k[:, None] * k[None]) / k.sum() ** 2
    v, h, w, c = rgb.shape
    r = size // 2
    x = F.pad(rgb.permute(0, 3, 1, 2).reshape(v * c, 1, h, w), (r, r, r, r), mode="replicate")
    return F.conv2d(x, kernel[None, None].to(rgb)).reshape(v, c, h, w).permute(0, 2, 3, 1)


def blurred(settings, obj: ToyObject, size: int, cache: Optional[Dict] = None) -> Renderer:
    def render(el, az, d):
        r = render_truth(settings, obj, el, az, d, cache)
        return binomial_blur(r["rgb"], size), r["alpha"]

    return render


def mean_colour(settings, obj: ToyObject, cache: Optional[Dict] = None) -> Tensor:
    """The alpha-weighted mean rgb of ``obj`` over the world's held-out views."""
    r = render_truth(settings, obj, **held_out_cameras(settings, obj.key), cache=cache)
    return (r["rgb"] * r["alpha"]).sum(dim=(0, 1, 2)) / r["alpha"].sum()


def flat_disc(settings, obj: ToyObject, colour, cache: Optional[Dict] = None) -> Renderer:
    """``colour`` (rgb, or one grey level) on ``obj``'s true silhouette, composited over the background."""
    c = torch.as_tensor(colour, dtype=torch.float32).reshape(-1).expand(3)
    bg = torch.tensor(settings.background, dtype=torch.float32)

    def render(el, az, d):
        alpha = render_truth(settings, obj, el, az, d, cache)["alpha"]
        return alpha * c + (1 - alpha) * bg, alpha

    return render


def shifted(render: Renderer, a: float, b: float, background: Sequence[float] = (1.0, 1.0, 1.0)) -> Renderer:
    """Another renderer's images with the object's colours ``c`` made ``a c + b`` (not clamped), composited
    over the same ``background``."""
    bg = torch.as_tensor(background, dtype=torch.float32)

    def render_shifted(el, az, d):
        rgb, alpha = render(el, az, d)
        return alpha * (a * object_colours(rgb, alpha, background) + b) + (1 - alpha) * bg, alpha

    return render_shifted


def collapsed(settings, obj: ToyObject, azimuth: float = 0.0, cache: Optional[Dict] = None) -> Renderer:
    """Every camera shows ``obj`` from ``azimuth`` (at its own elevation and distance)."""
    return lambda el, az, d: _pair(render_truth(settings, obj, el, torch.full_like(az, azimuth), d, cache))


# --------------------------------------------------------------------------------------------------
# the controls each metric must separate
# --------------------------------------------------------------------------------------------------
MULTIMODAL_CONTROL_WORLD = dict(objects=["ball"], variants=["striped", "spotted", "checkered"])
JANUS_CONTROL_WORLD = dict(objects=["penguin"])
CONTROL_VARIANT = "spotted"  # the multi-modal controls are made from this variant
SHIFT = (0.7, 0.1)  # the brightness / contrast control: 0.7 rgb + 0.1 (stays in [0, 1])
GREYS = (0.3, 0.4, 0.5)


@dataclass
class Requirement:
    text: str
    passed: bool
    values: Dict[str, float] = field(default_factory=dict)


@dataclass
class Separation:
    metric: str
    requirements: List[Requirement]
    scores: Dict[str, Dict[str, object]]

    @property
    def sees(self) -> bool:
        return all(r.passed for r in self.requirements)

    def summary(self) -> str:
        lines = [f"{self.metric}: {'separates its controls' if self.sees else 'does NOT separate its controls'}"]
        for r in self.requirements:
            vals = ", ".join(f"{k} {v:.3f}" for k, v in r.values.items())
            lines.append(f"  [{'ok' if r.passed else 'FAIL'}] {r.text} ({vals})")
        return "\n".join(lines)


def multimodal_controls(settings, cache: Optional[Dict] = None) -> Dict[str, Renderer]:
    """The controls of identity, sharpness and consistency on a multi-modal world's first object."""
    key = settings.objects[0]
    names = settings.variants_of(key)
    one = get_variant(key, CONTROL_VARIANT if CONTROL_VARIANT in names else names[-1])
    controls = {
        "truth": truth(settings, one, cache),
        "shifted": shifted(truth(settings, one, cache), *SHIFT, settings.background),
        "blend": blend(settings, [get_variant(key, v) for v in names], cache),
        "blur 3x3": blurred(settings, one, 3, cache),
        "blur 5x5": blurred(settings, one, 5, cache),
        "mean-colour disc": flat_disc(settings, one, mean_colour(settings, one, cache), cache),
    }
    controls.update({f"grey {g} disc": flat_disc(settings, one, g, cache) for g in GREYS})
    return controls


def janus_controls(settings, cache: Optional[Dict] = None) -> Dict[str, Renderer]:
    """The controls of Janus and view diversity on a world's first object (the penguin: a front and a back)."""
    obj = get_variant(settings.objects[0], settings.variants_of(settings.objects[0])[0])
    controls = {
        "truth": truth(settings, obj, cache),
        "shifted": shifted(truth(settings, obj, cache), *SHIFT, settings.background),
        "two-faced": truth(settings, two_faced_object(obj), cache),
        "collapsed": collapsed(settings, obj, cache=cache),
        "mean-colour disc": flat_disc(settings, obj, mean_colour(settings, obj, cache), cache),
    }
    controls.update({f"grey {g} disc": flat_disc(settings, obj, g, cache) for g in GREYS})
    return controls


def _requirements(metric: str, s: Dict[str, Dict[str, object]]) -> List[Requirement]:
    """The orderings ``metric`` must show on the controls' scores ``s[control]`` (module docstring)."""
    v = {name: float(scores[metric]) for name, scores in s.items()}
    flat = [n for n in v if n.endswith("disc")]
    reqs = [
        Requirement("a brightness / contrast change scores as the truth (|difference| <= 1e-3)",
                    abs(v["shifted"] - v["truth"]) <= 1e-3, {"truth": v["truth"], "shifted": v["shifted"]}),
        Requirement("flat discs (mean colour, greys) score no structure (|score| < 0.1)",
                    all(abs(v[n]) < 0.1 for n in flat), {n: v[n] for n in flat}),
    ]
    if metric == "identity":
        reqs += [
            Requirement("the truth is its variant (identity >= 0.99)", v["truth"] >= 0.99, {"truth": v["truth"]}),
            Requirement("a blend of the variants is far from every one (truth - blend >= 0.2)",
                        v["truth"] - v["blend"] >= 0.2, {"truth": v["truth"], "blend": v["blend"]}),
            Requirement("flat discs are no variant", all(s[n]["variant"] is None for n in flat), {}),
        ]
    elif metric == "sharpness":
        reqs += [
            Requirement("a 3 x 3 blur is blurrier than the truth (truth - blur >= 0.1)",
                        v["truth"] - v["blur 3x3"] >= 0.1, {"truth": v["truth"], "blur 3x3": v["blur 3x3"]}),
            Requirement("a 5 x 5 blur is blurrier than a 3 x 3 one", v["blur 3x3"] > v["blur 5x5"],
                        {"blur 3x3": v["blur 3x3"], "blur 5x5": v["blur 5x5"]}),
            Requirement("a blend loses the variant's detail (truth - blend >= 0.2)",
                        v["truth"] - v["blend"] >= 0.2, {"truth": v["truth"], "blend": v["blend"]}),
        ]
    elif metric == "consistency":
        reqs += [Requirement("the truth commits every view (consistency 1)", v["truth"] == 1.0, {"truth": v["truth"]})]
    elif metric == "janus":
        reqs += [
            Requirement("a two-faced asset scores far above the true back (difference >= 0.5)",
                        v["two-faced"] - v["truth"] >= 0.5, {"truth": v["truth"], "two-faced": v["two-faced"]}),
        ]
    elif metric == "view_diversity":
        reqs += [
            Requirement("views collapsed onto the front are less diverse than the truth's (difference >= 0.2)",
                        v["truth"] - v["collapsed"] >= 0.2, {"truth": v["truth"], "collapsed": v["collapsed"]}),
        ]
    return reqs


METRICS = {  # metric: (controls, control world, score_structure parts)
    "identity": (multimodal_controls, MULTIMODAL_CONTROL_WORLD, ("views",)),
    "sharpness": (multimodal_controls, MULTIMODAL_CONTROL_WORLD, ("views",)),
    "consistency": (multimodal_controls, MULTIMODAL_CONTROL_WORLD, ("views",)),
    "janus": (janus_controls, JANUS_CONTROL_WORLD, ("janus",)),
    "view_diversity": (janus_controls, JANUS_CONTROL_WORLD, ("views",)),
}


def control_settings(metric: str, **size_options) -> ToyWorldSettings:
    """The world a metric's controls are rendered in (the claims benchmark's object and variants, at the
    default 64 px unless ``size_options`` say otherwise)."""
    return ToyWorldSettings(**{**METRICS[metric][1], **size_options})


def separations(metrics: Sequence[str] = tuple(METRICS), settings: Optional[ToyWorldSettings] = None,
                scorer: Optional[Callable[[Renderer, ToyWorldSettings, str], Dict[str, object]]] = None
                ) -> Dict[str, Separation]:
    """Score each metric's controls (in ``settings``, default :func:`control_settings`; metrics that share
    their controls share one scoring) and check the orderings each must show. ``scorer(render, settings,
    key) -> scores`` replaces :func:`score_structure` (e.g. to check another implementation)."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"no controls for metric(s) {unknown}; known: {', '.join(METRICS)}")
    groups: Dict[tuple, List[str]] = {}  # metrics on the same controls in the same world are scored together
    for metric in metrics:
        st = settings or control_settings(metric)
        groups.setdefault((METRICS[metric][0], repr(st.to_dict())), []).append(metric)
    out = {}
    for (make, _), members in groups.items():
        st = settings or control_settings(members[0])
        key, cache = st.objects[0], {}  # the world's truths, rendered once for all its controls
        parts = tuple(sorted({p for m in members for p in METRICS[m][2]}))
        scores = {
            name: scorer(render, st, key) if scorer else score_structure(render, st, key, parts=parts, cache=cache)
            for name, render in make(st, cache).items()
        }
        out.update({m: Separation(m, _requirements(m, scores), scores) for m in members})
    return {m: out[m] for m in metrics}


def separation(metric: str, settings: Optional[ToyWorldSettings] = None,
               scorer: Optional[Callable[[Renderer, ToyWorldSettings, str], Dict[str, object]]] = None) -> Separation:
    """:func:`separations` of one metric: whether it separates its controls (``.sees``), and how."""
    return separations([metric], settings, scorer)[metric]
