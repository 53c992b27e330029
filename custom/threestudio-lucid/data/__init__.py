from . import progressive_camera  # noqa: F401
