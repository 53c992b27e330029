"""Scores that read an asset's structure (markings, faces, detail), not its brightness (issue 27).

The scores of ``evaluate`` compare colours: the nearest variant and its consistency by PSNR (three
textured variants differ by 0.05 dB against one render, and a flat disc in one variant's mean colour
"commits" to it), Janus by squared error (flat grey discs order by grey level). The scores here
compare band-passed images inside the silhouettes with normalised correlations, so a global
brightness or contrast change of the asset's colours ``a c + b`` (``a > 0``) leaves every one of them
unchanged and an image without structure (a flat disc of any colour) scores as having none.

Structure of an image (rgb [V,H,W,3] composited over the world's ``background``) with silhouette
``alpha``: of its object colours ``I = (rgb - (1 - alpha) background) / alpha`` (the compositing undone,
so a pixel the object covers partly, at a thin part, shows the object's colour, not a mix with the
background), on the support ``S`` (the pixels of ``alpha > 0.5`` one pixel in from the outline), the
masked low-pass ``L_s(I) = G_s * (I 1_S) / G_s * 1_S`` (``G_s`` a Gaussian of ``s``
pixels) and the bands

    ``fine(I) = I - L_FINE_SIGMA(I)``,    ``structure(I) = I - L_COARSE_SIGMA(I)``  (zero off ``S``),

the finest detail (about the 3 x 3 binomial's scale) and everything up to the markings' scale (at the
default 64 px a stripe period of 0.2 is 5 px). Both subtract a local mean, so ``b`` cancels; the
correlation

    ``ncc(x, y) = sum_R x y / sqrt(sum_R x^2 sum_R y^2)``

over the pixels ``R`` at least ``INTERIOR_MARGIN`` px inside both silhouettes (all views pooled) cancels
``a``. (A brightness change is one of the object's colours: ``a I + b`` composited over the same
background.) A side whose structure has a mean square below ``STRUCTURE_FLOOR`` over ``R`` (rounding noise of a
flat image) has none, and its correlations are 0: invariance holds for structure above that floor
(``a`` down to about 1e-3 for the world's markings).

Scores (each in [-1, 1] unless said; :func:`fraction_of_reference` turns any into a fraction of a
reference such as an oracle fit's):

- ``identity_by_variant``: ``ncc(structure(render), structure(truth_v))`` per variant ``v``; the
  asset's ``variant`` is the best one if it reaches ``MIN_MATCH`` (else ``None``: no variant found) and
  ``identity`` is its correlation. 1 = the variant's markings in place; a blend of K variants
  about ``1/sqrt(K)``; a flat disc 0.
- ``sharpness``: ``ncc(fine(render), fine(truth))`` against the nearest variant (the first by
  catalogue order when none is found): 1 = the truth's finest detail; a 3 x 3 blur about 0.8, a blend
  of three variants about 0.6, a flat disc 0. Noise lowers it too (it is not the truth's detail).
- ``consistency``: over the views where the variants' truths differ, the fraction whose own best
  variant (per-view correlation, at least ``MIN_MATCH``; ties fit either) is the asset's; 0 when no
  variant is found.
- ``janus``: on back views (:func:`back_cameras`), ``ncc(structure(render), structure(second front))``
  with the second front the truth seen from the opposite camera (azimuth + 180: what a turned-around
  copy of the front, a Janus face, looks like from the back camera): the front's markings found on
  the back. About 0 for the true back, about 1 for a two-faced asset, 0 for a flat disc. ``back_match``
  is ``ncc`` with the true back (the penguin's back has almost no structure, RMS about 1e-3, so it
  is a diagnostic, not the score).
- ``view_diversity``: the mean over pairs of renders of
  ``d(x, y) = sum (x - y)^2 / (sum x^2 + sum y^2)`` of their structures (each on its own support; 0
  for identical structure or two without any, 1 for unrelated ones): how different the views of one
  asset are, or (:func:`seed_diversity`) the same view over seeds. ``a`` cancels when every image gets it.
"""
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .dataset import eval_cameras, shift_azimuth_deg
from .evaluate import interior
from .objects import ToyObject, get_object, get_variant, orbit_c2w, render_object

FINE_SIGMA = 0.7  # px: the 3 x 3 binomial blur's own width
COARSE_SIGMA = 2.0  # px: keeps the markings (5 px stripe periods at 64 px), drops the shading
INTERIOR_MARGIN = 2  # px inside both silhouettes (the outline, which a blend keeps, does not count)
STRUCTURE_FLOOR = 1e-8  # mean square per pixel and channel below which an image has no structure
MIN_MATCH = 0.3  # a variant is found at a correlation at least this (the ball's variants cross at <= 0.17)
BACK_ELEVATION_OFFSETS = (-15.0, 0.0, 15.0)  # degrees around the world's held-out elevation
N_BACK_AZIMUTHS = 4

WHITE = (1.0, 1.0, 1.0)

Renderer = Callable[[Tensor, Tensor, Tensor], Tuple[Tensor, Tensor]]  # (elevation, azimuth, distance) -> (rgb, alpha)


# --------------------------------------------------------------------------------------------------
# bands and correlations
# --------------------------------------------------------------------------------------------------
def _gaussian_kernel(sigma: float) -> Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _separable_blur(x: Tensor, sigma: float) -> Tensor:
    """``G_sigma * x`` for x [N,1,H,W], zero outside the image."""
    k = _gaussian_kernel(sigma).to(x)
    r = k.numel() // 2
    x = F.conv2d(F.pad(x, (r, r, 0, 0)), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r)), k.view(1, 1, -1, 1))


def support(alpha: Tensor) -> Tensor:
    """Bool [V,H,W]: the pixels of ``alpha`` [V,H,W,1] > 0.5 at least one pixel inside the silhouette."""
    return interior(alpha[..., 0] > 0.5, 1)


def masked_low_pass(rgb: Tensor, mask: Tensor, sigma: float) -> Tensor:
    """``G_s * (rgb 1_mask) / G_s * 1_mask`` for rgb [V,H,W,C], bool mask [V,H,W] (0 where the mask has
    no weight): a local mean over the mask only."""
    v, h, w, c = rgb.shape
    m = mask.to(rgb.dtype)
    num = _separable_blur((rgb * m[..., None]).permute(0, 3, 1, 2).reshape(v * c, 1, h, w), sigma)
    num = num.reshape(v, c, h, w).permute(0, 2, 3, 1)
    den = _separable_blur(m[:, None], sigma)[:, 0, ..., None]
    return torch.where(den > 1e-6, num / den.clamp_min(1e-6), torch.zeros_like(num))


def object_colours(rgb: Tensor, alpha: Tensor, background: Sequence[float] = WHITE) -> Tensor:
    """``(rgb - (1 - alpha) background) / alpha`` where ``alpha > 0`` (the background elsewhere): the
    colours of the object under its compositing over ``background``."""
    bg = torch.as_tensor(background, dtype=torch.float32).to(rgb)
    covered = alpha > 0
    return torch.where(covered, (rgb - (1 - alpha) * bg) / torch.where(covered, alpha, torch.ones_like(alpha)), bg)


def bands(rgb: Tensor, alpha: Tensor, background: Sequence[float] = WHITE) -> Dict[str, Tensor]:
    """``{"fine", "structure", "support"}``: the two bands of the module docstring ([V,H,W,3], zero off
    the support) of the object colours of ``rgb`` composited over ``background``, and the support."""
    alpha = alpha.float()
    rgb = object_colours(rgb.float(), alpha, background)
    s = support(alpha)
    keep = s[..., None].to(rgb.dtype)
    return {
        "fine": (rgb - masked_low_pass(rgb, s, FINE_SIGMA)) * keep,
        "structure": (rgb - masked_low_pass(rgb, s, COARSE_SIGMA)) * keep,
        "support": s,
    }


def comparison_region(alpha_a: Tensor, alpha_b: Tensor) -> Tensor:
    """The pixels at least ``INTERIOR_MARGIN`` px inside both silhouettes ([V,H,W,1] each)."""
    return interior(alpha_a[..., 0] > 0.5, INTERIOR_MARGIN) & interior(alpha_b[..., 0] > 0.5, INTERIOR_MARGIN)


def _has_structure(x: Tensor, count: int) -> bool:
    return count > 0 and float((x**2).sum()) >= STRUCTURE_FLOOR * count


def ncc(x: Tensor, y: Tensor, region: Tensor) -> float:
    """``sum_R x y / sqrt(sum_R x^2 sum_R y^2)`` over ``region`` [V,H,W] (all views pooled, channels
    too); 0 where either side has no structure there (mean square below ``STRUCTURE_FLOOR``)."""
    xs, ys = x[region], y[region]
    if not (_has_structure(xs, xs.numel()) and _has_structure(ys, ys.numel())):
        return 0.0
    return float((xs * ys).sum() / torch.sqrt((xs**2).sum() * (ys**2).sum()))


def ncc_per_view(x: Tensor, y: Tensor, region: Tensor) -> List[float]:
    return [ncc(x[i : i + 1], y[i : i + 1], region[i : i + 1]) for i in range(x.shape[0])]


def structure_distance(x: Tensor, y: Tensor) -> float:
    """``sum (x - y)^2 / (sum x^2 + sum y^2)`` of two structure images (zero off their supports): 0 for
    identical structure or two without any, 1 for uncorrelated, 2 for opposite."""
    ex, ey = float((x**2).sum()), float((y**2).sum())
    floor = STRUCTURE_FLOOR * x.numel()
    ex, ey = (ex if ex >= floor else 0.0), (ey if ey >= floor else 0.0)
    if ex == 0.0 and ey == 0.0:
        return 0.0
    x = x if ex else torch.zeros_like(x)
    y = y if ey else torch.zeros_like(y)
    return float(((x - y) ** 2).sum()) / (ex + ey)


# --------------------------------------------------------------------------------------------------
# scores of renders against truths
# --------------------------------------------------------------------------------------------------
def identity_by_variant(rgb: Tensor, alpha: Tensor, truths: Dict[str, Dict[str, Tensor]],
                        background: Sequence[float] = WHITE) -> Dict[str, float]:
    """``ncc(structure(render), structure(truth_v))`` pooled over the views, per variant."""
    mine = bands(rgb, alpha, background)["structure"]
    return {v: ncc(mine, bands(t["rgb"], t["alpha"], background)["structure"], comparison_region(alpha, t["alpha"]))
            for v, t in truths.items()}


def sharpness(rgb: Tensor, alpha: Tensor, truth: Dict[str, Tensor], background: Sequence[float] = WHITE) -> float:
    """``ncc(fine(render), fine(truth))`` pooled over the views."""
    return ncc(bands(rgb, alpha, background)["fine"], bands(truth["rgb"], truth["alpha"], background)["fine"],
               comparison_region(alpha, truth["alpha"]))


def variant_identity(rgb: Tensor, alpha: Tensor, truths: Dict[str, Dict[str, Tensor]],
                     background: Sequence[float] = WHITE) -> Dict[str, object]:
    """``variant`` (None when no variant reaches ``MIN_MATCH``), ``identity`` (the best variant's
    correlation), ``identity_by_variant``, ``view_variants`` (each view's best variant, None below
    ``MIN_MATCH``) and ``consistency`` (module docstring; nan on a one-variant world or where the
    variants look alike in every view)."""
    names = list(truths)
    mine = bands(rgb, alpha, background)["structure"]
    theirs = {v: bands(t["rgb"], t["alpha"], background)["structure"] for v, t in truths.items()}
    regions = {v: comparison_region(alpha, t["alpha"]) for v, t in truths.items()}
    by_variant = {v: ncc(mine, theirs[v], regions[v]) for v in names}
    best = max(names, key=lambda v: by_variant[v])  # the first in catalogue order on ties
    found = best if by_variant[best] >= MIN_MATCH else None
    per_view = torch.tensor([ncc_per_view(mine, theirs[v], regions[v]) for v in names])  # [variants, V]
    top = per_view.max(dim=0).values
    view_variants = [names[int(per_view[:, i].argmax())] if top[i] >= MIN_MATCH else None for i in range(rgb.shape[0])]
    consistency = float("nan")
    if len(names) > 1:
        first = truths[names[0]]["rgb"]
        differ = torch.stack([(t["rgb"] != first).flatten(1).any(dim=1) for t in truths.values()]).any(dim=0)
        if differ.any():
            if found is None:
                consistency = 0.0
            else:
                mine_v = per_view[names.index(found)]
                fits = (mine_v >= top - 1e-6) & (mine_v >= MIN_MATCH)  # a tie fits either variant
                consistency = float(fits[differ].float().mean())
                view_variants = [found if bool(fits[i]) else view_variants[i] for i in range(rgb.shape[0])]
    return dict(variant=found, identity=by_variant[best], identity_by_variant=by_variant,
                view_variants=view_variants, consistency=consistency)


def janus(back_rgb: Tensor, back_alpha: Tensor, second_front: Dict[str, Tensor],
          true_back: Optional[Dict[str, Tensor]] = None, background: Sequence[float] = WHITE) -> Dict[str, float]:
    """``janus``: ``ncc(structure(back render), structure(second front))`` pooled over the back views;
    ``back_match``: the same with the true back (nan without it)."""
    mine = bands(back_rgb, back_alpha, background)["structure"]

    def match(t: Dict[str, Tensor]) -> float:
        theirs = bands(t["rgb"], t["alpha"], background)["structure"]
        return ncc(mine, theirs, comparison_region(back_alpha, t["alpha"]))

    return {"janus": match(second_front), "back_match": float("nan") if true_back is None else match(true_back)}


def view_diversity(rgb: Tensor, alpha: Tensor, background: Sequence[float] = WHITE) -> float:
    """Mean :func:`structure_distance` over the pairs of views ([V,...], V >= 2)."""
    s = bands(rgb, alpha, background)["structure"]
    pairs = [(i, j) for i in range(s.shape[0]) for j in range(i + 1, s.shape[0])]
    if not pairs:
        raise ValueError("view_diversity needs at least two views")
    return sum(structure_distance(s[i], s[j]) for i, j in pairs) / len(pairs)


def seed_diversity(rgbs: Sequence[Tensor], alphas: Sequence[Tensor], background: Sequence[float] = WHITE) -> float:
    """Mean :func:`structure_distance` between the renders of the same views by different seeds' assets
    (``rgbs[k]`` [V,H,W,3] of seed k, the same cameras for every k), over the seed pairs and views."""
    if len(rgbs) < 2:
        raise ValueError("seed_diversity needs the renders of at least two seeds")
    s = [bands(r, a, background)["structure"] for r, a in zip(rgbs, alphas)]
    values = [structure_distance(s[i][v], s[j][v]) for i in range(len(s)) for j in range(i + 1, len(s))
              for v in range(s[0].shape[0])]
    return sum(values) / len(values)


def fraction_of_reference(score: float, reference: float, floor: float = 0.0) -> float:
    """``(score - floor) / (reference - floor)``: 0 at the floor (no structure, or for Janus the true
    back's score), 1 at the reference (an oracle fit's score, or for Janus the two-faced control's);
    nan when the reference does not exceed the floor or a side is nan."""
    if any(math.isnan(x) for x in (score, reference, floor)) or reference <= floor:
        return float("nan")
    return (score - floor) / (reference - floor)


# --------------------------------------------------------------------------------------------------
# cameras, truths and the scores of an asset
# --------------------------------------------------------------------------------------------------
def back_cameras(settings, n_azimuths: int = N_BACK_AZIMUTHS,
                 elevation_offsets: Sequence[float] = BACK_ELEVATION_OFFSETS) -> Dict[str, Tensor]:
    """Held-out back views for scoring Janus: ``n_azimuths`` azimuths spread over the back sector
    (``|shift(a)| > 180 - back_threshold``) off the training grid, at the held-out elevation plus each of
    ``elevation_offsets`` (all below the overhead threshold), the first camera distance:
    ``elevation``, ``azimuth``, ``distance`` [n_azimuths x len(elevation_offsets)], elevation-major.
    The default at the default world: azimuths 157.5, 172.5, 187.5, 202.5 at elevations 0, 15, 30."""
    train_step = 360.0 / settings.n_azimuths
    spacing = min(train_step, 2.0 * settings.back_threshold / (n_azimuths + 1))
    offsets = (torch.arange(n_azimuths, dtype=torch.float64) - (n_azimuths - 1) / 2) * spacing
    for shift in (0.0, spacing / 4, -spacing / 4):
        azimuths = (180.0 + offsets + shift) % 360.0
        phase = torch.remainder(azimuths, train_step)
        on_grid = bool(((phase < 1e-6) | (phase > train_step - 1e-6)).any())
        in_back = bool((shift_azimuth_deg(azimuths).abs() > 180.0 - settings.back_threshold).all())
        if not on_grid and in_back:
            break
    else:
        raise ValueError(f"cannot place {n_azimuths} back azimuths off a grid of {settings.n_azimuths} inside the "
                         f"back sector ({settings.back_threshold} deg): ask for fewer")
    elevations = [settings.eval_elevation_deg + o for o in elevation_offsets]
    if len(set(elevations)) != len(elevations) or max(elevations) > settings.overhead_threshold:
        raise ValueError(f"back-view elevations {elevations} must be distinct and at most the overhead threshold "
                         f"({settings.overhead_threshold})")
    el = torch.tensor(elevations, dtype=torch.float32).repeat_interleave(n_azimuths)
    az = azimuths.float().repeat(len(elevations))
    return {"elevation": el, "azimuth": az, "distance": torch.full_like(el, settings.camera_distances[0])}


def render_truth(settings, obj: ToyObject, elevation: Tensor, azimuth: Tensor, distance: Tensor,
                 cache: Optional[Dict] = None) -> Dict[str, Tensor]:
    """``{"rgb", "alpha"}`` of an analytic object from orbit cameras, rendered as the world's training
    renders are (``supersample``^2 rays per pixel, box-filtered), over the world's background. With a
    ``cache`` dict (one per world settings), renders are kept there by object key, variant and cameras
    and shared (do not change them in place)."""
    tag = None
    if cache is not None:
        tag = (obj.key, obj.variant, *(tuple(torch.as_tensor(x).tolist()) for x in (elevation, azimuth, distance)))
        if tag in cache:
            return cache[tag]
    size, ss = settings.image_size, int(settings.supersample)
    fovy = torch.full_like(elevation, math.radians(settings.fovy_deg))
    out = render_object(obj, orbit_c2w(elevation, azimuth, distance), fovy, size * ss, size * ss,
                        background=settings.background)
    result = {k: F.avg_pool2d(out[k].permute(0, 3, 1, 2), ss).permute(0, 2, 3, 1) for k in ("rgb", "alpha")}
    if cache is not None:
        cache[tag] = result
    return result


def held_out_cameras(settings, key: str) -> Dict[str, Tensor]:
    """The world's held-out cameras of object ``key`` (``dataset.eval_cameras``, its first variant's)."""
    cams = eval_cameras(settings)
    pick = (cams["object_index"] == settings.objects.index(get_object(key).key)) & (cams["variant_index"] == 0)
    return {k: cams[k][pick] for k in ("elevation", "azimuth", "distance")}


def score_structure(render: Renderer, settings, key: str, reference: Optional[Dict[str, float]] = None,
                    parts: Sequence[str] = ("views", "janus"), cache: Optional[Dict] = None) -> Dict[str, object]:
    """Every structure score of the asset that ``render(elevation, azimuth, distance) -> (rgb [V,H,W,3],
    alpha [V,H,W,1])`` draws (in [0, 1], over the world's background; an asset's renderer through
    ``evaluate.render_asset``, or a control): identity, sharpness and consistency on the held-out
    views; ``view_diversity`` there with the truth's (``truth_view_diversity``); Janus on
    :func:`back_cameras` against the nearest variant (the first when none is found). With
    ``reference`` (the same scores of an oracle fit, or of any reference asset), adds
    ``<score>_fraction`` = :func:`fraction_of_reference` for identity, sharpness, consistency and
    view_diversity. ``cache``: see :func:`render_truth` (for scoring several assets of one world)."""
    unknown = set(parts) - {"views", "janus"}
    if unknown:
        raise ValueError(f"score_structure parts: unknown {sorted(unknown)}; use 'views' and/or 'janus'")
    key = get_object(key).key
    names = settings.variants_of(key)
    bg = settings.background
    out: Dict[str, object] = {"object": key}
    nearest = names[0]
    if "views" in parts:
        cams = held_out_cameras(settings, key)
        rgb, alpha = render(cams["elevation"], cams["azimuth"], cams["distance"])
        truths = {v: render_truth(settings, get_variant(key, v), **cams, cache=cache) for v in names}
        out.update(variant_identity(rgb, alpha, truths, bg))
        nearest = out["variant"] or nearest
        out["sharpness"] = sharpness(rgb, alpha, truths[nearest], bg)
        out["view_diversity"] = view_diversity(rgb, alpha, bg)
        out["truth_view_diversity"] = view_diversity(truths[nearest]["rgb"], truths[nearest]["alpha"], bg)
        out["n_views"] = int(rgb.shape[0])
    if "janus" in parts:
        back = back_cameras(settings)
        opposite = dict(back, azimuth=(back["azimuth"] + 180.0) % 360.0)
        back_rgb, back_alpha = render(back["elevation"], back["azimuth"], back["distance"])
        obj = get_variant(key, nearest)
        out.update(janus(back_rgb, back_alpha, render_truth(settings, obj, **opposite, cache=cache),
                         render_truth(settings, obj, **back, cache=cache), bg))
        out["n_back_views"] = int(back["azimuth"].numel())
    if reference is not None:
        for score in ("identity", "sharpness", "consistency", "view_diversity"):
            if score in out and score in reference:
                out[f"{score}_fraction"] = fraction_of_reference(float(out[score]), float(reference[score]))
    return out
