"""``lucid-gaussian-system``: text-to-3D with Gaussian splats and score distillation.

One training step (manual optimisation, as threestudio-3dgs):
1. render the multi-view batch (``comp_rgb``, ``comp_depth``, ``comp_mask`` + densification data);
2. call the guidance; every ``loss_<x>`` it returns is weighted by ``C(system.loss.lambda_<x>)``;
3. add the regularisers (TV on rgb and depth, mean scale, mean opacity), each weighted the same way;
4. backward, hand the screen-space gradients to the geometry (densification on its schedule);
5. step the geometry's optimizer (and the guidance's, when it trains parameters).

Validation writes ``it{step}-{index}.png`` grids (rgb | depth | alpha); test writes
``it{step}-test/{index}.png`` frames, the orbit video ``it{step}-test.mp4`` and the splats as
``point_cloud.ply`` (INRIA layout) under ``save/``.
"""
import os
from dataclasses import dataclass, field
from typing import Any, Dict

import torch

from ..compat import BaseLift3DSystem, find, info, parse_optimizer, register, tv_loss
from ..errors import ConfigError

REGULARISERS = ("tv", "depth_tv", "scales", "opacity")


@register("lucid-gaussian-system")
class GaussianSplattingSystem(BaseLift3DSystem):
    @dataclass
    class Config(BaseLift3DSystem.Config):
        # threestudio's default exporter needs a mesh geometry; splats export as PLY at test time
        exporter_type: str = "dummy-exporter"
        # log scalar guidance diagnostics (grad_norm, timestep bounds, ...) every step
        log_guidance_diagnostics: bool = True
        ply_name: str = "point_cloud.ply"

    cfg: Config

    def configure(self) -> None:
        super().configure()
        self.automatic_optimization = False
        self.guidance = find(self.cfg.guidance_type)(self.cfg.guidance)
        self.prompt_processor = find(self.cfg.prompt_processor_type)(self.cfg.prompt_processor)
        self.prompt_utils = self.prompt_processor()

    # ---- optimisation ----
    def configure_optimizers(self):
        """The geometry's own Adam (named groups, densification-aware); trainable guidance parts
        (e.g. VSD's LoRA) get ``system.optimizer`` when set."""
        optimizers = [self.geometry.optimizer]
        guidance_params = [p for p in self.guidance.parameters() if p.requires_grad]
        if guidance_params:
            if not self.cfg.optimizer or "name" not in self.cfg.optimizer:
                raise ConfigError(
                    f"{self.cfg.guidance_type} trains parameters: set system.optimizer "
                    "(e.g. name: AdamW, args: {lr: 0.0001}, params: {guidance: {}})."
                )
            optimizers.append(parse_optimizer(self.cfg.optimizer, self))
        return optimizers

    def _weighted(self, name: str, value: torch.Tensor) -> torch.Tensor:
        key = "lambda_" + name[len("loss_"):]
        if key not in self.cfg.loss:
            raise ConfigError(f"'{name}' needs a weight: set system.loss.{key} (0 disables it).")
        weight = self.C(self.cfg.loss[key])
        self.log(f"train_params/{key}", float(weight))
        return value * weight

    def regularisers(self, out: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        """Only the terms whose weight is non-zero now are computed."""
        losses = {}
        active = {r for r in REGULARISERS if self.C(self.cfg.loss.get(f"lambda_{r}", 0.0)) > 0}
        if "tv" in active:
            losses["loss_tv"] = tv_loss(out["comp_rgb"].permute(0, 3, 1, 2))
        if "depth_tv" in active:
            losses["loss_depth_tv"] = tv_loss(out["comp_depth"].permute(0, 3, 1, 2))
        if "scales" in active:
            losses["loss_scales"] = self.geometry.get_scaling.mean()
        if "opacity" in active:
            losses["loss_opacity"] = self.geometry.get_opacity.mean()
        return losses

    def training_step(self, batch, batch_idx):
        out = self.renderer(**batch)
        guidance_out = self.guidance(out["comp_rgb"], self.prompt_utils, **batch)

        loss = 0.0
        for name, value in guidance_out.items():
            if name.startswith("loss_"):
                self.log(f"train/{name}", value)
                loss = loss + self._weighted(name, value)
            elif self.cfg.log_guidance_diagnostics and (isinstance(value, (int, float)) or value.numel() == 1):
                self.log(f"train/{name}", float(value))
        for name, value in self.regularisers(out).items():
            self.log(f"train/{name}", value)
            loss = loss + self._weighted(name, value)
        self.log("train/loss", loss, prog_bar=True)
        self.log("gauss_num", float(self.geometry.num_points), prog_bar=True)

        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        self.manual_backward(loss)
        self.geometry.update_states(
            self.true_global_step, out["visibility_filter"], out["radii"], out["viewspace_points"]
        )
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        return {"loss": loss.detach()}

    # ---- evaluation ----
    def _view_grid(self, out: Dict[str, Any]):
        return [
            {"type": "rgb", "img": out["comp_rgb"][0], "kwargs": {"data_format": "HWC"}},
            {"type": "grayscale", "img": out["comp_depth"][0, :, :, 0], "kwargs": {"cmap": None, "data_range": None}},
            {"type": "grayscale", "img": out["comp_mask"][0, :, :, 0], "kwargs": {"cmap": None, "data_range": (0, 1)}},
        ]

    def validation_step(self, batch, batch_idx):
        out = self.renderer(**batch)
        self.save_image_grid(
            f"it{self.true_global_step}-{batch['index'][0]}.png",
            self._view_grid(out),
            name="validation_step",
            step=self.true_global_step,
        )

    def on_validation_epoch_end(self):
        pass

    def test_step(self, batch, batch_idx):
        out = self.renderer(**batch)
        self.save_image_grid(
            f"it{self.true_global_step}-test/{batch['index'][0]}.png",
            self._view_grid(out)[:2],
            name="test_step",
            step=self.true_global_step,
        )

    def on_test_epoch_end(self):
        self.save_img_sequence(
            f"it{self.true_global_step}-test",
            f"it{self.true_global_step}-test",
            r"(\d+)\.png",
            save_format="mp4",
            fps=30,
            name="test",
            step=self.true_global_step,
        )
        path = self.get_save_path(self.cfg.ply_name)
        self.geometry.save_ply(path)
        info(f"Saved {self.geometry.num_points} Gaussians to {path}")

    def on_predict_epoch_end(self) -> None:
        super().on_predict_epoch_end()
        self.geometry.save_ply(self.get_save_path(f"it{self.true_global_step}-export/{self.cfg.ply_name}"))
