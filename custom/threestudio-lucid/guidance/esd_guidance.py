"""``lucid-esd-guidance``: Entropic Score Distillation (Wang et al., "Taming Mode Collapse in Score
Distillation for Text-to-3D Generation", CVPR 2024): VSD with the entropy of the rendered-image
distribution added back with weight ``lambda_coeff`` (λ).

In score form the update is ``∇log p_t(x|y) - λ ∇log q_t(x|null) - (1 - λ) ∇log q_t(x|c)``: the LoRA
score is a mix of its camera-free and camera-conditioned predictions. VSD's camera CFG
``eps_free + s (eps_cam - eps_free) = s eps_cam + (1 - s) eps_free`` is exactly that mix with
``s = guidance_scale_lora = 1 - λ``, so ESD is ``lucid-vsd-guidance`` reparameterised, nothing more:
λ = 0 is VSD, λ = 1 uses only the camera-free LoRA score. The ESD authors suggest λ = 0.5
(``guidance_scale_lora=0.5`` in their README, "may vary in different scenarios"); their 2-D toy uses
λ = 1.

ESD needs the null camera to be trained, so ``lora_cfg_training`` must stay true.
"""
from dataclasses import dataclass
from typing import Optional

from ..compat import register
from ..errors import ConfigError
from .diffusion_base import GUIDANCE_PREFIX
from .option_ranges import check_range
from .vsd_guidance import VSDGuidance

DEFAULT_LAMBDA = 0.5  # the ESD README's suggestion


@register("lucid-esd-guidance")
class ESDGuidance(VSDGuidance):
    @dataclass
    class Config(VSDGuidance.Config):
        # weight of the camera-free LoRA score (entropy weight); None: 0.5 unless guidance_scale_lora is set
        lambda_coeff: Optional[float] = None
        # the same knob in VSD's terms (= 1 - lambda_coeff); set at most one of the two
        guidance_scale_lora: Optional[float] = None

    cfg: Config

    def resolve_guidance_scale_lora(self) -> float:
        lam, scale = self.cfg.lambda_coeff, self.cfg.guidance_scale_lora
        if lam is not None and scale is not None:
            raise ConfigError(
                f"system.guidance.lambda_coeff={lam} and system.guidance.guidance_scale_lora={scale} are both "
                "set; they are one knob (guidance_scale_lora = 1 - lambda_coeff): set only lambda_coeff."
            )
        if not self.cfg.lora_cfg_training:
            raise ConfigError(
                "system.guidance.lora_cfg_training=false: ESD needs the camera-free LoRA score, which is "
                "only trained with lora_cfg_training=true."
            )
        # ESD's update mixes the two LoRA scores with weights lambda and 1 - lambda (a convex mix,
        # so lambda in [0, 1]; 0 = VSD, 1 = the camera-free score only); guidance_scale_lora = 1 - lambda
        if scale is not None:
            check_range(GUIDANCE_PREFIX + "guidance_scale_lora", scale, 0.0, 1.0,
                        why="for ESD it is 1 - lambda_coeff; prefer setting lambda_coeff", example=1.0 - DEFAULT_LAMBDA)
            return float(scale)
        if lam is not None:
            check_range(GUIDANCE_PREFIX + "lambda_coeff", lam, 0.0, 1.0,
                        why="ESD's entropy weight: 0 = VSD, 1 = only the camera-free LoRA score", example=DEFAULT_LAMBDA)
        return 1.0 - float(DEFAULT_LAMBDA if lam is None else lam)

    @property
    def lambda_coeff(self) -> float:
        """The entropy weight in effect (``1 - guidance_scale_lora``)."""
        if self.cfg.lambda_coeff is not None:
            return float(self.cfg.lambda_coeff)
        return 1.0 - self.guidance_scale_lora

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out["lambda_coeff"] = self.lambda_coeff  # logged beside guidance_scale_lora (= 1 - lambda_coeff)
        return out
