"""Host ``random-camera-datamodule``: batch layout, camera conventions, sampling and schedules."""
import math
import random

import pytest
import torch

from threestudio_lucid.host.data.uncond import (
    RandomCameraDataModule,
    RandomCameraDataset,
    RandomCameraIterableDataset,
)
from threestudio_lucid.host.utils.config import ConfigError

TRAIN_KEYS = {
    "rays_o", "rays_d", "mvp_mtx", "camera_positions", "c2w", "light_positions",
    "elevation", "azimuth", "camera_distances", "height", "width", "fovy", "proj_mtx",
}
# no perturbations: the camera looks exactly at the origin with world up +z
STILL = {"camera_perturb": 0.0, "center_perturb": 0.0, "up_perturb": 0.0}


def seed(value=0):
    random.seed(value)
    torch.manual_seed(value)


def make_module(stage="fit", **cfg):
    dm = RandomCameraDataModule(cfg)
    dm.setup(stage)
    return dm


def train_batch(dm, step=1):
    dm.train_dataset.update_step(0, step)
    return next(iter(dm.train_dataloader()))


def project(mvp, point):
    clip = mvp @ torch.cat([point, torch.ones(1)])
    return clip[:3] / clip[3]


# ---------------------------------------------------------------------------------------------
# batch layout
# ---------------------------------------------------------------------------------------------
def test_train_batch_has_threestudio_keys_shapes_and_dtypes():
    seed()
    dm = make_module(height=32, width=48, batch_size=4)
    batch = train_batch(dm)
    assert set(batch) == TRAIN_KEYS
    assert batch["rays_o"].shape == batch["rays_d"].shape == (4, 32, 48, 3)
    for key in ("mvp_mtx", "c2w", "proj_mtx"):
        assert batch[key].shape == (4, 4, 4), key
    for key in ("camera_positions", "light_positions"):
        assert batch[key].shape == (4, 3), key
    for key in ("elevation", "azimuth", "camera_distances", "fovy"):
        assert batch[key].shape == (4,), key
    for key in TRAIN_KEYS - {"height", "width"}:
        assert batch[key].dtype == torch.float32, key
    assert type(batch["height"]) is int and type(batch["width"]) is int
    assert (batch["height"], batch["width"]) == (32, 48)
    torch.testing.assert_close(batch["rays_d"].norm(dim=-1), torch.ones(4, 32, 48))
    torch.testing.assert_close(batch["c2w"][:, 3], torch.tensor([0.0, 0.0, 0.0, 1.0]).expand(4, 4))


def test_datamodule_is_registered_and_setup_follows_the_stage():
    from threestudio_lucid.host import find

    assert find("random-camera-datamodule") is RandomCameraDataModule
    dm = make_module("fit")
    assert hasattr(dm, "train_dataset") and hasattr(dm, "val_dataset") and not hasattr(dm, "test_dataset")
    dm = make_module("validate")
    assert hasattr(dm, "val_dataset") and not hasattr(dm, "train_dataset")
    for stage in ("test", "predict"):
        dm = make_module(stage)
        assert hasattr(dm, "test_dataset") and not hasattr(dm, "val_dataset")
    assert dm.cfg.eval_height == 512 and dm.cfg.n_test_views == 120  # threestudio defaults


def test_eval_batch_size_other_than_one_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match="eval_batch_size"):
        RandomCameraDataModule({"eval_batch_size": 2})


def test_mismatched_resolution_stages_and_bad_light_strategy_are_config_errors():
    with pytest.raises(ConfigError, match="resolution_milestones"):
        RandomCameraDataModule({"height": [32, 64], "width": [32, 64], "batch_size": [2, 1]})
    with pytest.raises(ConfigError, match="same number of stages"):
        RandomCameraDataModule({"height": [32, 64], "width": 32, "batch_size": 1, "resolution_milestones": [5]})
    with pytest.raises(ConfigError, match="light_sample_strategy"):
        RandomCameraDataModule({"light_sample_strategy": "sunny"})


def test_unknown_config_keys_are_rejected():
    with pytest.raises(TypeError, match="not_a_field"):
        RandomCameraDataModule({"not_a_field": 1})


# ---------------------------------------------------------------------------------------------
# camera conventions
# ---------------------------------------------------------------------------------------------
def test_front_camera_sits_on_plus_x_and_looks_at_the_origin_with_z_up():
    seed()
    dm = make_module(
        height=33, width=33, batch_size=2, elevation_range=(0, 0), azimuth_range=(0, 0),
        camera_distance_range=(2.0, 2.0), **STILL,
    )
    batch = train_batch(dm)
    c2w = batch["c2w"][0]
    torch.testing.assert_close(batch["camera_positions"][0], torch.tensor([2.0, 0.0, 0.0]))
    torch.testing.assert_close(c2w[:3, 3], torch.tensor([2.0, 0.0, 0.0]))
    # OpenGL: the camera looks down its -z, so its +z column points away from the origin
    torch.testing.assert_close(c2w[:3, 2], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(c2w[:3, 1], torch.tensor([0.0, 0.0, 1.0]))  # up
    torch.testing.assert_close(c2w[:3, 0], torch.tensor([0.0, 1.0, 0.0]))  # right
    # rays start at the camera; the central pixel's ray (odd size: exactly the axis) hits the origin
    torch.testing.assert_close(batch["rays_o"][0], batch["camera_positions"][0].expand(33, 33, 3))
    torch.testing.assert_close(batch["rays_d"][0, 16, 16], torch.tensor([-1.0, 0.0, 0.0]))


def test_mvp_projects_the_origin_to_the_centre_and_up_to_the_top_half():
    """threestudio's projection negates ``[1, 1]`` (nvdiffrast rows run from NDC y=-1 at the top),
    so a point above the origin seen by a level camera has NDC ``y < 0`` = the upper image half;
    the ray grid agrees: that point lies along a ray of the upper rows."""
    seed()
    dm = make_module(
        height=33, width=33, batch_size=3, elevation_range=(0, 0), camera_distance_range=(2.5, 2.5), **STILL
    )
    batch = train_batch(dm)
    for b in range(3):
        mvp = batch["mvp_mtx"][b]
        torch.testing.assert_close(project(mvp, torch.zeros(3))[:2], torch.zeros(2), atol=1e-6, rtol=0)
        above = project(mvp, torch.tensor([0.0, 0.0, 0.5]))
        assert above[1] < 0 and abs(above[0]) < 1e-5
        # row of the ray closest in direction to the point above: in the top half
        to_point = torch.nn.functional.normalize(torch.tensor([0.0, 0.0, 0.5]) - batch["camera_positions"][b], dim=0)
        cos = (batch["rays_d"][b] * to_point).sum(-1)
        row = int(cos.flatten().argmax()) // 33
        assert row < 16
        expected_row = (above[1] + 1) / 2 * 33
        assert abs(row + 0.5 - expected_row) <= 1.0


def test_rays_and_mvp_agree_for_perturbed_random_cameras():
    """A point along the ray through pixel (j, i) projects to that pixel's centre."""
    seed(3)
    dm = make_module(height=24, width=40, batch_size=4, fovy_range=(30, 80))
    batch = train_batch(dm)
    H, W = 24, 40
    for b in range(4):
        for j, i in [(0, 0), (5, 31), (23, 39), (12, 20)]:
            point = batch["rays_o"][b, j, i] + 1.7 * batch["rays_d"][b, j, i]
            ndc = project(batch["mvp_mtx"][b], point)
            torch.testing.assert_close(
                torch.stack([(ndc[0] + 1) * W / 2, (ndc[1] + 1) * H / 2]), torch.tensor([i + 0.5, j + 0.5]),
                atol=2e-3, rtol=0,
            )


@pytest.mark.parametrize("batch_size", [1, 3, 4])
def test_c2w_rotations_are_orthonormal_and_right_handed(batch_size):
    """Batch size 3 included: threestudio's ``torch.cross(lookat, up)`` without ``dim`` crosses along
    the batch axis when B == 3; the host crosses along the last axis."""
    seed(6)
    batch = train_batch(make_module(batch_size=batch_size, height=8, width=8))
    rot = batch["c2w"][:, :3, :3]
    torch.testing.assert_close(rot.transpose(1, 2) @ rot, torch.eye(3).expand(batch_size, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(batch_size), atol=1e-5, rtol=0)


def test_sampled_angles_are_degrees_fovy_radians_within_ranges():
    seed(1)
    dm = make_module(
        batch_size=16, elevation_range=(-10, 80), azimuth_range=(-180, 180),
        camera_distance_range=(1.2, 2.0), fovy_range=(40, 70), **STILL,
    )
    for _ in range(6):  # both elevation samplers are used
        batch = train_batch(dm)
        assert batch["elevation"].min() >= -10 - 1e-4 and batch["elevation"].max() <= 80 + 1e-4
        assert batch["azimuth"].min() >= -180 and batch["azimuth"].max() <= 180
        assert batch["azimuth"].abs().max() > 2 * math.pi  # degrees, not radians
        assert batch["camera_distances"].min() >= 1.2 and batch["camera_distances"].max() <= 2.0
        assert batch["fovy"].min() >= math.radians(40) - 1e-6 and batch["fovy"].max() <= math.radians(70) + 1e-6
        # the positions follow d (cos e cos a, cos e sin a, sin e)
        e, a, d = (torch.deg2rad(batch["elevation"]), torch.deg2rad(batch["azimuth"]), batch["camera_distances"])
        expected = torch.stack([d * e.cos() * a.cos(), d * e.cos() * a.sin(), d * e.sin()], dim=-1)
        torch.testing.assert_close(batch["camera_positions"], expected, atol=1e-5, rtol=1e-5)


def test_stratified_azimuth_puts_one_camera_in_each_bin():
    seed(2)
    B = 8
    dm = make_module(batch_size=B, azimuth_range=(-180, 180))
    for _ in range(5):
        az = train_batch(dm)["azimuth"]
        bins = torch.floor((az + 180) / 360 * B).long()
        assert bins.tolist() == list(range(B))


def test_light_positions_follow_the_sampling_strategy():
    seed(4)
    dm = make_module(batch_size=32, light_distance_range=(0.8, 1.5))
    lights = train_batch(dm)["light_positions"]
    norms = lights.norm(dim=-1)
    assert norms.min() >= 0.8 - 1e-5 and norms.max() <= 1.5 + 1e-5

    dm = make_module(batch_size=32, light_sample_strategy="magic3d", light_distance_range=(0.8, 1.5))
    batch = train_batch(dm)
    lights = batch["light_positions"]
    norms = lights.norm(dim=-1)
    assert norms.min() >= 0.8 - 1e-5 and norms.max() <= 1.5 + 1e-5
    # magic3d: the light is 30..90 degrees above the plane orthogonal to the camera direction
    cam_dir = torch.nn.functional.normalize(batch["camera_positions"], dim=-1)
    sin_elev = (lights * cam_dir).sum(-1) / norms
    assert sin_elev.min() >= 0.5 - 1e-4 and sin_elev.max() <= 1 + 1e-5


def test_same_seed_gives_the_same_batch():
    seed(7)
    first = train_batch(make_module(batch_size=3, height=16, width=16))
    seed(7)
    second = train_batch(make_module(batch_size=3, height=16, width=16))
    for key in TRAIN_KEYS - {"height", "width"}:
        torch.testing.assert_close(first[key], second[key])
    seed(8)
    other = train_batch(make_module(batch_size=3, height=16, width=16))
    assert not torch.allclose(first["c2w"], other["c2w"])


def test_a_resumed_data_set_redraws_the_batches_drawn_before_the_checkpoint():
    """Batches draw from the global generators, as threestudio's do. Lightning draws one batch ahead,
    so a checkpoint is written after the next batch was drawn: ``resume_state`` holds that batch's
    generator state and ranges, and a data set resumed from it redraws the same batches, then draws
    its first new batch from the checkpoint's state, whatever ran in between (an iterator's base seed)."""
    def run(ds, steps, start=0, checkpoint_after=None):
        batches, saved = {start: ds.collate(None)}, None
        for step in range(start, steps):  # as in training: batch step+1 is drawn before update_step(step)
            batches[step + 1] = ds.collate(None)
            ds.update_step(0, step)
            torch.rand(3)  # the step's own draws
            random.random()
            if step == checkpoint_after:
                saved = (ds.resume_state(consumed=step + 1), torch.get_rng_state(), random.getstate())
        return batches, saved

    seed(3)
    full, (state, torch_state, py_state) = run(
        make_module(batch_size=2, height=16, width=16, progressive_until=4).train_dataset, 6, checkpoint_after=2)

    resumed = make_module(batch_size=2, height=16, width=16, progressive_until=4).train_dataset
    torch.set_rng_state(torch_state)  # what the system restores from the checkpoint
    random.setstate(py_state)
    torch.rand(2)  # the resumed loader's iterator draws a base seed first
    resumed.load_resume_state(state)
    again, _ = run(resumed, 6, start=3)
    for index in range(3, 7):
        torch.testing.assert_close(again[index]["c2w"], full[index]["c2w"])
        torch.testing.assert_close(again[index]["elevation"], full[index]["elevation"])


# ---------------------------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------------------------
def test_resolution_milestones_switch_height_width_and_batch_size():
    dm = make_module(height=[16, 24, 32], width=[20, 28, 36], batch_size=[4, 2, 1], resolution_milestones=[10, 30])
    ds = dm.train_dataset
    expected = {0: (16, 20, 4), 9: (16, 20, 4), 10: (24, 28, 2), 29: (24, 28, 2), 30: (32, 36, 1), 500: (32, 36, 1)}
    for step, (h, w, b) in expected.items():
        ds.update_step(0, step)
        batch = ds.collate(None)
        assert (batch["height"], batch["width"]) == (h, w), step
        assert batch["rays_d"].shape == (b, h, w, 3), step
        assert type(batch["height"]) is int


def test_step_zero_looks_from_the_eval_elevation_at_azimuth_zero():
    """threestudio's quirk: progressive_view at step 0 gives r = 0/(progressive_until+1) = 0 even with
    progressive_until=0, so the first batch is at elevation eval_elevation_deg and azimuth 0."""
    seed(5)
    dm = make_module(batch_size=6, eval_elevation_deg=15.0)
    ds = dm.train_dataset
    assert list(ds.elevation_range) == [-10, 90]  # before the first update_step: the configured range
    for _ in range(4):  # whichever elevation sampler is drawn
        ds.update_step(0, 0)
        batch = ds.collate(None)
        torch.testing.assert_close(batch["elevation"], torch.full((6,), 15.0), atol=1e-4, rtol=0)
        torch.testing.assert_close(batch["azimuth"], torch.zeros(6))
    ds.update_step(0, 1)
    assert ds.elevation_range == [-10, 90] and ds.azimuth_range == [-180, 180]
    az = ds.collate(None)["azimuth"]
    assert az.max() - az.min() > 100


def test_progressive_until_blends_ranges_from_the_eval_view():
    dm = make_module(progressive_until=99, eval_elevation_deg=20.0, elevation_range=(-10, 90), azimuth_range=(-180, 180))
    ds = dm.train_dataset
    ds.update_step(0, 50)  # r = 50 / 100
    assert ds.elevation_range == pytest.approx([5.0, 55.0])
    assert ds.azimuth_range == pytest.approx([-90.0, 90.0])
    ds.update_step(0, 100)
    assert ds.elevation_range == pytest.approx([-10.0, 90.0])


# ---------------------------------------------------------------------------------------------
# validation / test orbits
# ---------------------------------------------------------------------------------------------
def test_val_and_test_orbits_have_the_right_azimuths_and_an_index():
    cfg = dict(eval_height=9, eval_width=11, n_val_views=4, n_test_views=5,
               eval_elevation_deg=10.0, eval_camera_distance=2.0, eval_fovy_deg=60.0)
    val = make_module("validate", **cfg).val_dataset
    test = make_module("test", **cfg).test_dataset
    assert len(val) == 4 and len(test) == 5
    torch.testing.assert_close(torch.stack([val[i]["azimuth"] for i in range(4)]), torch.tensor([0.0, 90.0, 180.0, 270.0]))
    torch.testing.assert_close(
        torch.stack([test[i]["azimuth"] for i in range(5)]), torch.tensor([0.0, 90.0, 180.0, 270.0, 360.0])
    )
    item = val[1]
    assert set(item) == TRAIN_KEYS | {"index"}
    assert item["index"] == 1
    torch.testing.assert_close(item["elevation"], torch.tensor(10.0))
    torch.testing.assert_close(item["fovy"], torch.tensor(math.radians(60.0)))
    torch.testing.assert_close(item["camera_distances"], torch.tensor(2.0))
    e = math.radians(10.0)
    torch.testing.assert_close(item["camera_positions"], torch.tensor([0.0, 2 * math.cos(e), 2 * math.sin(e)]), atol=1e-6, rtol=0)
    torch.testing.assert_close(item["light_positions"], item["camera_positions"])
    assert item["rays_d"].shape == (9, 11, 3)
    torch.testing.assert_close(item["rays_d"][4, 5], -item["camera_positions"] / 2.0, atol=1e-6, rtol=0)
    torch.testing.assert_close(project(item["mvp_mtx"], torch.zeros(3))[:2], torch.zeros(2), atol=1e-6, rtol=0)


def test_eval_loaders_give_batches_of_one_with_int_sizes():
    dm = make_module(None, eval_height=8, eval_width=8, n_val_views=2, n_test_views=3)
    val_batches = list(dm.val_dataloader())
    assert len(val_batches) == 2 and len(list(dm.test_dataloader())) == 3
    assert len(list(dm.predict_dataloader())) == 3
    batch = val_batches[1]
    assert set(batch) == TRAIN_KEYS | {"index"}
    assert batch["index"].tolist() == [1]
    assert batch["rays_o"].shape == (1, 8, 8, 3) and batch["c2w"].shape == (1, 4, 4)
    assert batch["elevation"].shape == (1,) and batch["fovy"].shape == (1,)
    assert type(batch["height"]) is int and (batch["height"], batch["width"]) == (8, 8)


def test_eval_dataset_can_be_built_from_a_parsed_config_directly():
    from threestudio_lucid.host.data.uncond import RandomCameraDataModuleConfig
    from threestudio_lucid.host.utils.config import parse_structured

    cfg = parse_structured(RandomCameraDataModuleConfig, {"eval_height": 4, "eval_width": 4, "n_test_views": 2})
    assert len(RandomCameraDataset(cfg, "test")) == 2
    assert isinstance(RandomCameraIterableDataset(cfg), torch.utils.data.IterableDataset)
