"""The one module that decides which threestudio the plugin runs on.

Where ``import threestudio`` works (version >= 0.2.1), the plugin registers into the real
threestudio and subclasses its real bases. Where it does not, the bundled host (``.host``) provides
the same API subset. Set ``THREESTUDIO_LUCID_HOST=1`` to use the bundled host even where threestudio
is importable. No other plugin module imports ``threestudio``: they import what they need from here.
"""
import importlib
import os

from packaging.version import Version

from .errors import ConfigError

MIN_THREESTUDIO_VERSION = "0.2.1"


def _real_threestudio():
    if os.environ.get("THREESTUDIO_LUCID_HOST", "") not in ("", "0"):
        return None
    try:
        ts = importlib.import_module("threestudio")
    except ImportError:
        return None
    ver = getattr(ts, "__version__", "0")
    if Version(ver) < Version(MIN_THREESTUDIO_VERSION):
        raise ImportError(
            f"threestudio {ver} is installed but threestudio-lucid needs >= {MIN_THREESTUDIO_VERSION}: "
            "update threestudio, or set THREESTUDIO_LUCID_HOST=1 to use the bundled host."
        )
    return ts


threestudio = _real_threestudio()
USING_REAL_THREESTUDIO = threestudio is not None

if USING_REAL_THREESTUDIO:
    from threestudio.data.uncond import RandomCameraDataModule  # noqa: F401
    from threestudio.models.background.base import BaseBackground
    from threestudio.models.exporters.base import Exporter, ExporterOutput
    from threestudio.models.geometry.base import BaseExplicitGeometry, BaseGeometry
    from threestudio.models.materials.base import BaseMaterial
    from threestudio.models.prompt_processors.base import PromptProcessor, PromptProcessorOutput
    from threestudio.models.renderers.base import Rasterizer, Renderer
    from threestudio.systems.base import BaseLift3DSystem, BaseSystem
    from threestudio.systems.utils import parse_optimizer, parse_scheduler
    from threestudio.utils.base import (
        BaseModule,
        BaseObject,
        Updateable,
        update_end_if_possible,
        update_if_possible,
    )
    from threestudio.utils.config import (
        config_to_primitive,
        dump_config,
        load_config,
        parse_structured,
    )
    from threestudio.utils.loss import tv_loss
    from threestudio.utils.misc import (
        C,
        cleanup,
        get_device,
        get_rank,
        load_module_weights,
    )
    from threestudio.utils.ops import (
        dot,
        get_activation,
        get_cam_info_gaussian,
        get_mvp_matrix,
        get_projection_matrix,
        get_ray_directions,
        get_rays,
    )
    from threestudio.utils.saving import SaverMixin
else:
    from . import host as threestudio  # noqa: F811
    from .host.data.uncond import RandomCameraDataModule  # noqa: F401
    from .host.models.background.base import BaseBackground
    from .host.models.exporters.base import Exporter, ExporterOutput
    from .host.models.geometry.base import BaseExplicitGeometry, BaseGeometry
    from .host.models.materials.base import BaseMaterial
    from .host.models.prompt_processors.base import PromptProcessor, PromptProcessorOutput
    from .host.models.renderers.base import Rasterizer, Renderer
    from .host.systems.base import BaseLift3DSystem, BaseSystem
    from .host.systems.utils import parse_optimizer, parse_scheduler
    from .host.utils.base import (
        BaseModule,
        BaseObject,
        Updateable,
        update_end_if_possible,
        update_if_possible,
    )
    from .host.utils.config import (
        config_to_primitive,
        dump_config,
        load_config,
        parse_structured,
    )
    from .host.utils.loss import tv_loss
    from .host.utils.misc import C, cleanup, get_device, get_rank, load_module_weights
    from .host.utils.ops import (
        dot,
        get_activation,
        get_cam_info_gaussian,
        get_mvp_matrix,
        get_projection_matrix,
        get_ray_directions,
        get_rays,
    )
    from .host.utils.saving import SaverMixin

if USING_REAL_THREESTUDIO:
    from .errors import install_launch_excepthook

    install_launch_excepthook()

register = threestudio.register
find = threestudio.find
info = threestudio.info
warn = threestudio.warn
debug = threestudio.debug
THREESTUDIO_VERSION = threestudio.__version__

__all__ = [
    "threestudio", "USING_REAL_THREESTUDIO", "THREESTUDIO_VERSION", "ConfigError",
    "register", "find", "info", "warn", "debug",
    "C", "cleanup", "get_device", "get_rank", "load_module_weights",
    "config_to_primitive", "dump_config", "load_config", "parse_structured",
    "Updateable", "BaseObject", "BaseModule", "update_if_possible", "update_end_if_possible",
    "BaseGeometry", "BaseExplicitGeometry", "BaseMaterial", "BaseBackground", "Renderer", "Rasterizer",
    "Exporter", "ExporterOutput", "PromptProcessor", "PromptProcessorOutput", "RandomCameraDataModule",
    "BaseSystem", "BaseLift3DSystem", "parse_optimizer", "parse_scheduler", "SaverMixin",
    "tv_loss", "dot", "get_activation", "get_cam_info_gaussian", "get_mvp_matrix",
    "get_projection_matrix", "get_ray_directions", "get_rays",
]
