"""Gaussian-splat rendering: the camera conversion, the reference torch rasterizer (the
specification every backend is tested against) and the registered ``lucid-gaussian-rasterizer``."""
from . import camera, reference  # noqa: F401
from . import gaussian_rasterizer  # noqa: F401  (registers lucid-gaussian-rasterizer)
from . import cpu_backend  # noqa: F401  (registers the rasterizer backends "cpu" and "auto")
from . import gsplat_backend, inria_backend  # noqa: F401  (register "gsplat" and "inria"; CUDA, lazy imports)
