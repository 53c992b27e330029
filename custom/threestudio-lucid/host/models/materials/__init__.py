from . import base, no_material  # noqa: F401
