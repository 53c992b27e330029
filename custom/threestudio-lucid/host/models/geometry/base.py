"""Geometry bases. The host carries only what explicit (point / splat) geometries need; threestudio's
``BaseImplicitGeometry`` (isosurfaces, marching tetrahedra) is not part of the bundled subset."""
import torch

from ...utils.base import BaseModule
from ...utils.typing import Any, Dict, DictConfig, Float, Optional, Tensor, Union, dataclass


class BaseGeometry(BaseModule):
    @dataclass
    class Config(BaseModule.Config):
        pass

    cfg: Config

    @staticmethod
    def create_from(
        other: "BaseGeometry", cfg: Optional[Union[dict, DictConfig]] = None, **kwargs
    ) -> "BaseGeometry":
        """Build this geometry from another one (e.g. for a coarse-to-fine stage); unsupported here."""
        raise TypeError(f"Cannot create {BaseGeometry.__name__} from {other.__class__.__name__}")

    def export(self, *args, **kwargs) -> Dict[str, Any]:
        return {}


class BaseExplicitGeometry(BaseGeometry):
    """A geometry with explicit primitives inside the cube [-radius, radius]^3 (``bbox`` [2, 3])."""

    @dataclass
    class Config(BaseGeometry.Config):
        radius: float = 1.0

    cfg: Config

    def configure(self) -> None:
        r = self.cfg.radius
        self.bbox: Float[Tensor, "2 3"]
        self.register_buffer("bbox", torch.tensor([[-r, -r, -r], [r, r, r]], dtype=torch.float32))
