from . import uncond  # noqa: F401
