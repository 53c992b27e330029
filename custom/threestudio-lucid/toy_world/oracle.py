"""The oracle fit: each score's ceiling for the splats, cameras and budget of a method run (issue 27).

A positive control that is trained, not drawn: the same Gaussian splats, renderer, camera data module,
seed and number of steps as a method run on a toy world, with the score distillation replaced by an image
loss against the world's true renders. What it reaches is what this representation and budget can reach
with perfect supervision, so a method's score is reported as a fraction of the oracle's
(``evaluate.fractions_of_oracle``), and a world or budget whose oracle cannot reach a score cannot show a
method reaching it either.

It is the registered guidance ``lucid-toy-world-oracle`` and runs through the system and the launcher like
any method (``configs/lucid-oracle-toy.yaml``: ``lucid-sds-toy.yaml`` with only the guidance, its loss weight
and ``guidance_flip_prob`` changed):

    lucid-launch --config custom/threestudio-lucid/configs/lucid-oracle-toy.yaml --train \\
        system.prompt_processor.prompt="a penguin" \\
        system.prompt_processor.pretrained_model_name_or_path=load/toy-penguin \\
        system.guidance.pretrained_model_name_or_path=load/toy-penguin

At each step the data module draws the batch's cameras as for a method, from the same distribution (the oracle
draws no random numbers of its own: the initial Gaussians are a method run's of the same seed, and so are the
cameras where the method's noise comes from its own generator, as ISM's does); the oracle renders the
object (one variant: ``variant``, default the world's first of the object) analytically from those cameras
(``c2w``, ``fovy``), anti-aliased as the world's training renders (``supersample``^2 rays per pixel,
box-filtered), over the world's background, at the render's size, and returns

    ``loss_oracle = mean over views, pixels and channels of (render_rgb - true_rgb)^2``

(L2 on rgb, no SSIM, no mask term: the guidance sees the rgb render only, as a method's does; with the toy
configs' white background on both sides). The system weights it by ``system.loss.lambda_oracle`` (1) and the
geometry's own Adam steps it, with the densification schedule of the run. The target depends on the camera,
so the guidance says ``conditions_on_camera`` and the system refuses ``guidance_flip_prob`` > 0 (mirroring
the render without the camera would make the target wrong). The run is scored at test by the world's
evaluator like any other.
"""
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F

from ..compat import BaseObject, register
from ..errors import ConfigError


@register("lucid-toy-world-oracle")
class ToyWorldOracle(BaseObject):
    conditions_on_camera = True  # the target is the truth from the batch's camera: no flipped renders

    @dataclass
    class Config(BaseObject.Config):
        pretrained_model_name_or_path: str = ""  # the toy-world folder (as every guidance's model)
        prompt: str = ""  # names the object to fit (the toy config passes the prompt processor's prompt)
        variant: Optional[str] = None  # the appearance to fit on a multi-modal world (default: the object's first)

    cfg: Config

    def configure(self) -> None:
        from .evaluate import object_of_prompt
        from .objects import get_variant
        from .pipeline import is_toy_world, read_toy_world_settings

        model = self.cfg.pretrained_model_name_or_path
        if not is_toy_world(model):
            raise ConfigError(f"system.guidance.pretrained_model_name_or_path='{model}' is not a toy world: the oracle "
                              "fits a toy world's true renders (make one with `lucid-build-toy-world PATH`).")
        self.settings = read_toy_world_settings(model)
        try:
            key = object_of_prompt(self.cfg.prompt, self.settings.objects)
        except ValueError as e:
            raise ConfigError(f"system.guidance.prompt: {e}") from None
        variants = self.settings.variants_of(key)
        name = self.cfg.variant or variants[0]
        if name not in variants:
            raise ConfigError(f"system.guidance.variant='{name}' is not a variant of {key} in this world; use one of "
                              f"{', '.join(variants)}.")
        self.object = get_variant(key, name)

    @torch.no_grad()
    def true_renders(self, c2w: torch.Tensor, fovy: torch.Tensor, height: int, width: int) -> Dict[str, torch.Tensor]:
        """``{"rgb", "alpha"}`` [B,H,W,*] of the object from OpenGL cameras ``c2w`` [B,4,4] with vertical field
        of view ``fovy`` [B] (radians), as the world renders its training views, on the CPU."""
        from .objects import render_object

        ss = int(self.settings.supersample)
        out = render_object(self.object, c2w.detach().float().cpu(), fovy.detach().float().cpu().reshape(-1),
                            height * ss, width * ss, background=self.settings.background)
        return {k: F.avg_pool2d(out[k].permute(0, 3, 1, 2), ss).permute(0, 2, 3, 1) for k in ("rgb", "alpha")}

    def __call__(self, rgb: torch.Tensor, prompt_utils=None, elevation=None, azimuth=None, camera_distances=None,
                 c2w: Optional[torch.Tensor] = None, fovy: Optional[torch.Tensor] = None, **kwargs: Any):
        """``{"loss_oracle"}`` for renders ``rgb`` [B,H,W,3] from the batch's cameras (``c2w``, ``fovy``)."""
        if c2w is None or fovy is None:
            raise ValueError("lucid-toy-world-oracle needs the batch's cameras (c2w and fovy)")
        fovy = torch.as_tensor(fovy).reshape(-1).expand(rgb.shape[0]) if torch.as_tensor(fovy).numel() == 1 else fovy
        target = self.true_renders(c2w, fovy, rgb.shape[1], rgb.shape[2])["rgb"].to(rgb)
        loss = F.mse_loss(rgb, target)
        return {"loss_oracle": loss, "psnr_oracle": -10.0 * math.log10(max(float(loss.detach()), 1e-10))}
