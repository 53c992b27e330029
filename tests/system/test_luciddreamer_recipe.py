"""LucidDreamer's recipe in the system and renderer (each part switchable), and ISM options from the
command line reaching the guidance."""
import os

import pytest
import torch

from threestudio_lucid import compat
from threestudio_lucid.host import launch
from threestudio_lucid.host.utils.config import load_config

CONFIGS = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "custom", "threestudio-lucid", "configs"))


@pytest.fixture
def ism_system(tmp_path, monkeypatch, tiny_sd_path):
    monkeypatch.chdir(tmp_path)

    def build(*overrides):
        cfg = load_config(
            os.path.join(CONFIGS, "lucid-ism-cpu.yaml"),
            cli_args=[
                "system.prompt_processor.prompt=a cube",
                f"system.prompt_processor.pretrained_model_name_or_path={tiny_sd_path}",
                f"system.guidance.pretrained_model_name_or_path={tiny_sd_path}",
                "system.geometry.init_num_pts=200",
                *overrides,
            ],
        )
        return cfg, compat.find(cfg.system_type)(cfg.system)

    return build


def test_cli_overrides_reach_the_ism_guidance(ism_system):
    _, system = ism_system("system.guidance.delta_t=50", "system.guidance.xs_delta_t=100")
    assert system.guidance.cfg.delta_t == 50 and system.guidance.cfg.xs_delta_t == 100
    system.guidance.update_step(0, 10**6)
    assert system.guidance.current_delta_t == 50


def fake_out(b=2, h=8, w=8):
    depth = torch.linspace(1.0, 2.0, h * w).view(1, h, w, 1).repeat(b, 1, 1, 1)
    alpha = torch.ones(b, h, w, 1)
    alpha[:, :, :2] = 0.0  # background columns
    rgb = torch.rand(b, h, w, 3)
    return {"comp_rgb": rgb, "comp_depth": depth * alpha, "comp_mask": alpha}


def test_depth_as_latent_and_flip_feed_the_guidance(ism_system, monkeypatch):
    _, system = ism_system("system.depth_as_latent_prob=1.0", "system.guidance_flip_prob=1.0")
    out = fake_out()
    image = system.guidance_input(out)
    depth = system.depth_image(out)
    assert image.shape == (2, 8, 8, 3)
    assert torch.equal(image, depth.repeat(1, 1, 1, 3).flip(2))  # depth map, mirrored horizontally
    _, plain = ism_system("system.depth_as_latent_prob=0.0", "system.guidance_flip_prob=0.0")
    assert torch.equal(plain.guidance_input(out), out["comp_rgb"])


def test_disparity_map_is_normalised_inverse_depth_over_the_object(ism_system):
    _, system = ism_system("system.depth_map=disparity")
    out = fake_out()
    d = system.depth_image(out)
    obj = out["comp_mask"] > 0.1
    assert torch.all(d[~obj] == 0)
    assert d[obj].min().item() == pytest.approx(0.0, abs=1e-6) and d[obj].max().item() == pytest.approx(1.0, abs=1e-6)
    # nearer (smaller depth) is larger disparity
    row = d[0, 0, 2:, 0]
    assert torch.all(row[:-1] > row[1:])
    with pytest.raises(Exception, match="depth_map"):
        ism_system("system.depth_map=normals")


def test_renderer_augmentations_only_in_training(ism_system):
    _, system = ism_system("system.renderer.scale_noise_prob=1.0", "system.renderer.sh_degree_zero_prob=1.0")
    r = system.renderer
    scales = torch.full((1000, 3), 0.1)
    r.train()
    noisy, deg = r._augment(scales, 3)
    assert deg == 0 and noisy.min() >= 0
    assert (noisy / scales).std().item() == pytest.approx(0.1118, rel=0.1)  # sqrt(0.2)/4 relative
    r.eval()
    same, deg = r._augment(scales, 3)
    assert same is scales and deg == 3


def test_ism_cpu_variant_runs_end_to_end_with_finite_loss(tmp_path, monkeypatch, tiny_sd_path):
    monkeypatch.chdir(tmp_path)
    args = [
        "--config", os.path.join(CONFIGS, "lucid-ism-cpu.yaml"), "--train",
        "system.prompt_processor.prompt=a small cube",
        f"system.prompt_processor.pretrained_model_name_or_path={tiny_sd_path}",
        f"system.guidance.pretrained_model_name_or_path={tiny_sd_path}",
        "data.width=16", "data.height=16", "data.eval_width=16", "data.eval_height=16",
        "data.n_val_views=1", "data.n_test_views=2", "system.geometry.init_num_pts=300",
        "trainer.max_steps=4", "trainer.log_every_n_steps=1", "trainer.val_check_interval=4", "checkpoint.every_n_train_steps=4",
        "system.guidance.warmup_iter=2", "system.depth_as_latent_prob=0.5",
    ]
    assert launch.main(args) == 0
    base = os.path.join(tmp_path, "outputs", "lucid-ism-cpu")
    (trial,) = os.listdir(base)
    lines = open(os.path.join(base, trial, "csv_logs", "version_0", "metrics.csv")).read().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, l.split(","))) for l in lines[1:]]
    for key in ("train/loss_ism", "train/grad_norm"):
        values = [float(r[key]) for r in rows if r.get(key)]
        assert len(values) == 4 and all(torch.isfinite(torch.tensor(values))), key
    assert "train/delta_t" in header and "train/inversion_steps" in header
    assert os.path.exists(os.path.join(base, trial, "save", "point_cloud.ply"))
