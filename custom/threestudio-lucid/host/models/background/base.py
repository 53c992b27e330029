"""``BaseBackground``: maps view directions to a background colour behind the rendered object."""
from ...utils.base import BaseModule
from ...utils.typing import Float, Tensor, dataclass


class BaseBackground(BaseModule):
    @dataclass
    class Config(BaseModule.Config):
        pass

    cfg: Config

    def configure(self) -> None:
        pass

    def forward(self, dirs: Float[Tensor, "B H W 3"]) -> Float[Tensor, "B H W Nc"]:
        raise NotImplementedError(f"{type(self).__name__} must implement forward(dirs)")
