"""Gaussian splat geometry (``lucid-gaussian-splatting``): parameters, initialisers, densification, PLY I/O."""
from . import densification, initializers, ply_io  # noqa: F401
from . import gaussian_splatting  # noqa: F401  (registers lucid-gaussian-splatting)
from .gaussian_splatting import GaussianSplatting  # noqa: F401
