"""``solid-color-background``: one colour everywhere, optionally learned or randomised in training."""
import random

import torch
import torch.nn as nn

from ... import register
from ...utils.typing import Float, Tensor, Tuple, dataclass
from .base import BaseBackground


@register("solid-color-background")
class SolidColorBackground(BaseBackground):
    """A constant colour of ``n_output_dims`` channels.

    ``learned`` makes the colour an ``nn.Parameter`` (otherwise a buffer, saved with the module).
    ``random_aug``: in training, with probability ``random_aug_prob`` per call, each image of the
    batch gets a uniformly random colour instead, so the object cannot bake the background in.
    The coin is Python's ``random`` (as threestudio), so ``pl.seed_everything`` fixes it.
    """

    @dataclass
    class Config(BaseBackground.Config):
        n_output_dims: int = 3
        color: Tuple = (1.0, 1.0, 1.0)
        learned: bool = False
        random_aug: bool = False
        random_aug_prob: float = 0.5

    cfg: Config

    def configure(self) -> None:
        color = torch.as_tensor(self.cfg.color, dtype=torch.float32)
        self.env_color: Float[Tensor, "Nc"]
        if self.cfg.learned:
            self.env_color = nn.Parameter(color)
        else:
            self.register_buffer("env_color", color)

    def forward(self, dirs: Float[Tensor, "B H W 3"]) -> Float[Tensor, "B H W Nc"]:
        out_shape = (*dirs.shape[:-1], self.cfg.n_output_dims)
        color = torch.ones(out_shape).to(dirs) * self.env_color.to(dirs)
        if self.training and self.cfg.random_aug and random.random() < self.cfg.random_aug_prob:
            per_image = torch.rand(dirs.shape[0], 1, 1, self.cfg.n_output_dims).to(dirs)
            # ``color * 0 +`` keeps env_color in the graph, so DDP does not see an unused parameter
            color = color * 0 + per_image.expand(out_shape)
        return color
