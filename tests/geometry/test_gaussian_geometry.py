"""The Gaussian geometry: activations, learning-rate schedules, SH degree, checkpoints with a changed N."""
import math

import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from threestudio_lucid.compat import find
from threestudio_lucid.errors import ConfigError
from threestudio_lucid.geometry import GaussianSplatting
from threestudio_lucid.geometry.gaussian_splatting import SH_C0, rgb_to_sh_dc, sh_dc_to_rgb
from gaussian_factories import random_gaussians

SMALL = {"init_num_pts": 64, "init_type": "ball", "init_radius": 0.5}


def make(**overrides):
    torch.manual_seed(0)
    return GaussianSplatting({**SMALL, **overrides})


def fake_step(geometry):
    """One Adam step on a loss that touches every parameter; returns the loss."""
    loss = sum((p * torch.arange(p.numel(), dtype=p.dtype).reshape(p.shape).sin()).sum()
               for p in geometry.gaussian_parameters().values())
    geometry.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    geometry.optimizer.step()
    return loss


def test_registered_under_lucid_name():
    assert find("lucid-gaussian-splatting") is GaussianSplatting


def test_activations():
    g = make(sh_degree=2)
    g.set_gaussians(random_gaussians(40, sh_degree=2))
    assert torch.equal(g.get_scaling, torch.exp(g._scaling))
    assert torch.equal(g.get_opacity, torch.sigmoid(g._opacity))
    rot = g.get_rotation
    assert torch.allclose(rot.norm(dim=-1), torch.ones(40), atol=1e-6)
    assert torch.allclose(rot, g._rotation / g._rotation.norm(dim=-1, keepdim=True), atol=1e-7)
    feats = g.get_features
    assert feats.shape == (40, 9, 3)
    assert torch.equal(feats[:, :1], g._features_dc) and torch.equal(feats[:, 1:], g._features_rest)
    assert g.get_xyz is g._xyz
    assert g.num_points == 40 and g.max_sh_degree == 2


def test_sh_dc_colour_round_trip():
    rgb = torch.tensor([[0.0, 0.25, 1.0], [0.5, 0.5, 0.5]])
    dc = rgb_to_sh_dc(rgb)
    assert torch.allclose(dc, (rgb - 0.5) / 0.28209479177387814)
    assert torch.allclose(sh_dc_to_rgb(dc), rgb, atol=1e-7)
    assert SH_C0 == 0.28209479177387814
    g = make(init_color=[0.2, 0.4, 0.9], sh_degree=1)
    assert torch.allclose(sh_dc_to_rgb(g._features_dc.detach()), torch.tensor([0.2, 0.4, 0.9]).expand(64, 1, 3),
                          atol=1e-6)
    assert torch.equal(g._features_rest.detach(), torch.zeros(64, 3, 3))


def test_learning_rates_follow_exponential_schedules():
    g = make(
        position_lr=[0, 1e-3, 1e-5, 100],
        position_lr_spatial_scale=2.0,
        feature_lr=[10, 4e-3, 1e-3, 110],
        opacity_lr=0.05,
        scaling_lr=[0, 5e-3, 5e-3, 100],
        rotation_lr=[1e-3, 2e-4, 100],
    )
    expected = {
        0: {"xyz": 2e-3, "f_dc": 4e-3, "f_rest": 4e-3 / 20, "opacity": 0.05, "scaling": 5e-3, "rotation": 1e-3},
        # midpoint of a log-linear schedule = geometric mean
        50: {"xyz": 2 * 1e-4, "f_dc": 2e-3 * 1.0, "f_rest": 2e-3 / 20, "opacity": 0.05, "scaling": 5e-3,
             "rotation": math.sqrt(1e-3 * 2e-4)},
        100: {"xyz": 2e-5, "f_dc": 1e-3 * (4.0 ** 0.1), "f_rest": 1e-3 * (4.0 ** 0.1) / 20, "opacity": 0.05,
              "scaling": 5e-3, "rotation": 2e-4},
        1000: {"xyz": 2e-5, "f_dc": 1e-3, "f_rest": 1e-3 / 20, "opacity": 0.05, "scaling": 5e-3, "rotation": 2e-4},
    }
    # feature_lr starts at step 10: at step 50, t = 0.4 -> 4e-3^0.6 * 1e-3^0.4; at 100, t = 0.9
    expected[50]["f_dc"] = math.exp(0.6 * math.log(4e-3) + 0.4 * math.log(1e-3))
    expected[50]["f_rest"] = expected[50]["f_dc"] / 20
    expected[100]["f_dc"] = math.exp(0.1 * math.log(4e-3) + 0.9 * math.log(1e-3))
    expected[100]["f_rest"] = expected[100]["f_dc"] / 20
    for step, lrs in expected.items():
        g.update_step(0, step)
        got = {grp["name"]: grp["lr"] for grp in g.optimizer.param_groups}
        assert set(got) == {"xyz", "f_dc", "f_rest", "opacity", "scaling", "rotation"}
        for name, value in lrs.items():
            assert math.isclose(got[name], value, rel_tol=1e-9), (step, name, got[name], value)
        g.update_step(0, step)  # idempotent: a second call (renderer.geometry path) changes nothing
        assert {grp["name"]: grp["lr"] for grp in g.optimizer.param_groups} == got


def test_position_lr_spatial_scale_defaults_to_scene_extent_and_optimizer_settings():
    g = make(position_lr=1e-3, scene_extent=3.5)
    g.update_step(0, 0)
    lrs = {grp["name"]: grp["lr"] for grp in g.optimizer.param_groups}
    assert math.isclose(lrs["xyz"], 3.5e-3)
    assert isinstance(g.optimizer, torch.optim.Adam) and g.optimizer.defaults["eps"] == 1e-15
    for grp in g.optimizer.param_groups:
        assert len(grp["params"]) == 1
    params = g.gaussian_parameters()
    assert all(grp["params"][0] is params[grp["name"]] for grp in g.optimizer.param_groups)


def test_default_learning_rates_are_lucid_dreamers():
    g = GaussianSplatting({"init_num_pts": 16})
    start = g.learning_rates(0)
    end = g.learning_rates(5000)
    assert math.isclose(start["xyz"], 1.6e-4 * 3.5) and math.isclose(end["xyz"], 1.6e-6 * 3.5)
    assert math.isclose(start["f_dc"], 5e-3) and math.isclose(end["f_dc"], 3e-3)
    assert math.isclose(start["scaling"], 5e-3) and math.isclose(end["scaling"], 1e-3)
    assert math.isclose(start["rotation"], 1e-3) and math.isclose(end["rotation"], 2e-4)
    assert start["opacity"] == end["opacity"] == 0.05


def test_schedules_from_yaml_lists_work():
    cfg = OmegaConf.create({**SMALL, "position_lr": [0, 1e-3, 1e-5, 100], "position_lr_spatial_scale": 1.0})
    g = GaussianSplatting(cfg)
    assert math.isclose(g.learning_rates(50)["xyz"], 1e-4, rel_tol=1e-9)


@pytest.mark.parametrize("bad", [[0, 0.0, 1e-3, 100], [0, 1e-3, 0.0, 100], -1.0])
def test_non_positive_exponential_schedule_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="position_lr"):
        make(position_lr=bad)


def test_sh_degree_grows_every_interval():
    g = make(sh_degree=3, sh_degree_increase_interval=10)
    assert g.active_sh_degree == 0 and g.max_sh_degree == 3
    for step, degree in [(0, 0), (9, 0), (10, 1), (25, 2), (30, 3), (1000, 3)]:
        g.update_step(0, step)
        g.update_step(0, step)
        assert g.active_sh_degree == degree
    assert make(sh_degree=2).active_sh_degree == 2


def test_unknown_config_key_is_rejected():
    with pytest.raises(Exception, match="no_such_key"):
        GaussianSplatting({**SMALL, "no_such_key": 1})


def test_loading_a_checkpoint_with_a_different_count_resizes_and_trains():
    src = make()
    src.set_gaussians(random_gaussians(97, seed=1))
    fake_step(src)
    fake_step(src)
    state, opt_state = src.state_dict(), src.optimizer_state_dict()
    params_keys = {"_xyz", "_features_dc", "_features_rest", "_opacity", "_scaling", "_rotation"}
    assert set(state) == params_keys | {"_extra_state"}  # + the densification statistics

    dst = make()
    optimizer = dst.optimizer
    assert dst.num_points == 64
    dst.load_state_dict(state)
    assert dst.num_points == 97
    for key in params_keys:
        assert torch.equal(getattr(dst, key).detach(), state[key])
    # the same optimizer object now holds the new parameters
    assert dst.optimizer is optimizer
    params = dst.gaussian_parameters()
    assert all(grp["params"][0] is params[grp["name"]] for grp in dst.optimizer.param_groups)
    assert dst.densifier.stats.num_points == 97

    dst.load_optimizer_state_dict(opt_state)
    for name, p in dst.gaussian_parameters().items():
        src_state = src.optimizer.state[src.gaussian_parameters()[name]]
        assert torch.equal(dst.optimizer.state[p]["exp_avg"], src_state["exp_avg"])
        assert torch.equal(dst.optimizer.state[p]["exp_avg_sq"], src_state["exp_avg_sq"])
    # resuming gives exactly the step the source would take
    dst.update_step(0, 0)
    src.update_step(0, 0)
    fake_step(src)
    fake_step(dst)
    for name in src.gaussian_parameters():
        assert torch.equal(src.gaussian_parameters()[name].detach(), dst.gaussian_parameters()[name].detach())


def test_loading_through_a_parent_module_resizes_the_child():
    class System(nn.Module):
        def __init__(self, geometry):
            super().__init__()
            self.geometry = geometry

    src = System(make())
    src.geometry.set_gaussians(random_gaussians(33, seed=2))
    dst = System(make())
    dst.load_state_dict(src.state_dict())
    assert dst.geometry.num_points == 33
    assert torch.equal(dst.geometry._opacity.detach(), src.geometry._opacity.detach())
    loss = fake_step(dst.geometry)
    assert torch.isfinite(loss)


def test_load_state_dict_with_assign_keeps_the_optimizer_bound():
    src = make()
    src.set_gaussians(random_gaussians(20, seed=3))
    dst = make()
    dst.load_state_dict(src.state_dict(), assign=True)
    params = dst.gaussian_parameters()
    assert dst.num_points == 20
    assert all(grp["params"][0] is params[grp["name"]] for grp in dst.optimizer.param_groups)
    fake_step(dst)


def test_checkpoint_with_another_sh_degree_is_a_config_error():
    src = make(sh_degree=1)
    dst = make(sh_degree=0)
    with pytest.raises(ConfigError, match="sh_degree"):
        dst.load_state_dict(src.state_dict())


def test_optimizer_state_of_another_count_is_a_config_error():
    src = make()
    fake_step(src)
    dst = make()
    dst.set_gaussians(random_gaussians(10))
    with pytest.raises(ConfigError, match="load the geometry's state_dict"):
        dst.load_optimizer_state_dict(src.optimizer_state_dict())


def test_set_gaussians_checks_shapes():
    g = make()
    bad = random_gaussians(10)
    bad["rotation"] = bad["rotation"][:, :3]
    with pytest.raises(ValueError, match="rotation"):
        g.set_gaussians(bad)


def test_export_is_empty():
    assert make().export() == {}
