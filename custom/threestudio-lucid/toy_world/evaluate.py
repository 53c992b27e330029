"""Scores of a generated asset against the toy world's ground truth.

For the object the prompt names, the asset is rendered from the world's held-out cameras (azimuths
off the training grid) and compared with the analytic renders:

- ``psnr``: PSNR of the rgb renders (both over the world's white background), averaged over views;
- ``iou``: intersection over union of the masks (asset alpha > 0.5 vs the object's silhouette);
- ``janus``: for the back views (|azimuth| > 180 - back threshold), how much the render looks like
  the object's FRONT seen from there (the ground truth at azimuth + 180, mirrored: what a duplicated
  face would look like) rather than its true back:
  ``d_back / (d_back + d_front)`` with ``d`` the mean squared rgb error over the union of the two
  silhouettes; 0 = the true back, 1 = a second front (a Janus face), about 0.5 = cannot tell. Only
  meaningful for objects whose front and back differ (the penguin); reported for every object.
"""
import json
import math
from typing import Any, Dict

import torch
import torch.nn.functional as F

from ..compat import get_ray_directions, get_rays
from .dataset import eval_cameras, shift_azimuth_deg
from .objects import get_object, orbit_c2w, render_object
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


@torch.no_grad()
def evaluate_renderer(renderer, world_path: str, prompt: str, device=None) -> Dict[str, Any]:
    """Render the asset behind ``renderer`` (a ``lucid-gaussian-rasterizer``) from the held-out cameras
    and score it. Returns the scores plus the images (``renders``, ``ground_truth``) for a grid."""
    settings = read_toy_world_settings(world_path)
    key = object_of_prompt(prompt, settings.objects)
    obj = get_object(key)
    cams = eval_cameras(settings)
    pick = cams["object_index"] == settings.objects.index(key)
    elevation, azimuth, distance = cams["elevation"][pick], cams["azimuth"][pick], cams["distance"][pick]
    size = settings.image_size
    fovy = torch.full_like(elevation, math.radians(settings.fovy_deg))
    c2w = orbit_c2w(elevation, azimuth, distance)
    truth = render_object(obj, c2w, fovy, size, size, background=settings.background)

    device = device or next(iter(renderer.buffers()), torch.zeros(0)).device
    directions = get_ray_directions(size, size, 1.0)[None].repeat(len(c2w), 1, 1, 1)
    focal = 0.5 * size / torch.tan(0.5 * fovy)
    directions[..., :2] = directions[..., :2] / focal[:, None, None, None]
    _, rays_d = get_rays(directions, c2w, keepdim=True)
    was_training = renderer.training
    renderer.eval()
    out = renderer(c2w=c2w.to(device), fovy=fovy.to(device), height=size, width=size, rays_d=rays_d.to(device))
    renderer.train(was_training)
    # the asset over the world's background (the renderer's background may differ)
    bg = torch.tensor(settings.background, dtype=torch.float32)
    alpha = out["comp_mask"].float().cpu()
    rgb = (out["comp_rgb"].float().cpu() - (1 - alpha) * _background_of(out, renderer, rays_d, device)) + (1 - alpha) * bg
    rgb = rgb.clamp(0, 1)

    psnrs = [psnr(rgb[i], truth["rgb"][i]) for i in range(len(c2w))]
    ious = [mask_iou(alpha[i] > 0.5, truth["alpha"][i] > 0.5) for i in range(len(c2w))]
    back = shift_azimuth_deg(azimuth).abs() > 180.0 - settings.back_threshold
    janus = []
    for i in back.nonzero().flatten().tolist():
        front = render_object(
            obj, orbit_c2w(elevation[i : i + 1], azimuth[i : i + 1] + 180.0, distance[i : i + 1]), fovy[i : i + 1],
            size, size, background=settings.background,
        )
        mirrored = {k: v[0].flip(1) for k, v in front.items()}
        janus.append(janus_score(rgb[i], {k: v[i] for k, v in truth.items()}, mirrored))
    return {
        "object": key,
        "psnr": sum(psnrs) / len(psnrs),
        "iou": sum(ious) / len(ious),
        "janus": sum(janus) / len(janus) if janus else float("nan"),
        "n_views": len(c2w),
        "azimuths": azimuth.tolist(),
        "renders": rgb,
        "ground_truth": truth["rgb"],
    }


def _background_of(out, renderer, rays_d, device) -> torch.Tensor:
    """The background the renderer composited (eval mode: deterministic)."""
    return renderer.background(dirs=rays_d.to(device)).float().cpu()


def scores_only(result: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in result.items() if k not in ("renders", "ground_truth")}


def write_scores(result: Dict[str, Any], path: str) -> None:
    with open(path, "w") as f:
        json.dump(scores_only(result), f, indent=2)
