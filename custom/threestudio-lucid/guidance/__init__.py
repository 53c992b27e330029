from . import diffusion_base, ism_guidance, sds_guidance  # noqa: F401
