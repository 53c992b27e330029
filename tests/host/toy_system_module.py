"""A minimal system on the host API, used by the launcher tests (also loaded as a custom/ module).

It fits a colour to a target with a lambda-weighted loss and writes validation grids, test frames
and a test video exactly where threestudio systems do.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn

from threestudio_lucid.compat import BaseSystem, register


@register("test-toy-system")
class ToySystem(BaseSystem):
    @dataclass
    class Config(BaseSystem.Config):
        prompt: str = ""
        target: float = 0.25

    def configure(self):
        self.color = nn.Parameter(torch.zeros(3))

    def render(self, batch):
        h, w = batch["height"], batch["width"]
        b = batch["c2w"].shape[0]
        return self.color.view(1, 1, 1, 3).expand(b, h, w, 3)

    def training_step(self, batch, batch_idx):
        rgb = self.render(batch)
        losses = {"loss_fit": ((rgb - self.cfg.target) ** 2).mean()}
        loss = 0.0
        for name, value in losses.items():
            self.log(f"train/{name}", value)
            weight = self.C(self.cfg.loss[name.replace("loss_", "lambda_")])
            loss = loss + value * weight
        self.log("train/loss", loss, prog_bar=True)
        return {"loss": loss}

    def validation_step(self, batch, batch_idx):
        rgb = self.render(batch)
        self.save_image_grid(
            f"it{self.true_global_step}-{batch['index'][0]}.png",
            [{"type": "rgb", "img": rgb[0], "kwargs": {"data_format": "HWC"}}],
            name="validation_step",
            step=self.true_global_step,
        )

    def on_validation_epoch_end(self):
        pass

    def test_step(self, batch, batch_idx):
        rgb = self.render(batch)
        self.save_image_grid(
            f"it{self.true_global_step}-test/{batch['index'][0]}.png",
            [{"type": "rgb", "img": rgb[0], "kwargs": {"data_format": "HWC"}}],
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
