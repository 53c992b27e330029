"""``lucid-gaussian-mesh-exporter``: a coloured triangle mesh from the splats, for ``--export``.

    python launch.py --config <run>/configs/parsed.yaml --export --gpu 0 resume=<run>/ckpts/last.ckpt \
        system.exporter_type=lucid-gaussian-mesh-exporter system.exporter.resolution=384

1. The splats' density field (``splat_field``: opacity-weighted Gaussians; splats thinner than
   ``min_thickness`` grid spacings widened to it so none falls between samples) is sampled on a grid of
   ``resolution`` cells along the longest side of the box that holds the splats (or ``bbox``), each
   splat only on the grid points in its own cutoff box, ``max_pairs`` at a time.
2. Closed cavities are filled (``fill_cavities``): a surface of flat splats is a thin shell whose
   inside the field leaves empty; without this the mesh would be two nested surfaces.
3. Marching cubes (PyMCubes) at density ``level``; components smaller than ``min_component_fraction``
   of the largest (floaters) are dropped; quadric edge-collapse decimation (pymeshlab, topology
   preserved, so a closed mesh stays closed) down to ``decimate_target`` faces.
4. Vertex colours are the field's colour at each vertex (the opacity-weighted mean of the nearby
   splats' view-independent colour); with ``texture: true`` the same colour is also baked into a UV
   texture (xatlas unwrap).

The mesh goes out as one ``ExporterOutput`` of type ``trimesh``; the system's ``save_trimesh`` writes it in
each of ``formats`` (obj, ply, glb) next to the splats' PLY under ``it<step>-export/``.
"""
import math
from dataclasses import dataclass, field, fields
from typing import List, Optional

import numpy as np
import torch

from ..compat import Exporter, ExporterOutput, info, register
from ..errors import ConfigError
from .splat_field import SplatField, color_at

MESH_FORMATS = ("obj", "ply", "glb")


@dataclass
class MeshOptions:
    """What turns a field into a mesh: the exporter's options besides where the files go."""

    resolution: int = 256  # grid cells along the longest side of the box
    level: float = 0.5  # density of the surface (sum of opacity-weighted Gaussians, each of peak 1)
    bbox: Optional[List[float]] = None  # [xmin, ymin, zmin, xmax, ymax, zmax]; null: around the splats
    cutoff: float = 3.0  # Gaussians are evaluated within this many standard deviations
    min_thickness: float = 1.0  # splats thinner than this many grid spacings are widened to it
    min_opacity: float = 0.005  # fainter splats are left out
    fill_cavities: bool = True
    min_component_fraction: float = 0.01  # drop pieces with fewer faces than this part of the largest
    decimate_target: int = 100000  # faces after decimation; 0 keeps every face
    texture: bool = False  # also bake the colour into a UV texture (xatlas)
    texture_size: int = 1024
    max_pairs: int = 1 << 22  # (point, Gaussian) pairs evaluated at once: bounds the memory


def _require(module: str, package: str):
    try:
        return __import__(module)
    except ImportError as err:
        raise ImportError(
            f"lucid-gaussian-mesh-exporter needs the '{package}' package: `pip install {package}` "
            "(it is in threestudio-lucid's requirements; reinstall with `pip install -e .`)."
        ) from err


def check_options(opts: MeshOptions, prefix: str = "system.exporter") -> None:
    """One clear error per bad option, naming the key."""
    if int(opts.resolution) < 8:
        raise ConfigError(f"{prefix}.resolution={opts.resolution} must be at least 8 (cells along the longest side).")
    if not opts.level > 0:
        raise ConfigError(f"{prefix}.level={opts.level} must be > 0 (the density of the surface; 0.5 is typical).")
    if opts.bbox is not None:
        box = list(opts.bbox)
        if len(box) != 6 or not all(box[i] < box[i + 3] for i in range(3)):
            raise ConfigError(
                f"{prefix}.bbox={box} must be [xmin, ymin, zmin, xmax, ymax, zmax] with each min below its max, "
                f"e.g. {prefix}.bbox=[-1,-1,-1,1,1,1] (or null: the box around the splats)."
            )
    if not opts.cutoff > 0:
        raise ConfigError(f"{prefix}.cutoff={opts.cutoff} must be > 0 (standard deviations; 3 is typical).")
    if opts.min_thickness < 0:
        raise ConfigError(f"{prefix}.min_thickness={opts.min_thickness} must be >= 0 (grid spacings; 1 is typical).")
    if not 0 <= opts.min_component_fraction <= 1:
        raise ConfigError(f"{prefix}.min_component_fraction={opts.min_component_fraction} must be in [0, 1].")
    if opts.decimate_target < 0:
        raise ConfigError(f"{prefix}.decimate_target={opts.decimate_target} must be >= 0 (0 keeps every face).")
    if opts.texture and opts.texture_size < 16:
        raise ConfigError(f"{prefix}.texture_size={opts.texture_size} must be at least 16.")


def export_box(splats: SplatField, opts: MeshOptions):
    """``(lo [3], hi [3], spacing)``: ``opts.bbox``, or the box around the splats' cutoff boxes with
    room for the widening of thin splats; ``resolution`` cells along its longest side."""
    if opts.bbox is not None:
        lo = torch.tensor(list(opts.bbox)[:3], dtype=torch.float64)
        hi = torch.tensor(list(opts.bbox)[3:], dtype=torch.float64)
        return lo, hi, float((hi - lo).max()) / int(opts.resolution)
    lo, hi = (v.cpu().double() for v in splats.bounds())
    spacing = float((hi - lo).max()) / int(opts.resolution)
    reach = opts.cutoff * opts.min_thickness * spacing
    return lo - reach, hi + reach, spacing


def sample_grid(splats: SplatField, lo, hi, spacing: float, max_pairs: int):
    """The field at ``lo + spacing * (i, j, k)`` over the box: density [X, Y, Z] and colour sum [X, Y, Z, 3]."""
    shape = tuple(int(math.ceil(float(e) / spacing)) + 1 for e in (hi - lo))
    return splats.to_grid(lo.float(), spacing, shape, max_pairs=max_pairs)


def density_to_mesh(density: np.ndarray, lo: np.ndarray, spacing: float, opts: MeshOptions):
    """Marching cubes at ``opts.level`` on a density grid whose sample (i, j, k) sits at
    ``lo + spacing * (i, j, k)``, after filling closed cavities and dropping small components."""
    mcubes = _require("mcubes", "PyMCubes")
    trimesh = _require("trimesh", "trimesh")
    volume = np.pad(density.astype(np.float32), 1)  # zero border: the surface closes at the box
    if opts.fill_cavities:
        from scipy.ndimage import binary_fill_holes

        occupied = volume > opts.level
        cavity = binary_fill_holes(occupied) & ~occupied
        volume[cavity] = 2.0 * opts.level
    vertices, faces = mcubes.marching_cubes(volume, float(opts.level))
    if len(faces) == 0:
        raise ConfigError(
            f"no surface at system.exporter.level={opts.level}: the density stays below it everywhere "
            f"(max {float(density.max()) if density.size else 0.0:.3g}); lower the level"
        )
    vertices = lo[None, :] + spacing * (vertices - 1.0)
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, process=True)
    if opts.min_component_fraction > 0:
        parts = mesh.split(only_watertight=False)
        if len(parts) > 1:
            largest = max(len(p.faces) for p in parts)
            mesh = trimesh.util.concatenate([p for p in parts if len(p.faces) >= opts.min_component_fraction * largest])
    if mesh.volume < 0:
        mesh.invert()
    return mesh


def decimate(mesh, target: int):
    """Quadric edge collapse to ``target`` faces, topology preserved (a watertight mesh stays
    watertight; fast-simplification, which trimesh wraps, tears it); 0 or a smaller mesh: unchanged."""
    if target <= 0 or len(mesh.faces) <= target:
        return mesh
    pymeshlab = _require("pymeshlab", "pymeshlab")
    trimesh = _require("trimesh", "trimesh")
    meshes = pymeshlab.MeshSet()
    meshes.add_mesh(pymeshlab.Mesh(vertex_matrix=np.asarray(mesh.vertices, dtype=np.float64),
                                   face_matrix=np.asarray(mesh.faces, dtype=np.int32)))
    meshes.meshing_decimation_quadric_edge_collapse(targetfacenum=int(target), preservetopology=True,
                                                    preservenormal=True, optimalplacement=True)
    out = meshes.current_mesh()
    return trimesh.Trimesh(vertices=out.vertex_matrix(), faces=out.face_matrix(), process=True)


def splats_to_mesh(splats: SplatField, opts: MeshOptions):
    """The whole pipeline: a coloured ``trimesh.Trimesh`` (vertex colours; a baked texture too when
    ``opts.texture``) from a splat field as trained (not widened); returns (mesh, grid spacing)."""
    check_options(opts)
    trimesh = _require("trimesh", "trimesh")
    lo, hi, spacing = export_box(splats, opts)
    density, color_sum = sample_grid(splats.with_min_scale(opts.min_thickness * spacing), lo, hi, spacing,
                                     opts.max_pairs)
    mesh = density_to_mesh(density.cpu().numpy(), lo.numpy(), spacing, opts)
    mesh = decimate(mesh, opts.decimate_target)
    # before a texture's seams split the vertices: what the mesh is, for the log line
    summary = {"watertight": bool(mesh.is_watertight), "volume": float(mesh.volume)}

    def colors_of(points: np.ndarray) -> np.ndarray:
        points = torch.as_tensor(np.asarray(points), dtype=torch.float32)
        return color_at(density, color_sum, lo.float(), spacing, points).cpu().numpy()

    rgb = colors_of(mesh.vertices)
    rgba = np.concatenate([np.round(rgb * 255), np.full((len(rgb), 1), 255)], 1).astype(np.uint8)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=rgba)
    if opts.texture:
        from .texture_bake import bake_texture

        mesh = bake_texture(mesh, colors_of, opts.texture_size)
    mesh.metadata.update(summary)
    return mesh, spacing


@register("lucid-gaussian-mesh-exporter")
class GaussianMeshExporter(Exporter):
    @dataclass
    class Config(Exporter.Config, MeshOptions):
        save_name: str = "model"
        formats: List[str] = field(default_factory=lambda: list(MESH_FORMATS))

    cfg: Config

    def configure(self, geometry, material, background) -> None:
        super().configure(geometry, material, background)
        bad = [f for f in self.cfg.formats if f not in MESH_FORMATS]
        if bad or not self.cfg.formats:
            raise ConfigError(
                f"system.exporter.formats={list(self.cfg.formats)}: use one or more of {', '.join(MESH_FORMATS)}, "
                "e.g. system.exporter.formats=[obj,glb]."
            )
        check_options(self.options)

    @property
    def options(self) -> MeshOptions:
        return MeshOptions(**{f.name: getattr(self.cfg, f.name) for f in fields(MeshOptions)})

    def __call__(self) -> List[ExporterOutput]:
        opts = self.options
        splats = SplatField.from_geometry(self.geometry, cutoff=opts.cutoff, min_opacity=opts.min_opacity)
        if splats.num_gaussians == 0:
            raise ConfigError(
                f"no Gaussian has opacity >= system.exporter.min_opacity={opts.min_opacity}: nothing to mesh "
                f"(lower it, or check that the checkpoint holds a trained asset)"
            )
        mesh, spacing = splats_to_mesh(splats, opts)
        info(
            f"Mesh from {splats.num_gaussians} splats (grid spacing {spacing:.4g}): {len(mesh.vertices)} vertices, "
            f"{len(mesh.faces)} faces, volume {mesh.metadata['volume']:.4g}, "
            f"{'watertight' if mesh.metadata['watertight'] else 'not watertight'}"
        )
        return [ExporterOutput(save_name=self.cfg.save_name, save_type="trimesh",
                               params={"mesh": mesh, "formats": list(self.cfg.formats)})]
