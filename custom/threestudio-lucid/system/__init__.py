from . import gaussian_system  # noqa: F401
