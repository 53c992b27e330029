"""The bundled threestudio-compatible host.

A faithful subset of threestudio's public API (see ``shared/reference/threestudio-api.md``) for
machines where ``import threestudio`` fails. The plugin never imports this module directly: it goes
through ``compat``, which picks the real threestudio when it exists.

Module layout mirrors threestudio (``utils/``, ``data/``, ``models/``, ``systems/``) so that each
fact about threestudio maps to one place here.
"""
import logging

# The threestudio API version this host follows (threestudio-3dgs style plugins check >= 0.2.1).
__version__ = "0.2.3"

__modules__ = {}


def register(name):
    """Class decorator that registers ``cls`` under ``name``; duplicate names are an error."""

    def decorator(cls):
        if name in __modules__:
            raise ValueError(f"Module {name} already exists! Names of extensions conflict!")
        __modules__[name] = cls
        return cls

    return decorator


from ..errors import ConfigError  # noqa: E402


class UnknownModuleError(ConfigError, KeyError):
    """``find`` of a name nobody registered: a KeyError, as in threestudio, and a config error."""

    def __str__(self):  # KeyError's default str() adds quotes around the whole message
        return str(self.args[0]) if self.args else ""


# Components threestudio 0.2.3 registers that this host does not ship (it is a subset): a config
# naming one runs only inside a threestudio checkout, and the error says so.
THREESTUDIO_ONLY = frozenset(
    """control4d-multiview-system custom-mesh deep-floyd-guidance deep-floyd-prompt-processor
    diffuse-with-point-light-material dreamfusion-system dummy-prompt-processor efficient-dreamfusion-system
    fantasia3d-system gan-volume-renderer hybrid-rgb-latent-material image-condition-dreamfusion-system
    implicit-sdf implicit-volume instructnerf2nerf-system latentnerf-system magic123-system magic3d-system
    mesh-exporter nerf-volume-renderer neural-environment-map-background neural-radiance-material
    neus-volume-renderer nvdiff-rasterizer patch-renderer pbr-material perceptual-loss prolificdreamer-system
    sd-latent-adapter-material sdi-system sjc-system stable-diffusion-controlnet-guidance
    stable-diffusion-guidance stable-diffusion-instructpix2pix-guidance stable-diffusion-sdi-guidance
    stable-diffusion-unified-guidance stable-diffusion-vsd-guidance stable-zero123-guidance tetrahedra-sdf-grid
    textmesh-system textured-background volume-grid zero123-guidance zero123-simple-system zero123-system
    zero123-unified-guidance""".split()
)


def _lookup(name):
    try:
        return __modules__[name]
    except KeyError:
        if name in THREESTUDIO_ONLY:
            raise UnknownModuleError(
                f"'{name}' is one of threestudio's own components, which the bundled host does not ship: "
                "run this config with launch.py inside a threestudio checkout (README, 'Inside threestudio'), "
                "or use the plugin's lucid-* counterpart (e.g. lucid-sds-guidance for stable-diffusion-guidance)."
            ) from None
        known = ", ".join(sorted(__modules__)) or "(none)"
        raise UnknownModuleError(
            f"No module registered as '{name}'. Registered names: {known}. "
            "Check the *_type fields of your config, or that the plugin defining it was imported."
        ) from None


def find(name):
    """Look a registered class up by name.

    ``"main:a,b"`` builds a class whose bases are ``a, b, main`` (in that order, so the sub-classes
    act as mixins in front of main), as threestudio does.
    """
    if ":" in name:
        main_name, sub_names = name.split(":")
        bases = [_lookup(n) for n in sub_names.split(",")] + [_lookup(main_name)]
        return type(f"{main_name}.{sub_names}", tuple(bases), {})
    return _lookup(name)


# ---- logging, as threestudio: rank-zero wrappers around the "pytorch_lightning" logger ----
logger = logging.getLogger("pytorch_lightning")

from pytorch_lightning.utilities.rank_zero import (  # noqa: E402
    rank_zero_debug,
    rank_zero_info,
    rank_zero_only,
)

debug = rank_zero_debug
info = rank_zero_info


@rank_zero_only
def warn(*args, **kwargs):
    logger.warning(*args, **kwargs)


from . import data, models, systems  # noqa: E402,F401  (registers the built-in components)
