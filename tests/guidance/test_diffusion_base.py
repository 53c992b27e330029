"""The shared diffusion base on the tiny pipeline: loading, errors, VAE, timesteps, CFG, loss trick."""
import time

import pytest
import torch
from omegaconf import OmegaConf

from threestudio_lucid.errors import ConfigError
from threestudio_lucid.guidance.diffusion_base import perpendicular_component
from threestudio_lucid.guidance.sds_guidance import SDSGuidance


@pytest.fixture(scope="module")
def guidance(tiny_sd_path):
    return SDSGuidance({"pretrained_model_name_or_path": tiny_sd_path})


def test_loads_local_folder_frozen_and_unregistered(guidance):
    assert guidance.weights_dtype == torch.float32  # CPU: fp32 even with half_precision_weights
    assert guidance.image_size == 64 and guidance.latent_size == 8
    assert not any(p.requires_grad for p in guidance.unet.parameters())
    # the pretrained models are not submodules: not optimised, not in checkpoints
    assert list(guidance.parameters()) == [] and guidance.state_dict() == {}


def test_missing_model_fails_fast_with_one_line_naming_the_key(tmp_path):
    start = time.time()
    with pytest.raises(ConfigError) as exc:
        SDSGuidance({"pretrained_model_name_or_path": "stabilityai/stable-diffusion-2-1-base"})
    assert time.time() - start < 10
    msg = str(exc.value)
    assert "pretrained_model_name_or_path" in msg and "local diffusers folder" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="model_index.json"):
        SDSGuidance({"pretrained_model_name_or_path": str(tmp_path)})


def test_unknown_weighting_strategy(tiny_sd_path):
    with pytest.raises(ConfigError, match="weighting_strategy"):
        SDSGuidance({"pretrained_model_name_or_path": tiny_sd_path, "weighting_strategy": "nope"})


def test_vae_encode_uses_scaling_factor_and_model_resolution(guidance):
    torch.manual_seed(0)
    rgb = torch.rand(2, 32, 48, 3)
    lat = guidance.prepare_latents(rgb)
    assert lat.shape == (2, 4, 8, 8)
    imgs = torch.nn.functional.interpolate(rgb.permute(0, 3, 1, 2), (64, 64), mode="bilinear", align_corners=False)
    dist = guidance.vae.encode(imgs * 2 - 1).latent_dist
    torch.manual_seed(5)
    expected = (dist.mean + dist.std * torch.randn(dist.mean.shape)) * guidance.vae.config.scaling_factor
    torch.manual_seed(5)  # the posterior sample draws from the global generator
    assert torch.allclose(guidance.encode_images(imgs), expected, atol=1e-5)
    out = guidance.decode_latents(lat)
    assert out.shape == (2, 3, 64, 64) and out.min() >= 0 and out.max() <= 1
    assert guidance.prepare_latents(torch.rand(1, 16, 16, 4), rgb_as_latents=True).shape == (1, 4, 8, 8)


def test_timestep_schedule_follows_c(guidance):
    guidance.cfg.max_step_percent = OmegaConf.create([100, 0.98, 0.5, 101])
    try:
        guidance.update_step(0, 0)
        assert (guidance.min_step, guidance.max_step) == (20, 980)
        guidance.update_step(0, 200)
        assert guidance.max_step == 500
        t = guidance.sample_timesteps(4096)
        assert t.min() >= 20 and t.max() <= 500 and t.max() >= 490 and t.min() <= 30
    finally:
        guidance.cfg.max_step_percent = 0.98
        guidance.update_step(0, 0)


def test_weights(guidance):
    t = torch.tensor([0, 500, 999])
    abar = guidance.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(guidance.weight(t), 1 - abar)
    # table is SD's scaled-linear schedule
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    assert torch.allclose(guidance.alphas_cumprod, torch.cumprod(1 - betas, 0).float(), atol=1e-6)


def test_gradient_as_loss_has_the_given_gradient():
    z = torch.randn(3, 4, 8, 8, requires_grad=True)
    g = torch.randn(3, 4, 8, 8)
    from threestudio_lucid.guidance.diffusion_base import StableDiffusionGuidanceBase

    loss = StableDiffusionGuidanceBase.gradient_as_loss(z, g)
    loss.backward()
    assert torch.allclose(z.grad, g / 3, atol=1e-6)
    assert loss.item() == pytest.approx(0.5 * (g**2).sum().item() / 3, rel=1e-5)


def test_cfg_and_perpendicular_component():
    c, u = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    from threestudio_lucid.guidance.diffusion_base import StableDiffusionGuidanceBase

    assert torch.allclose(StableDiffusionGuidanceBase.classifier_free_guidance(c, u, 7.5), u + 7.5 * (c - u))
    p = perpendicular_component(c, u)
    assert torch.allclose((p * u).sum(dim=(1, 2, 3)), torch.zeros(2), atol=1e-4)
    assert torch.allclose(perpendicular_component(2 * u, u), torch.zeros_like(u), atol=1e-5)


def test_inverse_text_over_77_tokens_is_a_config_error_naming_the_key(tiny_sd_path):
    from threestudio_lucid import compat

    with pytest.raises(ConfigError) as error:
        compat.find("lucid-ism-guidance")({"pretrained_model_name_or_path": tiny_sd_path, "inverse_text": "a cube " * 50})
    message = str(error.value)
    assert message.startswith("system.guidance.inverse_text 'a cube a cube")
    assert "102 tokens" in message and "limit of 77" in message and "\n" not in message

    # 77 tokens exactly: encoded whole
    from transformers import CLIPTextModel, CLIPTokenizer

    text = "cube " * 75
    tokenizer = CLIPTokenizer.from_pretrained(tiny_sd_path, subfolder="tokenizer")
    ids = tokenizer(text, truncation=False, return_tensors="pt").input_ids
    assert ids.shape == (1, 77)
    ism = compat.find("lucid-ism-guidance")({"pretrained_model_name_or_path": tiny_sd_path, "inverse_text": text})
    with torch.no_grad():
        expected = CLIPTextModel.from_pretrained(tiny_sd_path, subfolder="text_encoder")(ids)[0]
    torch.testing.assert_close(ism.extra_text_embeddings["inverse_text"], expected, atol=1e-5, rtol=1e-5)
