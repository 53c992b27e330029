"""``BaseMaterial``: turns per-point features (and optionally normals) into colours."""
from ...utils.base import BaseModule
from ...utils.typing import Any, Dict, Float, Tensor, dataclass


class BaseMaterial(BaseModule):
    @dataclass
    class Config(BaseModule.Config):
        pass

    cfg: Config
    # renderers read these to decide whether to compute normals / tangents for the material
    requires_normal: bool = False
    requires_tangent: bool = False

    def configure(self) -> None:
        pass

    def forward(self, *args, **kwargs) -> Float[Tensor, "*B 3"]:
        raise NotImplementedError(f"{type(self).__name__} must implement forward")

    def export(self, *args, **kwargs) -> Dict[str, Any]:
        return {}
