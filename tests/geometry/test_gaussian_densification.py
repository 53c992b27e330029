"""Densification: statistics, clone / split / prune with Adam state kept aligned, the max_num cap, opacity reset."""
import math

import pytest
import torch

from threestudio_lucid.geometry import GaussianSplatting
from threestudio_lucid.geometry.densification import (
    DensificationStats,
    GaussianDensifier,
    quaternion_to_matrix,
)

# every 10 steps inside (0, 1000); split threshold 0.1 * 1.0; world-size prune above 0.5
DENSIFY = {
    "init_num_pts": 8,
    "init_type": "box",
    "scene_extent": 1.0,
    "percent_dense": 0.1,
    "densification_interval": 10,
    "densify_from_iter": 0,
    "densify_until_iter": 1000,
    "densify_grad_threshold": 0.01,
    "prune_interval": 10,
    "prune_from_iter": 0,
    "prune_until_iter": 1000,
    "min_opac_prune": 0.005,
    "prune_big_points": True,
    "prune_big_points_from_iter": 0,
    "max_screen_size": 20.0,
    "max_world_size": 0.5,
    "opacity_reset_interval": 0,
    "position_lr": 1e-3,
    "position_lr_spatial_scale": 1.0,
}


def logit(p):
    return math.log(p / (1 - p))


def geometry_with(rows, **overrides):
    """Gaussians from rows of (x, scale, opacity); rotation (w,x,y,z) varies per point so rows are distinguishable."""
    torch.manual_seed(0)
    g = GaussianSplatting({**DENSIFY, **overrides})
    n = len(rows)
    g.set_gaussians(
        {
            "xyz": torch.tensor([[float(i), 0.0, 0.0] for i, _, _ in rows]),
            "f_dc": torch.arange(n * 3, dtype=torch.float32).reshape(n, 1, 3),
            "f_rest": torch.zeros(n, 0, 3),
            "opacity": torch.tensor([[logit(o)] for _, _, o in rows]),
            "scaling": torch.tensor([[math.log(s)] * 3 for _, s, _ in rows]),
            "rotation": torch.tensor([[1.0, 0.1 * i, 0.0, 0.0] for i in range(n)]),
        }
    )
    return g


def adam_step(g, seed=0):
    """One Adam step with random gradients so every point has distinct, non-zero moments (lr 0: params fixed)."""
    gen = torch.Generator().manual_seed(seed)
    for grp in g.optimizer.param_groups:
        grp["lr"] = 0.0
    for p in g.gaussian_parameters().values():
        p.grad = torch.randn(p.shape, generator=gen)
    g.optimizer.step()
    g.optimizer.zero_grad(set_to_none=True)


def moments(g):
    return {name: (g.optimizer.state[p]["exp_avg"].clone(), g.optimizer.state[p]["exp_avg_sq"].clone())
            for name, p in g.gaussian_parameters().items()}


def view(grad_xy, visible=None, radii=None):
    """What a renderer returns for one view: viewspace points whose .grad is set, visibility, radii."""
    n = len(grad_xy)
    vp = torch.zeros(n, 3, requires_grad=True)
    vp.grad = torch.cat([torch.tensor(grad_xy, dtype=torch.float32), torch.zeros(n, 1)], dim=1)
    vis = torch.ones(n, dtype=torch.bool) if visible is None else torch.tensor(visible)
    rad = torch.zeros(n) if radii is None else torch.tensor(radii, dtype=torch.float32)
    return vis, rad, vp


def test_stats_average_xy_gradient_norm_over_visible_views():
    stats = DensificationStats(3)
    stats.add(torch.tensor([[3.0, 4.0, 100.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]),
              torch.tensor([True, True, False]), torch.tensor([5.0, 7.0, 9.0]))
    stats.add(torch.tensor([[0.0, 1.0], [0.0, 3.0], [6.0, 8.0]]),  # [N, 2] gradients work too
              torch.tensor([True, False, True]), torch.tensor([2.0, 50.0, 4.0]))
    assert torch.allclose(stats.grad_accum, torch.tensor([6.0, 1.0, 10.0]))
    assert torch.equal(stats.denom, torch.tensor([2.0, 1.0, 1.0]))
    assert torch.allclose(stats.mean_grad(), torch.tensor([3.0, 1.0, 10.0]))
    # max radii only over visible views: point 1's 50 px was invisible
    assert torch.equal(stats.max_radii2D, torch.tensor([5.0, 7.0, 4.0]))
    never_seen = DensificationStats(2)
    assert torch.equal(never_seen.mean_grad(), torch.zeros(2))


def test_schedule_windows_are_open_and_periodic():
    g = GaussianSplatting({"init_num_pts": 8, "densify_from_iter": 100, "densify_until_iter": 300,
                           "densification_interval": 100, "prune_from_iter": 0, "prune_until_iter": 250,
                           "prune_interval": 50, "opacity_reset_interval": 100})
    d = g.densifier
    assert [s for s in range(0, 401) if d.should_densify(s)] == [200]
    assert [s for s in range(0, 401) if d.should_prune(s)] == [50, 100, 150, 200]
    assert [s for s in range(0, 401) if d.should_reset_opacity(s)] == [100, 200]


def test_clone_split_prune_keep_parameters_and_adam_state_aligned():
    rows = [
        (0, 0.05, 0.5),  # 0: high gradient, small -> clone
        (1, 0.3, 0.5),   # 1: high gradient, large -> split into two, parent removed
        (2, 0.05, 0.5),  # 2: low gradient -> kept as is
        (3, 0.05, 0.001),  # 3: transparent -> pruned
        (4, 0.05, 0.5),  # 4: 50 px on screen -> pruned
        (5, 0.6, 0.5),   # 5: larger than 0.5 * extent in the world -> pruned
    ]
    g = geometry_with(rows)
    adam_step(g)
    before = {k: v.detach().clone() for k, v in g.gaussian_parameters().items()}
    m0 = moments(g)
    step_count = {k: g.optimizer.state[p]["step"].clone() for k, p in g.gaussian_parameters().items()}

    grads = [[0.02, 0.0], [0.0, 0.05], [0.001, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    radii = [3, 3, 3, 3, 50, 3]
    views = [view(grads, radii=radii), view(grads, visible=[True, True, True, True, False, True], radii=radii)]
    vis, rad, vps = zip(*views)
    report = g.update_states(10, list(vis), list(rad), list(vps))
    assert report == {"capped": 0, "cloned": 1, "split": 1, "pruned": 3, "opacity_reset": False}

    # survivors 0 and 2, then the clone of 0, then the two children of 1
    assert g.num_points == 5
    after = {k: v.detach() for k, v in g.gaussian_parameters().items()}
    for name in before:
        assert torch.equal(after[name][0], before[name][0])
        assert torch.equal(after[name][1], before[name][2])
        assert torch.equal(after[name][2], before[name][0])  # exact copy
    for name in ("f_dc", "f_rest", "opacity", "rotation"):
        assert torch.equal(after[name][3:], before[name][1:2].repeat(2, *([1] * (before[name].dim() - 1))))
    assert torch.allclose(after["scaling"][3:], torch.full((2, 3), math.log(0.3 / 1.6)))
    # children are drawn around the parent (|offset| within 6 sigma)
    assert float((after["xyz"][3:] - before["xyz"][1]).norm(dim=-1).max()) < 6 * 0.3 * math.sqrt(3)

    # Adam: survivors keep their exact moments, new points start at zero, step counters untouched
    m1 = moments(g)
    for name in before:
        for k in range(2):
            assert torch.equal(m1[name][k][0], m0[name][k][0])
            assert torch.equal(m1[name][k][1], m0[name][k][2])
            assert torch.equal(m1[name][k][2:], torch.zeros_like(m1[name][k][2:]))
        p = g.gaussian_parameters()[name]
        assert torch.equal(g.optimizer.state[p]["step"], step_count[name])
    # the optimizer holds the new Parameters and can step
    params = g.gaussian_parameters()
    assert all(grp["params"][0] is params[grp["name"]] for grp in g.optimizer.param_groups)
    assert len(g.optimizer.state) == 6
    adam_step(g, seed=1)
    # statistics restart after a densification
    assert g.densifier.stats.num_points == 5 and float(g.densifier.stats.denom.sum()) == 0


def test_big_point_pruning_waits_for_its_start_step():
    rows = [(0, 0.05, 0.5), (1, 0.05, 0.5), (2, 0.6, 0.5)]
    g = geometry_with(rows, prune_big_points_from_iter=300)
    vis, rad, vp = view([[0.0, 0.0]] * 3, radii=[3, 50, 3])
    assert g.update_states(10, [vis], [rad], [vp])["pruned"] == 0
    vis, rad, vp = view([[0.0, 0.0]] * 3, radii=[3, 50, 3])
    assert g.update_states(310, [vis], [rad], [vp])["pruned"] == 2
    assert torch.equal(g._xyz.detach(), torch.tensor([[0.0, 0.0, 0.0]]))


def test_split_children_follow_the_parent_covariance():
    # one anisotropic Gaussian rotated 90 degrees about z: its long axis (x in the local frame) is world y
    n = 4000
    half = math.sqrt(0.5)
    g = GaussianSplatting({**DENSIFY, "init_num_pts": 8, "max_num": 3 * n})
    g.set_gaussians(
        {
            "xyz": torch.zeros(n, 3),
            "f_dc": torch.zeros(n, 1, 3),
            "f_rest": torch.zeros(n, 0, 3),
            "opacity": torch.zeros(n, 1),
            "scaling": torch.log(torch.tensor([[0.4, 0.2, 0.15]])).repeat(n, 1),
            "rotation": torch.tensor([[half, 0.0, 0.0, half]]).repeat(n, 1),
        }
    )
    g.densifier.stats.add(torch.full((n, 2), 1.0), torch.ones(n, dtype=torch.bool))
    params, cloned, split = g.densifier.densify(g.gaussian_parameters(), g.optimizer, torch.Generator().manual_seed(0))
    assert (cloned, split) == (0, n)
    xyz = params["xyz"].detach().double()
    assert xyz.shape == (2 * n, 3)
    std = xyz.std(dim=0)
    assert torch.allclose(std, torch.tensor([0.2, 0.4, 0.15], dtype=torch.float64), rtol=0.05)
    assert float(xyz.mean(dim=0).abs().max()) < 0.02
    R = quaternion_to_matrix(torch.tensor([[half, 0.0, 0.0, half]]))[0]
    assert torch.allclose(R, torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), atol=1e-6)


def test_growth_stops_at_max_num_keeping_the_largest_gradients():
    rows = [(i, 0.05, 0.5) for i in range(10)]
    g = geometry_with(rows, max_num=14)
    grads = [[0.02 + 0.001 * ((i * 7) % 10), 0.0] for i in range(10)]  # distinct, shuffled magnitudes
    vis, rad, vp = view(grads)
    report = g.update_states(10, [vis], [rad], [vp])
    assert report["cloned"] == 4 and g.num_points == 14
    top4 = sorted(range(10), key=lambda i: -grads[i][0])[:4]
    assert torch.equal(g._xyz.detach()[10:, 0], torch.tensor(sorted(top4), dtype=torch.float32))
    # full: nothing more is added
    vis, rad, vp = view([[1.0, 0.0]] * 14)
    assert g.update_states(20, [vis], [rad], [vp])["cloned"] == 0 and g.num_points == 14


def test_more_points_than_max_num_are_randomly_cut_with_state_aligned():
    rows = [(i, 0.05, 0.5) for i in range(12)]
    g = geometry_with(rows, max_num=7, init_num_pts=4, densify_until_iter=0, prune_until_iter=0)
    adam_step(g)
    m0 = moments(g)
    vis, rad, vp = view([[0.0, 0.0]] * 12)
    report = g.update_states(5, [vis], [rad], [vp])
    assert report["capped"] == 5 and g.num_points == 7
    kept = g._xyz.detach()[:, 0].long()
    assert len(set(kept.tolist())) == 7
    m1 = moments(g)
    for name in m0:
        for k in range(2):
            assert torch.equal(m1[name][k], m0[name][k][kept])


def test_opacity_reset_takes_the_minimum():
    rows = [(0, 0.05, 0.001), (1, 0.05, 0.005), (2, 0.05, 0.5), (3, 0.05, 0.9)]
    g = geometry_with(rows, opacity_reset_interval=30, opacity_reset_value=0.01, min_opac_prune=0.0)
    adam_step(g)
    raw = g._opacity.detach().clone()
    m0 = moments(g)
    vis, rad, vp = view([[0.0, 0.0]] * 4)
    report = g.update_states(30, [vis], [rad], [vp])
    assert report["opacity_reset"] is True
    assert torch.allclose(g.get_opacity.detach().squeeze(1), torch.tensor([0.001, 0.005, 0.01, 0.01]), atol=1e-7)
    assert torch.equal(g._opacity.detach()[:2], raw[:2])  # already below: untouched bit for bit
    m1 = moments(g)
    assert torch.equal(m1["opacity"][0], torch.zeros(4, 1)) and torch.equal(m1["opacity"][1], torch.zeros(4, 1))
    for name in ("xyz", "scaling", "rotation", "f_dc"):
        assert torch.equal(m1[name][0], m0[name][0])
    assert g.optimizer.param_groups[3]["params"][0] is g._opacity


def test_update_states_runs_scheduled_operations_once_per_step():
    rows = [(0, 0.05, 0.5), (1, 0.05, 0.5)]
    g = geometry_with(rows)
    vis, rad, vp = view([[1.0, 0.0], [0.0, 0.0]])
    assert g.update_states(10, [vis], [rad], [vp])["cloned"] == 1
    vis, rad, vp = view([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    assert g.update_states(10, [vis], [rad], [vp]) == {}
    assert g.num_points == 3


def test_statistics_are_not_tracked_after_the_windows_close():
    g = geometry_with([(0, 0.05, 0.5)], densify_until_iter=100, prune_until_iter=50)
    vis, rad, vp = view([[1.0, 0.0]])
    g.update_states(150, [vis], [rad], [vp])
    assert float(g.densifier.stats.denom.sum()) == 0


def test_prune_never_removes_every_point():
    g = geometry_with([(0, 0.05, 0.001), (1, 0.05, 0.001)])
    vis, rad, vp = view([[0.0, 0.0]] * 2)
    assert g.update_states(10, [vis], [rad], [vp])["pruned"] == 0 and g.num_points == 2


def test_split_threshold_in_world_units_overrides_percent_dense():
    rows = [(0, 0.3, 0.5)]
    g = geometry_with(rows, split_thresh=0.5)  # 0.3 <= 0.5: clone, not split
    assert g.densifier.split_threshold == 0.5
    vis, rad, vp = view([[1.0, 0.0]])
    report = g.update_states(10, [vis], [rad], [vp])
    assert (report["cloned"], report["split"]) == (1, 0)


def test_densifier_works_without_an_optimizer():
    class Cfg:
        max_num = 10
        densify_grad_threshold = 0.1
        split_thresh = None
        percent_dense = 0.5
        scene_extent = 1.0

    d = GaussianDensifier(Cfg(), num_points=2)
    params = {
        "xyz": torch.nn.Parameter(torch.zeros(2, 3)),
        "f_dc": torch.nn.Parameter(torch.zeros(2, 1, 3)),
        "f_rest": torch.nn.Parameter(torch.zeros(2, 0, 3)),
        "opacity": torch.nn.Parameter(torch.zeros(2, 1)),
        "scaling": torch.nn.Parameter(torch.full((2, 3), math.log(0.1))),
        "rotation": torch.nn.Parameter(torch.tensor([[1.0, 0, 0, 0]] * 2)),
    }
    d.stats.add(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.ones(2, dtype=torch.bool))
    new, cloned, split = d.densify(params, None)
    assert (cloned, split) == (1, 0) and new["xyz"].shape == (3, 3)
    assert all(isinstance(p, torch.nn.Parameter) for p in new.values())


@pytest.mark.parametrize("bad_len", [1, 3])
def test_mismatched_view_lists_are_rejected(bad_len):
    g = geometry_with([(0, 0.05, 0.5)])
    vis, rad, vp = view([[0.0, 0.0]])
    with pytest.raises(ValueError, match="one visibility_filter"):
        g.update_states(10, [vis] * bad_len, [rad] * 2, [vp] * 2)
