"""``lucid-sds-guidance``: DreamFusion's Score Distillation Sampling, threestudio's formulation.

``grad = w(t) (eps_hat(x_t, t, y) - eps)``, ``x_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps``, injected
into the latents with the shared loss trick (``loss_sds``). The baseline every other guidance is
compared with.

CFG: threestudio's SDS guides with ``eps_c + s (eps_c - eps_u)``, which is diffusers' CFG at scale
``s + 1``; its default ``guidance_scale: 100`` means that. Under Perp-Neg threestudio uses
``eps_u + s (...)`` and so do we. Both are kept so threestudio configs give the same gradients.
"""
from dataclasses import dataclass
from typing import Optional

import torch

from ..compat import register
from .diffusion_base import StableDiffusionGuidanceBase


@register("lucid-sds-guidance")
class SDSGuidance(StableDiffusionGuidanceBase):
    @dataclass
    class Config(StableDiffusionGuidanceBase.Config):
        guidance_scale: float = 100.0

    cfg: Config

    def forward(
        self,
        rgb: torch.Tensor,
        prompt_utils,
        elevation: torch.Tensor,
        azimuth: torch.Tensor,
        camera_distances: torch.Tensor,
        rgb_as_latents: bool = False,
        noise: Optional[torch.Tensor] = None,
        t: Optional[torch.Tensor] = None,
        **kwargs,
    ):
        """``rgb`` [B,H,W,3] in [0,1]. ``noise`` and ``t`` may be given (tests, reproducible studies);
        ``control_depth`` [B,H,W,1] (in ``kwargs``) conditions the ControlNet, when one is configured."""
        batch_size = rgb.shape[0]
        latents = self.prepare_latents(rgb, rgb_as_latents)
        if t is None:
            t = self.sample_timesteps(batch_size)
        with torch.no_grad():
            if noise is None:
                noise = torch.randn_like(latents)
            latents_noisy = self.scheduler.add_noise(latents, noise, t)
            scale = self.cfg.guidance_scale if prompt_utils.use_perp_neg else self.cfg.guidance_scale + 1.0
            eps = self.predict_noise(
                latents_noisy, t, prompt_utils, elevation, azimuth, camera_distances, guidance_scale=scale,
                control_depth=kwargs.get("control_depth"),
            )["eps"]
        grad = self.clean_gradient(self.weight(t) * (eps - noise))
        return {
            "loss_sds": self.gradient_as_loss(latents, grad),
            "grad_norm": grad.norm(),
            "min_step": self.min_step,
            "max_step": self.max_step,
            "timesteps": t,
        }
