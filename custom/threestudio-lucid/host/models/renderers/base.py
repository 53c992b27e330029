"""Renderer bases. A renderer uses the system's geometry, material and background but does not own
them: they are held in a plain dataclass, so they are not registered as its sub-modules (their
parameters and state-dict entries belong to the system only once)."""
from dataclasses import dataclass

import torch

from ...utils.base import BaseModule
from ...utils.typing import Any, Dict, Float, Tensor
from ..background.base import BaseBackground
from ..geometry.base import BaseGeometry
from ..materials.base import BaseMaterial


@dataclass
class _Components:
    geometry: BaseGeometry
    material: BaseMaterial
    background: BaseBackground


class Renderer(BaseModule):
    @dataclass
    class Config(BaseModule.Config):
        radius: float = 1.0

    cfg: Config

    def configure(
        self, geometry: BaseGeometry, material: BaseMaterial, background: BaseBackground
    ) -> None:
        self.sub_modules = _Components(geometry, material, background)
        r = self.cfg.radius
        self.bbox: Float[Tensor, "2 3"]
        self.register_buffer("bbox", torch.tensor([[-r, -r, -r], [r, r, r]], dtype=torch.float32))

    def forward(self, *args, **kwargs) -> Dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} must implement forward")

    @property
    def geometry(self) -> BaseGeometry:
        return self.sub_modules.geometry

    @property
    def material(self) -> BaseMaterial:
        return self.sub_modules.material

    @property
    def background(self) -> BaseBackground:
        return self.sub_modules.background

    def set_geometry(self, geometry: BaseGeometry) -> None:
        self.sub_modules.geometry = geometry

    def set_material(self, material: BaseMaterial) -> None:
        self.sub_modules.material = material

    def set_background(self, background: BaseBackground) -> None:
        self.sub_modules.background = background


class VolumeRenderer(Renderer):
    pass


class Rasterizer(Renderer):
    pass
