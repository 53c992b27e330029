"""lucid-progressive-camera-datamodule: LucidDreamer's camera distribution and relaxation on
threestudio's batch keys and conventions."""

import pytest
import torch

from threestudio_lucid import compat
from threestudio_lucid.data.progressive_camera import ProgressiveCameraConfig, biased_uniform, relaxed_ranges
from threestudio_lucid.errors import ConfigError


def make(**cfg):
    dm = compat.find("lucid-progressive-camera-datamodule")(cfg)
    dm.setup("fit")
    dm.setup("test")
    return dm


def test_train_batch_keys_shapes_and_ranges():
    torch.manual_seed(0)
    dm = make(batch_size=64, height=16, width=24, jitter_pose=False)
    batch = dm.train_dataset.collate(None)
    for key in ("rays_o", "rays_d"):
        assert batch[key].shape == (64, 16, 24, 3)
    for key in ("mvp_mtx", "proj_mtx", "c2w"):
        assert batch[key].shape == (64, 4, 4)
    assert batch["height"] == 16 and batch["width"] == 24
    assert batch["camera_distances"].min() >= 5.2 and batch["camera_distances"].max() <= 5.5
    assert batch["elevation"].min() >= -15 - 1e-4 and batch["elevation"].max() <= 45 + 1e-4
    assert batch["fovy"].min() >= 0.32 and batch["fovy"].max() <= 0.60  # radians
    # cameras sit at the sampled spherical position and look at the origin (no jitter)
    e, a, r = torch.deg2rad(batch["elevation"]), torch.deg2rad(batch["azimuth"]), batch["camera_distances"]
    pos = torch.stack([r * e.cos() * a.cos(), r * e.cos() * a.sin(), r * e.sin()], -1)
    assert torch.allclose(batch["camera_positions"], pos, atol=1e-4)
    assert torch.allclose(batch["rays_o"][:, 0, 0], pos, atol=1e-4)
    look = -batch["c2w"][:, :3, 2]
    assert torch.allclose(look, -pos / r[:, None], atol=1e-4)
    # the origin projects to the image centre
    ndc = batch["mvp_mtx"] @ torch.tensor([0.0, 0.0, 0.0, 1.0])
    assert torch.allclose(ndc[:, :2] / ndc[:, 3:], torch.zeros(64, 2), atol=1e-5)


def test_jitter_moves_cameras_and_targets():
    torch.manual_seed(1)
    batch = make(batch_size=256, jitter_center=0.05, jitter_target=0.05).train_dataset.collate(None)
    e, a, r = torch.deg2rad(batch["elevation"]), torch.deg2rad(batch["azimuth"]), batch["camera_distances"]
    pos = torch.stack([r * e.cos() * a.cos(), r * e.cos() * a.sin(), r * e.sin()], -1)
    offset = batch["camera_positions"] - pos
    assert offset.abs().max() <= 0.025 + 1e-6 and offset.abs().max() > 0.015  # U(-j/2, j/2)
    look = -batch["c2w"][:, :3, 2]
    assert (look + pos / r[:, None]).norm(dim=-1).mean() > 1e-3  # the target moved off the origin


def test_rand_cam_gamma_biases_towards_the_middle():
    torch.manual_seed(0)
    uniform = biased_uniform(20000, -180, 180, 1.0)
    biased = biased_uniform(20000, -180, 180, 3.0)
    assert uniform.abs().mean().item() == pytest.approx(90, abs=3)
    assert biased.abs().mean().item() == pytest.approx(45, abs=3)  # E[u^3] * 180 = 45


def test_progressive_relaxation_follows_luciddreamer():
    cfg = ProgressiveCameraConfig(polar_range=(60, 90), max_polar_range=(45, 105), azimuth_range=(-60, 60))
    r0 = relaxed_ranges(cfg, 499)
    assert r0["radius"] == [5.2, 5.5] and r0["fovy"] == [0.32, 0.60] and r0["polar"] == [60, 90]
    r1 = relaxed_ranges(cfg, 500)  # first widening at progressive_view_iter
    assert r1["radius"] == pytest.approx([5.2 * 0.95, 5.5 * 0.95])
    assert r1["fovy"] == pytest.approx([0.32 * 0.75, 0.60])  # upper bound clamped to max 0.60
    assert r1["polar"] == pytest.approx([45, 105]) and r1["azimuth"] == pytest.approx([-90, 90])
    assert relaxed_ranges(cfg, 999) == r1
    r_end = relaxed_ranges(cfg, 5000)
    assert r_end["radius"] == pytest.approx([3.5, 5.0]) and r_end["fovy"] == pytest.approx([0.16, 0.60])
    assert r_end["azimuth"] == pytest.approx([-180, 180])
    # the dataset follows the step (idempotent update_step)
    dm = make(progressive_view_iter=10, scale_up_cameras_iter=10)
    dm.train_dataset.update_step(0, 25)
    dm.train_dataset.update_step(0, 25)
    assert dm.train_dataset.ranges == relaxed_ranges(dm.cfg, 25)
    assert dm.train_dataset.ranges["radius"][0] == pytest.approx(5.2 * 0.95**2)


def test_eval_orbits():
    dm = make(n_val_views=4, n_test_views=5, eval_height=8, eval_width=8)
    dm.setup("validate")
    val = [b for b in dm.val_dataloader()]
    assert [int(b["index"][0]) for b in val] == [0, 1, 2, 3]
    assert [float(b["azimuth"][0]) for b in val] == [0.0, 90.0, 180.0, 270.0]
    test = list(dm.test_dataloader())
    assert len(test) == 5 and float(test[-1]["azimuth"][0]) == 360.0
    b = val[0]
    assert float(b["camera_distances"][0]) == 3.5 and float(b["elevation"][0]) == 0.0
    assert b["fovy"][0].item() == pytest.approx(0.55)
    assert torch.allclose(b["camera_positions"][0], torch.tensor([3.5, 0.0, 0.0]), atol=1e-5)


def test_bad_inputs_are_named():
    with pytest.raises(ConfigError, match="radius_range"):
        make(radius_range=[5.5, 5.2])
    with pytest.raises(ConfigError, match="eval_batch_size"):
        make(eval_batch_size=2)
    with pytest.raises(ConfigError, match=r"data.azimuth_step_deg=-5.0 must be in \[0, 360\]"):
        make(azimuth_step_deg=-5.0)
    with pytest.raises(ConfigError, match=r"data.elevation_grid_deg=\[10.0, 95.0\] must hold elevations"):
        make(elevation_grid_deg=[10.0, 95.0])


def test_cameras_snapped_to_a_grid_of_views():
    """With azimuth_step_deg and elevation_grid_deg every training camera is a grid view, posed exactly as
    that view (the toy world's render grid: a prior that has seen only those views sees each camera)."""
    torch.manual_seed(0)
    grid = [-10.0, 0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0]
    batch = make(batch_size=512, height=8, width=8, jitter_pose=False, polar_range=[30, 100], radius_range=[4, 4],
                 azimuth_step_deg=5.0, elevation_grid_deg=grid).train_dataset.collate(None)
    az, el = batch["azimuth"], batch["elevation"]
    assert torch.allclose(az / 5.0, torch.round(az / 5.0), atol=1e-4) and az.min() >= -180 and az.max() < 180
    assert set(el.tolist()) == set(grid)  # every grid elevation drawn, nothing else
    assert len(set(torch.round(az).tolist())) > 60  # the 72 azimuths, nearly all drawn
    e, a = torch.deg2rad(el), torch.deg2rad(az)
    pos = 4 * torch.stack([e.cos() * a.cos(), e.cos() * a.sin(), e.sin()], -1)
    assert torch.allclose(batch["camera_positions"], pos, atol=1e-4)  # the pose is the snapped view's
    # off by default: continuous angles
    torch.manual_seed(0)
    free = make(batch_size=512, height=8, width=8, jitter_pose=False).train_dataset.collate(None)
    assert not torch.allclose(free["azimuth"] / 5.0, torch.round(free["azimuth"] / 5.0), atol=1e-3)
