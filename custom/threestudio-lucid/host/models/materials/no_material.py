"""``no-material``: colours are the (activated) features themselves.

threestudio's version can also run features through a tiny-cuda-nn MLP (``mlp_network_config``);
the bundled host has no tcnn networks, so that option is refused with a clear error.
"""
from ...utils.config import ConfigError
from ...utils.ops import get_activation
from ...utils.typing import Any, Dict, Float, Optional, Tensor, dataclass
from ... import register, warn
from .base import BaseMaterial


@register("no-material")
class NoMaterial(BaseMaterial):
    @dataclass
    class Config(BaseMaterial.Config):
        n_output_dims: int = 3
        color_activation: str = "sigmoid"
        input_feature_dims: Optional[int] = None
        mlp_network_config: Optional[dict] = None
        requires_normal: bool = False

    cfg: Config

    def configure(self) -> None:
        if self.cfg.input_feature_dims is not None and self.cfg.mlp_network_config is not None:
            raise ConfigError(
                "no-material with mlp_network_config needs threestudio's tcnn networks, which the bundled host "
                "does not provide: remove system.material.mlp_network_config or run inside threestudio."
            )
        self.requires_normal = self.cfg.requires_normal
        self.activation = get_activation(self.cfg.color_activation)

    def forward(self, features: Float[Tensor, "B ... Nf"], **kwargs) -> Float[Tensor, "B ... Nc"]:
        if features.shape[-1] != self.cfg.n_output_dims:
            raise ValueError(f"Expected {self.cfg.n_output_dims} feature dims, got {features.shape[-1]}")
        return self.activation(features)

    def export(self, features: Float[Tensor, "*N Nf"], **kwargs) -> Dict[str, Any]:
        color = self(features, **kwargs).clamp(0, 1)
        if color.shape[-1] > 3:
            warn("Output color has >3 channels, treating the first 3 as RGB")
        return {"albedo": color[..., :3]}
