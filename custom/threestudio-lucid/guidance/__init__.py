from . import diffusion_base, esd_guidance, ism_guidance, sds_guidance, vsd_guidance  # noqa: F401
