"""``lucid-gaussian-rasterizer``: renders the Gaussian geometry for a threestudio camera batch.

One renderer, several rasterizer backends behind one function signature (that of
``reference.rasterize_reference``); the backend is a config string. The renderer owns the
threestudio side (camera conversion, augmentations, background compositing, densification outputs);
a backend rasterizes one view, and optionally all views of a batch in one call (its ``views``).
"""
import random
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence

import torch
from torch import Tensor

from ..compat import Rasterizer, info, register
from ..errors import ConfigError
from .camera import GaussianCamera, camera_from_threestudio
from .precision import promote_half
from .reference import rasterize_reference

# name -> rasterize(means, quats, scales, opacities, camera, *, features, sh_degree, background,
#                   screen_points, near_plane, tile_size) -> dict (see rasterize_reference)
RASTERIZER_BACKENDS: Dict[str, Callable[..., Dict[str, Tensor]]] = {"reference": rasterize_reference}


def register_backend(name: str, rasterize: Callable[..., Dict[str, Tensor]]) -> None:
    """Make ``rasterize`` selectable as ``system.renderer.backend=<name>``."""
    if name in RASTERIZER_BACKENDS:
        raise ValueError(f"rasterizer backend '{name}' is already registered")
    RASTERIZER_BACKENDS[name] = rasterize


def rasterize_views_one_by_one(rasterize: Callable[..., Dict[str, Tensor]], means: Tensor, quats: Tensor,
                               scales: Sequence[Tensor], opacities: Tensor, cameras: Sequence[GaussianCamera], *,
                               features: Optional[Tensor] = None, colors: Optional[Tensor] = None,
                               sh_degrees: Sequence[int], screen_points: Optional[Sequence[Tensor]] = None,
                               near_plane: float, tile_size: int) -> Dict[str, Any]:
    """The batched interface (a backend's ``views`` attribute) for a backend that renders one view
    per call: ``scales``, ``sh_degrees`` and ``screen_points`` per view. Returns ``rgb``
    [V, H, W, 3] (premultiplied, no background), ``depth`` and ``alpha`` [V, H, W, 1], and per-view
    lists ``radii`` and ``visibility``."""
    outs = [
        rasterize(means, quats, scales[i], opacities, camera, features=features, colors=colors,
                  sh_degree=sh_degrees[i], background=None,
                  screen_points=None if screen_points is None else screen_points[i],
                  near_plane=near_plane, tile_size=tile_size)
        for i, camera in enumerate(cameras)
    ]
    batched = {key: torch.stack([o[key] for o in outs]) for key in ("rgb", "depth", "alpha")}
    batched.update(radii=[o["radii"] for o in outs], visibility=[o["visibility"] for o in outs])
    return batched


def rasterize_views(rasterize: Callable[..., Dict[str, Tensor]], *args, **kwargs) -> Dict[str, Any]:
    """All views of a batch with backend ``rasterize``: its own ``views`` (one call for the batch)
    where it has one, else one call per view."""
    views = getattr(rasterize, "views", None)
    if views is not None:
        return views(*args, **kwargs)
    return rasterize_views_one_by_one(rasterize, *args, **kwargs)


def get_backend(name: str) -> Callable[..., Dict[str, Tensor]]:
    try:
        return RASTERIZER_BACKENDS[name]
    except KeyError:
        known = ", ".join(sorted(RASTERIZER_BACKENDS))
        raise ConfigError(f"system.renderer.backend='{name}' is unknown; known backends: {known}") from None


@register("lucid-gaussian-rasterizer")
class GaussianRasterizer(Rasterizer):
    """Rasterize ``self.geometry`` (threestudio-3dgs property names: ``get_xyz`` [N,3],
    ``get_features`` [N,K,3], ``get_scaling`` [N,3], ``get_rotation`` [N,4] normalised wxyz,
    ``get_opacity`` [N,1], ``active_sh_degree``) for each camera of the batch and composite it over
    ``self.background(dirs=rays_d)``: ``comp_rgb = rgb_premultiplied + (1 - alpha) bg``.

    ``bg_inversion_prob``: in training, each view's background is replaced by ``1 - background``
    with this probability (default 0: never); never in eval. threestudio-3dgs has a field
    ``invert_bg_prob`` that counts the other way (it inverts when ``rand() > p``, and always in eval);
    the different name keeps a copied config from silently meaning the opposite.
    """

    @dataclass
    class Config(Rasterizer.Config):
        # auto: the fastest available (cpu kernel on CPU; gsplat, then inria, on CUDA); reference: the torch
        # specification; cpu, gsplat, inria: that backend or an error saying why not
        backend: str = "auto"
        near_plane: float = 0.2
        tile_size: int = 16
        bg_inversion_prob: float = 0.0
        # LucidDreamer's training augmentations (never in eval); 0 disables
        scale_noise_prob: float = 0.0  # per view: scales += N(0, (scale_noise_std * scales)^2), clamped >= 0
        scale_noise_std: float = 0.1118  # LucidDreamer: sqrt(0.2) / 4
        sh_degree_zero_prob: float = 0.0  # per view: render with SH degree 0 (view-independent colour)

    cfg: Config

    def configure(self, geometry, material, background) -> None:
        super().configure(geometry, material, background)
        if self.cfg.tile_size < 1:
            raise ConfigError(f"system.renderer.tile_size must be >= 1, got {self.cfg.tile_size}")
        for name in ("bg_inversion_prob", "scale_noise_prob", "sh_degree_zero_prob"):
            if not 0.0 <= getattr(self.cfg, name) <= 1.0:
                raise ConfigError(f"system.renderer.{name} must be in [0, 1] (a probability), got {getattr(self.cfg, name)}")
        if not self.cfg.scale_noise_std >= 0.0:
            raise ConfigError(f"system.renderer.scale_noise_std must be >= 0, got {self.cfg.scale_noise_std}")
        self.rasterize = get_backend(self.cfg.backend)
        # CUDA backends: a missing library or a setting the library cannot honour fails now, not at step 1
        library = getattr(self.rasterize, "library", None)
        if library is not None:
            library.require_module()
        check_settings = getattr(self.rasterize, "check_settings", None)
        if check_settings is not None:
            check_settings(self.cfg.near_plane, self.cfg.tile_size)
        info(f"lucid-gaussian-rasterizer: using the '{self.cfg.backend}' rasterizer backend")

    def forward(
        self,
        c2w: Tensor,
        fovy: Tensor,
        height: int,
        width: int,
        rays_d: Tensor,
        **kwargs: Any,
    ) -> Dict[str, Any]:
        """``c2w`` [B,4,4] OpenGL camera-to-world, ``fovy`` [B] radians, ``rays_d`` [B,H,W,3] for the
        background. Returns ``comp_rgb`` [B,H,W,3], ``comp_depth`` [B,H,W,1] (alpha-weighted view
        z), ``comp_mask`` [B,H,W,1] (alpha) and per-view lists ``viewspace_points`` (leaves whose
        ``.grad`` is d loss / d NDC-xy, [N,3]), ``visibility_filter`` (bool [N]), ``radii`` (int [N]).

        Everything here runs in float32 with autocast off (``precision.py``): under a mixed-precision
        trainer the camera conversion and the projection would otherwise run in half precision."""
        with torch.autocast(device_type=self.geometry.get_xyz.device.type, enabled=False):
            return self._render(c2w, fovy, height, width, rays_d)

    def _render(self, c2w: Tensor, fovy: Tensor, height: int, width: int, rays_d: Tensor) -> Dict[str, Any]:
        geometry = self.geometry
        means, features, scales, quats, opacities = (
            promote_half(t) for t in (geometry.get_xyz, geometry.get_features, geometry.get_scaling,
                                      geometry.get_rotation, geometry.get_opacity.reshape(-1))
        )
        sh_degree = int(geometry.active_sh_degree)
        c2w = promote_half(c2w)

        bg = promote_half(self.background(dirs=rays_d))
        n_views = c2w.shape[0]
        # Host-device synchronisation on a GPU: the focal lengths are Python floats (the CUDA libraries take
        # them as settings), so the batch's fovy comes to the host once here -- the renderer's only sync
        # (one per batch, not one per view); the cpu backend reads all cameras in one transfer.
        fovy_values = torch.as_tensor(fovy).detach().reshape(-1).tolist()
        cameras = [camera_from_threestudio(c2w[i], fovy_values[i], height, width) for i in range(n_views)]
        augmented, inverted = [], []  # per view, in the order the random numbers were always drawn
        for _ in range(n_views):
            augmented.append(self._augment(scales, sh_degree))
            inverted.append(self.training and self.cfg.bg_inversion_prob > 0
                            and random.random() < self.cfg.bg_inversion_prob)
        viewspace_points = [
            torch.zeros(means.shape[0], 3, dtype=means.dtype, device=means.device, requires_grad=True)
            for _ in range(n_views)
        ]
        out = rasterize_views(
            self.rasterize,
            means,
            quats,
            [s for s, _ in augmented],
            opacities,
            cameras,
            features=features,
            sh_degrees=[d for _, d in augmented],
            screen_points=viewspace_points,
            near_plane=self.cfg.near_plane,
            tile_size=self.cfg.tile_size,
        )
        if any(inverted):
            bg = torch.stack([1.0 - bg[i] if inverted[i] else bg[i] for i in range(n_views)])
        alpha = out["alpha"]
        return {
            "comp_rgb": out["rgb"] + (1.0 - alpha) * bg,
            "comp_depth": out["depth"],
            "comp_mask": alpha,
            "viewspace_points": viewspace_points,
            "visibility_filter": out["visibility"],
            "radii": out["radii"],
        }

    def _augment(self, scales: Tensor, sh_degree: int):
        """LucidDreamer's per-view scale noise and SH-degree-0 renders (training only)."""
        if not self.training:
            return scales, sh_degree
        if self.cfg.scale_noise_prob > 0 and random.random() < self.cfg.scale_noise_prob:
            scales = (scales + torch.randn_like(scales) * self.cfg.scale_noise_std * scales).clamp_min(0.0)
        if self.cfg.sh_degree_zero_prob > 0 and random.random() < self.cfg.sh_degree_zero_prob:
            sh_degree = 0
        return scales, sh_degree

    def batch_forward(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        """threestudio-3dgs systems call ``renderer.batch_forward(batch)``; same as ``forward(**batch)``."""
        return self(**batch)
