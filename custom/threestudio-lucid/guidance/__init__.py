from . import diffusion_base, sds_guidance  # noqa: F401
