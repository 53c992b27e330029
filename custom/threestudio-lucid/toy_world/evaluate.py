"""Scores of a generated asset against the toy world's ground truth.

For the object the prompt names, the asset is rendered from the world's held-out cameras (azimuths
off the training grid, uniform even on a biased world) and compared with the analytic renders of
each of the object's variants (one, ``plain``, unless the world is multi-modal):

- nearest variant: the variant with the best mean PSNR over the held-out views (an exact view counts
  as ``PSNR_CAP`` dB); every score below is against it (on a one-variant world, simply the object);
- ``psnr``: PSNR of the rgb renders (both over the world's white background), averaged over views;
- ``iou``: intersection over union of the masks (asset alpha > 0.5 vs the object's silhouette);
- ``sharpness``: high-frequency energy of the asset's renders over that of the ground truth,
  ``sum_views sum_R |lap(render)|^2 / sum_views sum_R |lap(truth)|^2`` with ``lap`` the 5-point
  Laplacian per rgb channel and ``R`` the pixels at least ``INTERIOR_MARGIN`` pixels inside BOTH
  silhouettes (so the outline, which a blend keeps, does not count): 1 = as much detail as the
  truth, < 1 = blurrier (a blend of variants, an over-smoothed asset), > 1 = noisier; nan where the
  truth has no interior detail. The truth here is rendered as the world's training renders are
  (``supersample``^2 rays per pixel, box-filtered), since a splat asset is anti-aliased too; PSNR,
  IoU and Janus keep the one-ray-per-pixel truth they have always used. Meaningful where the truth
  has detail (the textured variants): a plain object's smooth shading has almost no energy;
- ``janus``: for the back views (|azimuth| > 180 - back threshold), how much the render looks like
  the object's FRONT seen from there (the ground truth at azimuth + 180, mirrored: what a duplicated
  face would look like) rather than its true back:
  ``d_back / (d_back + d_front)`` with ``d`` the mean squared rgb error over the union of the two
  silhouettes; 0 = the true back, 1 = a second front (a Janus face), about 0.5 = cannot tell. Only
  meaningful for objects whose front and back differ (the penguin); reported for every object.

On a multi-modal world also:

- ``variant``: the nearest variant's name; ``psnr_by_variant`` / ``iou_by_variant``: the scores
  against every variant; ``view_variants``: each view's own nearest variant (least rgb error);
- ``consistency``: the fraction of the views where the variants differ whose own nearest variant is
  the asset's (ties count: a view where two variants look alike fits either); 1 = every view commits
  to one variant, lower = views of different variants stitched together.

:func:`evaluate_renderer` adds the structure scores of ``structure_metrics`` (which read markings, not
brightness; issue 27) under the prefix ``structure_`` (:func:`structure_scores`): ``structure_identity`` and
``structure_variant``, ``structure_sharpness``, ``structure_consistency``, ``structure_janus`` (on the 12 back
views of ``structure_metrics.back_cameras``) with ``structure_back_match`` and
``structure_janus_two_faced`` (the two-faced control's Janus on the same views, nan for an object without a
front to copy), ``structure_view_diversity`` with the truth's; and, given an oracle fit's scores
(``oracle.py``), each as a fraction of the oracle's, ``structure_<score>_fraction_of_oracle`` =
``score / oracle's`` for identity, sharpness, consistency and view diversity, and for Janus
``structure_janus_fraction_of_two_faced`` = ``(janus - oracle's) / (two-faced - oracle's)``: 0 = the oracle's
back, 1 = a second front (a ratio to the oracle's own Janus, about 0, would mean nothing).
"""
import json
import math
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F

from ..atomic_files import write_text
from ..compat import get_ray_directions, get_rays
from .dataset import eval_cameras, shift_azimuth_deg
from .objects import get_object, get_variant, orbit_c2w, render_object
from .pipeline import read_toy_world_settings


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = F.mse_loss(a, b).item()
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    inter, union = (a & b).sum().item(), (a | b).sum().item()
    return 1.0 if union == 0 else inter / union


def janus_score(render: torch.Tensor, back_gt: Dict[str, torch.Tensor], front_gt: Dict[str, torch.Tensor]) -> float:
    """``d_back / (d_back + d_front)`` for one back view; ``front_gt`` is already mirrored."""
    region = (back_gt["alpha"] > 0.5) | (front_gt["alpha"] > 0.5)
    region = region.expand_as(render)
    d_back = ((render - back_gt["rgb"]) ** 2)[region].mean().item()
    d_front = ((render - front_gt["rgb"]) ** 2)[region].mean().item()
    return 0.5 if d_back + d_front == 0 else d_back / (d_back + d_front)


def object_of_prompt(prompt: str, objects) -> str:
    """The world object a prompt names ("a penguin", "a penguin, front view", or a key)."""
    for key in objects:
        obj = get_object(key)
        if prompt == key or prompt == obj.name or prompt.startswith(obj.name + ","):
            return key
    names = ", ".join(repr(get_object(k).name) for k in objects)
    raise ValueError(f"prompt {prompt!r} names no object of this toy world; use one of {names}")


PSNR_CAP = 100.0  # dB, for choosing the nearest variant: an exact view (inf) counts as this
INTERIOR_MARGIN = 2  # pixels: the Laplacian's stencil and an anti-aliased edge stay off the outline


def laplacian(rgb: torch.Tensor) -> torch.Tensor:
    """The 5-point Laplacian of images [V,H,W,3], per channel ([V,H,W,3]; zero padding at the border)."""
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=rgb.dtype)
    x = rgb.permute(0, 3, 1, 2).reshape(-1, 1, *rgb.shape[1:3])
    return F.conv2d(x, kernel[None, None], padding=1).reshape(rgb.shape[0], 3, *rgb.shape[1:3]).permute(0, 2, 3, 1)


def interior(mask: torch.Tensor, margin: int = INTERIOR_MARGIN) -> torch.Tensor:
    """Pixels of bool masks [V,H,W] at least ``margin`` pixels (chessboard distance) inside the mask and
    the image."""
    inside = F.pad(mask.float(), (margin,) * 4)  # off the image counts as outside
    eroded = -F.max_pool2d(-inside[:, None], 2 * margin + 1, stride=1)[:, 0]
    return eroded > 0.5


def high_frequency_energy(rgb: torch.Tensor, region: torch.Tensor) -> float:
    """``sum_R |lap(rgb)|^2`` over the pixels ``region`` [V,H,W] selects (all views together)."""
    return float((laplacian(rgb) ** 2).sum(-1)[region].sum())


def sharpness(render: torch.Tensor, render_mask: torch.Tensor, truth: torch.Tensor, truth_mask: torch.Tensor) -> float:
    """High-frequency energy of ``render`` over that of ``truth`` (images [V,H,W,3], bool masks [V,H,W])
    on the interior of both masks; nan when the truth has no energy there."""
    region = interior(render_mask) & interior(truth_mask)
    reference = high_frequency_energy(truth, region)
    return float("nan") if reference == 0 else high_frequency_energy(render, region) / reference


def ground_truth(
    settings, key: str, elevation, azimuth, distance, supersample: int = 1
) -> Dict[str, Dict[str, torch.Tensor]]:
    """``{variant: {"rgb", "alpha"}}``: the analytic renders of each of the world's variants of object
    ``key`` from the cameras (degrees), at the world's image size over its background. With
    ``supersample`` > 1, ``supersample``^2 rays per pixel box-filtered (anti-aliased, as the world's
    training renders); with 1, one ray per pixel centre (the truth PSNR, IoU and Janus have always used)."""
    size, ss = settings.image_size, int(supersample)
    fovy = torch.full_like(elevation, math.radians(settings.fovy_deg))
    c2w = orbit_c2w(elevation, azimuth, distance)
    out = {}
    for v in settings.variants_of(key):
        r = render_object(get_variant(key, v), c2w, fovy, size * ss, size * ss, background=settings.background)
        if ss > 1:
            r = {k: F.avg_pool2d(r[k].permute(0, 3, 1, 2), ss).permute(0, 2, 3, 1) for k in ("rgb", "alpha")}
        out[v] = {"rgb": r["rgb"], "alpha": r["alpha"]}
    return out


def score_renders(
    settings, key: str, rgb: torch.Tensor, alpha: torch.Tensor, elevation, azimuth, distance
) -> Dict[str, Any]:
    """Score an asset's renders ``rgb`` [V,H,W,3] (in [0, 1], over the world's background) and ``alpha``
    [V,H,W,1] of object ``key`` from the cameras ``elevation``, ``azimuth``, ``distance`` [V] (see the
    module docstring). Returns the scores and ``ground_truth`` (the nearest variant's rgb)."""
    truths = ground_truth(settings, key, elevation, azimuth, distance)
    names = list(truths)
    n = rgb.shape[0]
    mse = torch.stack([((rgb - t["rgb"]) ** 2).mean(dim=(1, 2, 3)) for t in truths.values()])  # [variants, V]
    psnrs = torch.tensor([[psnr(rgb[i], t["rgb"][i]) for i in range(n)] for t in truths.values()], dtype=torch.float64)
    ious = torch.tensor(
        [[mask_iou(alpha[i] > 0.5, t["alpha"][i] > 0.5) for i in range(n)] for t in truths.values()], dtype=torch.float64
    )
    # exact views (inf) count as PSNR_CAP, so that a variant exact on every view beats one that is exact
    # only where the variants look alike; first on ties
    best = int(torch.argmax(psnrs.clamp(max=PSNR_CAP).mean(dim=1)))
    truth = truths[names[best]]
    # detail is measured against the truth rendered as the world's training renders (anti-aliased, as a
    # splat asset is): against one ray per pixel even those renders would score 0.3 - 0.6
    smooth = ground_truth(settings, key, elevation, azimuth, distance, settings.supersample)[names[best]]
    result: Dict[str, Any] = {
        "object": key,
        "psnr": float(psnrs[best].mean()),
        "iou": float(ious[best].mean()),
        "janus": janus_of_views(settings, key, names[best], rgb, truth, elevation, azimuth, distance),
        "sharpness": sharpness(rgb, alpha[..., 0] > 0.5, smooth["rgb"], smooth["alpha"][..., 0] > 0.5),
        "n_views": n,
        "azimuths": azimuth.tolist(),
    }
    if len(names) > 1:
        # a view tells variants apart only where their truths differ; ties (equal error) fit either
        differ = torch.stack([(t["rgb"] != truth["rgb"]).flatten(1).any(dim=1) for t in truths.values()]).any(dim=0)
        fits = mse[best] <= mse.min(dim=0).values
        result.update(
            variant=names[best],
            consistency=float(fits[differ].float().mean()) if differ.any() else float("nan"),
            psnr_by_variant={v: float(psnrs[i].mean()) for i, v in enumerate(names)},
            iou_by_variant={v: float(ious[i].mean()) for i, v in enumerate(names)},
            view_variants=[names[best] if fits[i] else names[int(mse[:, i].argmin())] for i in range(n)],
        )
    result["ground_truth"] = truth["rgb"]
    return result


def janus_of_views(settings, key: str, variant: str, rgb, truth, elevation, azimuth, distance) -> float:
    """Mean :func:`janus_score` of the back views against ``variant``'s truth (nan without back views)."""
    back = (shift_azimuth_deg(azimuth).abs() > 180.0 - settings.back_threshold).nonzero().flatten()
    if back.numel() == 0:
        return float("nan")
    size = settings.image_size
    fovy = torch.full((back.numel(),), math.radians(settings.fovy_deg))
    c2w = orbit_c2w(elevation[back], azimuth[back] + 180.0, distance[back])
    front = render_object(get_variant(key, variant), c2w, fovy, size, size, background=settings.background)
    scores = [
        janus_score(rgb[i], {k: v[i] for k, v in truth.items()}, {k: v[j].flip(1) for k, v in front.items()})
        for j, i in enumerate(back.tolist())
    ]
    return sum(scores) / len(scores)


@torch.no_grad()
def evaluate_renderer(renderer, world_path: str, prompt: str, device=None, structure: bool = True,
                      oracle: Optional[Dict[str, Any]] = None, cache: Optional[Dict] = None) -> Dict[str, Any]:
    """Render the asset behind ``renderer`` (a ``lucid-gaussian-rasterizer``) from the held-out cameras
    and score it (:func:`score_renders`), with the structure scores unless ``structure`` is False
    (:func:`structure_scores`; ``oracle``: an oracle fit's scores, for the fractions). Returns the scores plus
    the images (``renders``, ``ground_truth``: the nearest variant's) for a grid. ``cache``: a dict kept across
    calls for the same world (the analytic renders the structure scores compare with)."""
    settings = read_toy_world_settings(world_path)
    key = object_of_prompt(prompt, settings.objects)
    cams = eval_cameras(settings)
    pick = (cams["object_index"] == settings.objects.index(key)) & (cams["variant_index"] == 0)
    elevation, azimuth, distance = cams["elevation"][pick], cams["azimuth"][pick], cams["distance"][pick]
    rgb, alpha = render_asset(renderer, settings, elevation, azimuth, distance, device)
    result = score_renders(settings, key, rgb, alpha, elevation, azimuth, distance)
    if structure:
        result.update(structure_scores(lambda el, az, d: render_asset(renderer, settings, el, az, d, device),
                                       settings, key, oracle, cache))
    result["renders"] = rgb
    return result


STRUCTURE_PREFIX = "structure_"
FRACTION_SCORES = ("identity", "sharpness", "consistency", "view_diversity")  # score / the oracle's


def structure_scores(render, settings, key: str, oracle: Optional[Dict[str, Any]] = None,
                     cache: Optional[Dict] = None) -> Dict[str, Any]:
    """``structure_metrics.score_structure`` of the asset ``render(elevation, azimuth, distance) -> (rgb, alpha)``
    draws, under ``structure_`` names, with the two-faced control's Janus on the same back views and, given an
    oracle fit's scores ``oracle`` (its ``toy_world_scores.json``), the fractions of the module docstring."""
    from .positive_controls import truth, two_faced_object
    from .structure_metrics import back_cameras, janus, render_truth, score_structure

    cache = {} if cache is None else cache
    scores = score_structure(render, settings, key, cache=cache)
    scores.pop("object")
    out = {STRUCTURE_PREFIX + k: v for k, v in scores.items()}
    nearest = get_variant(key, scores["variant"] or settings.variants_of(key)[0])
    try:
        two_faced = two_faced_object(nearest)
    except ValueError:  # nothing in front to copy (a ball, a cube): no Janus control
        out[STRUCTURE_PREFIX + "janus_two_faced"] = float("nan")
    else:
        back = back_cameras(settings)
        opposite = dict(back, azimuth=(back["azimuth"] + 180.0) % 360.0)
        rgb, alpha = truth(settings, two_faced, cache)(back["elevation"], back["azimuth"], back["distance"])
        second_front = render_truth(settings, nearest, **opposite, cache=cache)
        out[STRUCTURE_PREFIX + "janus_two_faced"] = janus(rgb, alpha, second_front, None, settings.background)["janus"]
    if oracle is not None:
        out.update(fractions_of_oracle(out, oracle))
    return out


def fractions_of_oracle(scores: Dict[str, Any], oracle: Dict[str, Any]) -> Dict[str, float]:
    """``structure_<score>_fraction_of_oracle`` for :data:`FRACTION_SCORES` and
    ``structure_janus_fraction_of_two_faced`` (module docstring) from two sets of ``structure_`` scores (an
    asset's and an oracle fit's, as ``toy_world_scores.json`` holds them); nan where a side is missing."""
    from .structure_metrics import fraction_of_reference

    def get(d, name):
        value = d.get(STRUCTURE_PREFIX + name)
        return float("nan") if value is None else float(value)

    out = {f"{STRUCTURE_PREFIX}{k}_fraction_of_oracle": fraction_of_reference(get(scores, k), get(oracle, k))
           for k in FRACTION_SCORES}
    out[STRUCTURE_PREFIX + "janus_fraction_of_two_faced"] = fraction_of_reference(
        get(scores, "janus"), get(scores, "janus_two_faced"), get(oracle, "janus"))
    return out


def render_asset(renderer, settings, elevation: torch.Tensor, azimuth: torch.Tensor, distance: torch.Tensor, device=None):
    """The asset behind ``renderer`` from orbit cameras (degrees; the world's image size and field of
    view), over the world's background: ``rgb [V, H, W, 3]`` in [0, 1] and ``alpha [V, H, W, 1]``, on the CPU."""
    size = settings.image_size
    fovy = torch.full_like(elevation, math.radians(settings.fovy_deg))
    c2w = orbit_c2w(elevation, azimuth, distance)

    device = device or next(iter(renderer.buffers()), torch.zeros(0)).device
    directions = get_ray_directions(size, size, 1.0)[None].repeat(len(c2w), 1, 1, 1)
    focal = 0.5 * size / torch.tan(0.5 * fovy)
    directions[..., :2] = directions[..., :2] / focal[:, None, None, None]
    _, rays_d = get_rays(directions, c2w, keepdim=True)
    was_training = renderer.training
    renderer.eval()
    with torch.no_grad():
        out = renderer(c2w=c2w.to(device), fovy=fovy.to(device), height=size, width=size, rays_d=rays_d.to(device))
    renderer.train(was_training)
    # the asset over the world's background (the renderer's background may differ)
    bg = torch.tensor(settings.background, dtype=torch.float32)
    alpha = out["comp_mask"].float().cpu()
    rgb = (out["comp_rgb"].float().cpu() - (1 - alpha) * _background_of(out, renderer, rays_d, device)) + (1 - alpha) * bg
    return rgb.clamp(0, 1), alpha


def _background_of(out, renderer, rays_d, device) -> torch.Tensor:
    """The background the renderer composited (eval mode: deterministic)."""
    return renderer.background(dirs=rays_d.to(device)).float().cpu()


def scores_only(result: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in result.items() if k not in ("renders", "ground_truth")}


def write_scores(result: Dict[str, Any], path: str) -> None:
    """The scores as JSON, written atomically."""
    write_text(path, json.dumps(scores_only(result), indent=2))
