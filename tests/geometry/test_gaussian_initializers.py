"""Initial point clouds and the nearest-neighbour scale of the Gaussian geometry."""
import math

import numpy as np
import pytest
import torch

from threestudio_lucid.errors import ConfigError
from threestudio_lucid.geometry import GaussianSplatting, initializers
from threestudio_lucid.geometry.initializers import (
    MIN_NEIGHBOR_DIST2,
    ball_points,
    box_points,
    jitter_point_cloud,
    nearest_neighbor_dist2,
    nearest_neighbor_log_scales,
    point_e_points,
    sphere_shell_points,
    sphere_solid_points,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_ball_is_uniform_in_volume():
    pts, colors = ball_points(20000, 0.8, gen())
    assert pts.shape == (20000, 3) and pts.dtype == torch.float32 and colors is None
    r = pts.norm(dim=-1)
    assert float(r.max()) <= 0.8 + 1e-6
    # uniform in volume: P(r < R/2) = 1/8
    assert abs(float((r < 0.4).float().mean()) - 1 / 8) < 0.01
    assert pts.mean(0).abs().max() < 0.02


def test_sphere_shell_points_lie_on_the_sphere():
    pts, _ = sphere_shell_points(5000, 1.5, gen())
    assert pts.shape == (5000, 3)
    assert torch.allclose(pts.norm(dim=-1), torch.full((5000,), 1.5), atol=1e-5)
    # uniform on the surface: z is uniform in [-R, R]
    assert abs(float((pts[:, 2] > 0).float().mean()) - 0.5) < 0.03
    assert abs(float((pts[:, 2].abs() < 0.75).float().mean()) - 0.5) < 0.03


def test_sphere_solid_has_uniform_radius_like_lucid_dreamer():
    pts, _ = sphere_solid_points(20000, 0.5, gen())
    r = pts.norm(dim=-1)
    assert pts.shape == (20000, 3) and float(r.max()) <= 0.5 + 1e-6
    # r ~ U[0, R]: half the points within R/2 (a volume-uniform ball would have 1/8)
    assert abs(float((r < 0.25).float().mean()) - 0.5) < 0.02


def test_box_points_fill_the_cube():
    pts, _ = box_points(10000, 0.5, gen())
    assert pts.shape == (10000, 3)
    assert float(pts.abs().max()) <= 0.5
    assert abs(float((pts > 0).float().mean()) - 0.5) < 0.02
    assert float(pts.abs().max()) > 0.49


def test_initializers_reject_bad_counts_and_radii():
    with pytest.raises(ConfigError, match="init_num_pts"):
        ball_points(0, 1.0)
    with pytest.raises(ConfigError, match="init_radius"):
        box_points(10, 0.0)


def test_jitter_gives_exact_count_within_radius_of_a_base_point():
    base = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    base_rgb = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    pts, colors = jitter_point_cloud(base, 100, 0.05, base_colors=base_rgb, generator=gen())
    assert pts.shape == (100, 3) and colors.shape == (100, 3)
    d = torch.cdist(pts.double(), torch.from_numpy(base))
    nearest = d.argmin(dim=1)
    assert float(d.min(dim=1).values.max()) <= 0.05 + 1e-6
    # each point keeps the colour of the base point it was spread from
    assert torch.equal(colors, torch.from_numpy(base_rgb).float()[nearest])
    # every base point contributes (34 copies each, 100 kept)
    assert set(nearest.tolist()) == {0, 1, 2}


def test_point_e_cloud_is_placed_like_lucid_dreamer():
    base = np.array([[0.1, 0.2, 0.3], [-0.1, -0.2, -0.3]])

    def fake_sampler(prompt):
        assert prompt == "a cat"
        return base, np.full((2, 3), 0.25)

    pts, colors = point_e_points("a cat", 50, jitter_radius=1e-3, generator=gen(), sampler=fake_sampler)
    assert pts.shape == (50, 3)
    placed = torch.tensor([[0.1, -0.2, 0.45], [-0.1, 0.2, -0.15]], dtype=torch.float64)  # y flipped, z + 0.15
    assert float(torch.cdist(pts.double(), placed).min(dim=1).values.max()) <= 1e-3 + 1e-6
    assert torch.allclose(colors, torch.full((50, 3), 0.25))


def test_point_e_missing_package_is_a_config_error(monkeypatch):
    monkeypatch.setattr(initializers, "point_e_available", lambda: False)
    with pytest.raises(ConfigError, match="point_e.*install.*init_type"):
        point_e_points("a cat", 100)
    with pytest.raises(ConfigError, match="point_e"):
        GaussianSplatting({"init_type": "point_e", "init_num_pts": 100, "init_prompt": "a cat"})


def brute_force_dist2(points, k=3):
    p = torch.as_tensor(points, dtype=torch.float64)
    d2 = torch.cdist(p, p).pow(2)
    d2.fill_diagonal_(float("inf"))
    return d2.sort(dim=1).values[:, :k].mean(dim=1).clamp_min(MIN_NEIGHBOR_DIST2)


def test_nearest_neighbor_scale_matches_brute_force():
    pts = torch.rand(700, 3, generator=gen(3), dtype=torch.float64) * 2 - 1
    pts[10] = pts[11]  # a duplicate pair: distance 0 is a neighbour
    expected = brute_force_dist2(pts)
    got = nearest_neighbor_dist2(pts)
    assert got.shape == (700,) and got.dtype == torch.float32
    assert torch.allclose(got.double(), expected, rtol=1e-6, atol=0)
    scales = nearest_neighbor_log_scales(pts)
    assert scales.shape == (700, 3)
    assert torch.allclose(scales[:, 0].double(), torch.log(torch.sqrt(expected)), atol=1e-6)
    assert torch.equal(scales[:, 0], scales[:, 2])


def test_nearest_neighbor_scale_clamps_coincident_points():
    pts = torch.zeros(5, 3)
    assert torch.allclose(nearest_neighbor_dist2(pts), torch.full((5,), MIN_NEIGHBOR_DIST2))
    assert torch.isfinite(nearest_neighbor_log_scales(pts)).all()
    # fewer than 4 points: all other points are the neighbours; a single point gets the clamp value
    two = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    assert torch.allclose(nearest_neighbor_dist2(two), torch.tensor([4.0, 4.0]))
    assert torch.allclose(nearest_neighbor_dist2(two[:1]), torch.tensor([MIN_NEIGHBOR_DIST2]))


@pytest.mark.parametrize(
    "init_type, inside",
    [
        ("ball", lambda p, r: p.norm(dim=-1) <= r + 1e-6),
        ("sphere_shell", lambda p, r: (p.norm(dim=-1) - r).abs() <= 1e-5),
        ("sphere_solid", lambda p, r: p.norm(dim=-1) <= r + 1e-6),
        ("box", lambda p, r: p.abs().max(dim=-1).values <= r),
    ],
)
def test_geometry_initialises_each_shape_with_the_requested_count(init_type, inside):
    torch.manual_seed(0)
    g = GaussianSplatting({"init_type": init_type, "init_num_pts": 300, "init_radius": 0.7})
    assert g.num_points == 300
    assert bool(inside(g.get_xyz.detach(), 0.7).all())
    # isotropic NN scales, identity rotations, opacity 0.1, grey
    expected = torch.log(torch.sqrt(brute_force_dist2(g.get_xyz.detach()))).float()
    assert torch.allclose(g._scaling[:, 0].detach(), expected, atol=1e-5)
    assert torch.equal(g._rotation.detach(), torch.tensor([[1.0, 0, 0, 0]]).repeat(300, 1))
    assert torch.allclose(g.get_opacity.detach(), torch.full((300, 1), 0.1))
    assert torch.allclose(g._features_dc.detach() * 0.28209479177387814 + 0.5, torch.full((300, 1, 3), 0.5))


def test_random_colors_option():
    torch.manual_seed(0)
    g = GaussianSplatting({"init_num_pts": 500, "init_random_colors": True})
    rgb = g._features_dc.detach() * 0.28209479177387814 + 0.5
    assert float(rgb.min()) >= -1e-6 and float(rgb.max()) <= 1 + 1e-6
    assert float(rgb.std()) > 0.2


@pytest.mark.parametrize(
    "cfg, match",
    [
        ({"init_type": "cylinder"}, "init_type='cylinder'.*ball"),
        ({"init_type": "ply"}, "init_ply_path"),
        ({"init_type": "ply", "init_ply_path": "/no/such/file.ply"}, "/no/such/file.ply"),
        ({"init_color": [0.5, 2.0, 0.5]}, "init_color"),
        ({"init_num_pts": 2000, "max_num": 1000}, "max_num"),
        ({"sh_degree": 4}, "sh_degree"),
        ({"init_opacity": 1.0}, "init_opacity"),
    ],
)
def test_bad_init_settings_are_config_errors(cfg, match):
    with pytest.raises(ConfigError, match=match):
        GaussianSplatting({"init_num_pts": 50, **cfg})


def test_point_e_available_reflects_the_environment():
    import importlib.util

    assert initializers.point_e_available() == (importlib.util.find_spec("point_e") is not None)
    assert math.isclose(initializers.MIN_NEIGHBOR_DIST2, 1e-7)
