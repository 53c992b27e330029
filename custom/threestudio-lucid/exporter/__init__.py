"""Exporters: ``lucid-gaussian-mesh-exporter`` (a coloured mesh from the splats, for ``--export``)."""
from . import gaussian_mesh_exporter  # noqa: F401  (registers lucid-gaussian-mesh-exporter)
