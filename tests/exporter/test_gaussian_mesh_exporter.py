"""Meshes from splats placed from the toy world's known objects: shape, closure, topology and colour
against the analytic object, and the exporter's options and errors.

Tolerances (grid spacing h = the box's longest side / resolution):
- splats filling the object: volume within 4% and every face of the bounding box within 1.5 h;
- flat splats on the surface only (a shell; its inside is filled by the exporter): every vertex within
  2.5 h outside the true surface (the level set wraps the splats, which are widened to one h thick),
  so the volume lies between the true one and that of the surface moved out by 2.5 h;
- colours: every vertex of a one-colour object within 1/255 of its colour.
"""
import math

import numpy as np
import pytest
import torch
import trimesh

from analytic_splats import solid_splats, surface_hits, surface_splats
from threestudio_lucid.errors import ConfigError
from threestudio_lucid.exporter.gaussian_mesh_exporter import MeshOptions, check_options, splats_to_mesh
from threestudio_lucid.exporter.splat_field import SplatField
from threestudio_lucid.toy_world.objects import get_object

BALL_R, CUBE_HALF = 0.45, 0.33
BALL_V, CUBE_V = 4 / 3 * math.pi * BALL_R ** 3, (2 * CUBE_HALF) ** 3


def mesh_of(splats, **options):
    options.setdefault("resolution", 64)
    options.setdefault("decimate_target", 0)
    return splats_to_mesh(SplatField.from_gaussians(*splats), MeshOptions(**options))


def object_color(key):
    return np.array(get_object(key).primitives[0].color)


@pytest.mark.parametrize("key, volume, half", [("ball", BALL_V, BALL_R), ("cube", CUBE_V, CUBE_HALF)])
def test_solid_splats_give_the_objects_volume_box_and_colour(key, volume, half):
    mesh, h = mesh_of(solid_splats(key, spacing=0.03))
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0  # closed, outward
    assert mesh.volume == pytest.approx(volume, rel=0.04)
    np.testing.assert_allclose(mesh.bounds, [[-half] * 3, [half] * 3], atol=1.5 * h)
    colors = mesh.visual.vertex_colors[:, :3] / 255.0
    np.testing.assert_allclose(colors, np.broadcast_to(object_color(key), colors.shape), atol=1 / 255 + 1e-6)


def test_a_shell_of_surface_splats_gives_a_closed_ball_on_its_surface():
    """A fit keeps its splats on the surface: flat discs, nothing inside. The mesh is the ball's
    surface, closed and single (not the shell's two sides), within 2.5 grid spacings outside it."""
    mesh, h = mesh_of(surface_splats("ball", n_rays=4000), resolution=96)
    assert mesh.is_watertight and len(mesh.split(only_watertight=False)) == 1
    radius = np.linalg.norm(mesh.vertices, axis=1)
    assert radius.min() >= BALL_R - 0.5 * h and radius.max() <= BALL_R + 2.5 * h
    assert BALL_V < mesh.volume < 4 / 3 * math.pi * (BALL_R + 2.5 * h) ** 3


def test_the_donut_keeps_its_hole():
    mesh, h = mesh_of(solid_splats("donut", spacing=0.03), resolution=96)
    assert mesh.is_watertight
    assert mesh.euler_number == 0  # genus one: the hole is open, not filled as a cavity
    assert mesh.volume == pytest.approx(2 * math.pi ** 2 * 0.38 * 0.15 ** 2, rel=0.06)


def test_vertex_colours_follow_the_penguins_markings():
    """Black back, white belly, orange beak and feet: away from the borders between markings (where the
    8 surface samples nearest a vertex do not agree), each vertex has the colour of the surface there."""
    from scipy.spatial import cKDTree

    mesh, h = mesh_of(surface_splats("penguin", n_rays=6000), resolution=96, min_component_fraction=0.0)
    samples, _, albedo = surface_hits("penguin", 20000)
    _, nearest = cKDTree(samples.numpy()).query(mesh.vertices, k=8)
    near = albedo.numpy()[nearest]  # [V, 8, 3]
    one_marking = np.abs(near - near[:, :1]).max(axis=(1, 2)) < 1e-6
    colors = mesh.visual.vertex_colors[:, :3] / 255.0
    error = np.abs(colors - near[:, 0]).max(axis=1)[one_marking]
    assert one_marking.mean() > 0.7
    assert np.mean(error < 0.05) > 0.95
    white = one_marking & (colors.min(axis=1) > 0.8)
    orange = one_marking & (np.abs(colors - [1.0, 0.55, 0.05]).max(axis=1) < 0.05)
    assert white.sum() > 100 and orange.sum() > 10
    assert mesh.vertices[white][:, 0].mean() > 0.1 and mesh.vertices[orange][:, 0].mean() > 0.1  # at the front (+x)


def test_decimation_keeps_a_closed_mesh_closed():
    splats = solid_splats("ball", spacing=0.03)
    full, _ = mesh_of(splats)
    reduced, _ = mesh_of(splats, decimate_target=2000)
    assert len(full.faces) > 2000 >= len(reduced.faces) > 1800
    assert reduced.is_watertight
    assert reduced.volume == pytest.approx(full.volume, rel=0.01)


def test_floaters_are_dropped_and_kept_on_request():
    means, quats, scales, opacities, colors = solid_splats("ball", spacing=0.03)
    floater = torch.tensor([[0.55, 0.55, 0.55]])
    splats = (torch.cat([means, floater]), torch.cat([quats, quats[:1]]), torch.cat([scales, scales[:1]]),
              torch.cat([opacities, torch.ones(1)]), torch.cat([colors, colors[:1]]))
    cleaned, _ = mesh_of(splats)
    kept, _ = mesh_of(splats, min_component_fraction=0.0)
    assert len(cleaned.split(only_watertight=False)) == 1
    assert len(kept.split(only_watertight=False)) == 2


def test_a_box_that_cuts_the_object_closes_the_mesh_at_the_box():
    splats = solid_splats("ball", spacing=0.03)
    whole, h = mesh_of(splats, bbox=[-0.6, -0.6, -0.6, 0.6, 0.6, 0.6])
    upper, _ = mesh_of(splats, bbox=[-0.6, -0.6, 0.0, 0.6, 0.6, 0.6])
    assert upper.is_watertight
    assert upper.bounds[0, 2] == pytest.approx(0.0, abs=h)
    # the upper half, closed by a cap at most one grid spacing below the cut
    radius = whole.bounds[1, 0]
    assert whole.volume / 2 <= upper.volume <= whole.volume / 2 + math.pi * radius ** 2 * h


def test_texture_baking_writes_the_colour_into_a_uv_map(tmp_path):
    pytest.importorskip("xatlas")
    mesh, _ = mesh_of(solid_splats("cube", spacing=0.04), texture=True, texture_size=128, decimate_target=1500)
    assert isinstance(mesh.visual, trimesh.visual.TextureVisuals)
    image = np.asarray(mesh.visual.material.image.convert("RGB")) / 255.0
    covered = np.abs(image - object_color("cube")).max(axis=-1) < 2 / 255
    assert covered.mean() > 0.95  # the chart gaps are padded with the neighbouring colour
    mesh.export(tmp_path / "cube.glb")
    again = trimesh.load(tmp_path / "cube.glb", force="mesh")
    assert len(again.faces) == len(mesh.faces)


def test_the_baked_texture_holds_each_vertexs_colour_where_its_uv_points():
    """On the many-coloured penguin: the texture read back at each vertex's UV (trimesh's reading, the
    OBJ / glTF convention) gives the vertex's own colour, so the image is neither flipped nor shifted."""
    pytest.importorskip("xatlas")
    mesh, _ = mesh_of(surface_splats("penguin", n_rays=4000), texture=True, texture_size=512, decimate_target=4000)
    sampled = mesh.visual.to_color().vertex_colors[:, :3] / 255.0
    own = mesh.metadata["vertex_colors"][:, :3] / 255.0
    error = np.abs(sampled - own).max(axis=1)
    assert np.median(error) < 0.02 and np.mean(error < 0.1) > 0.9
    assert own.std(axis=0).max() > 0.2  # black, white and orange: a flipped image would not match


@pytest.mark.parametrize(
    "options, key",
    [
        (dict(resolution=4), "resolution"),
        (dict(level=0.0), "level"),
        (dict(bbox=[0, 0, 0, 1, 1]), "bbox"),
        (dict(bbox=[0, 0, 0, -1, 1, 1]), "bbox"),
        (dict(min_thickness=-1.0), "min_thickness"),
        (dict(decimate_target=-5), "decimate_target"),
        (dict(min_component_fraction=2.0), "min_component_fraction"),
    ],
)
def test_bad_options_name_their_key(options, key):
    with pytest.raises(ConfigError, match=f"system.exporter.{key}="):
        check_options(MeshOptions(**options))


def test_a_level_above_every_density_says_so():
    with pytest.raises(ConfigError, match="system.exporter.level=50"):
        mesh_of(solid_splats("ball", spacing=0.05), level=50.0)


def test_the_registered_exporter_meshes_a_geometry_and_hands_it_to_save_trimesh():
    """``lucid-gaussian-mesh-exporter`` on a ``lucid-gaussian-splatting`` geometry: colour from the SH
    DC term, one output of type ``trimesh`` (the system's ``save_trimesh``) with the formats asked for."""
    from threestudio_lucid.compat import find
    from threestudio_lucid.geometry import GaussianSplatting
    from threestudio_lucid.geometry.gaussian_splatting import inverse_sigmoid, rgb_to_sh_dc

    means, quats, scales, opacities, colors = solid_splats("cube", spacing=0.03)
    geometry = GaussianSplatting({"init_num_pts": 16})
    n = len(means)
    geometry.set_gaussians({"xyz": means, "f_dc": rgb_to_sh_dc(colors).reshape(n, 1, 3), "f_rest": torch.zeros(n, 0, 3),
                            "opacity": inverse_sigmoid(opacities)[:, None], "scaling": scales.log(), "rotation": quats})
    exporter = find("lucid-gaussian-mesh-exporter")(
        {"resolution": 64, "formats": ["glb", "ply"], "save_name": "cube"}, geometry=geometry, material=None, background=None
    )
    (out,) = exporter()
    assert (out.save_name, out.save_type, out.params["formats"]) == ("cube", "trimesh", ["glb", "ply"])
    mesh = out.params["mesh"]
    assert mesh.is_watertight and mesh.volume == pytest.approx(CUBE_V, rel=0.04)
    colors = mesh.visual.vertex_colors[:, :3] / 255.0
    np.testing.assert_allclose(colors, np.broadcast_to(object_color("cube"), colors.shape), atol=1 / 255 + 1e-5)


@pytest.mark.parametrize("formats", [["fbx"], []])
def test_unknown_formats_are_named(formats):
    from threestudio_lucid.compat import find

    with pytest.raises(ConfigError, match="system.exporter.formats="):
        find("lucid-gaussian-mesh-exporter")({"formats": formats}, geometry=None, material=None, background=None)
