"""Exporters: turn the trained components into files. Each ``ExporterOutput`` is written by the
system's ``save_<save_type>(f"it{step}-export/{save_name}", **params)``."""
from dataclasses import dataclass

from ... import register
from ...utils.base import BaseObject
from ...utils.typing import Any, Dict, List
from ..background.base import BaseBackground
from ..geometry.base import BaseGeometry
from ..materials.base import BaseMaterial


@dataclass
class ExporterOutput:
    save_name: str
    save_type: str
    params: Dict[str, Any]


@dataclass
class _Components:
    geometry: BaseGeometry
    material: BaseMaterial
    background: BaseBackground


class Exporter(BaseObject):
    @dataclass
    class Config(BaseObject.Config):
        save_video: bool = False

    cfg: Config

    def configure(
        self, geometry: BaseGeometry, material: BaseMaterial, background: BaseBackground
    ) -> None:
        self.sub_modules = _Components(geometry, material, background)

    @property
    def geometry(self) -> BaseGeometry:
        return self.sub_modules.geometry

    @property
    def material(self) -> BaseMaterial:
        return self.sub_modules.material

    @property
    def background(self) -> BaseBackground:
        return self.sub_modules.background

    def __call__(self, *args, **kwargs) -> List[ExporterOutput]:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__")


@register("dummy-exporter")
class DummyExporter(Exporter):
    """Exports nothing (``save_video`` still renders the test views)."""

    def __call__(self, *args, **kwargs) -> List[ExporterOutput]:
        return []
