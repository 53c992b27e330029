"""A depth ControlNet on the prompted UNet call (issue 25, part 4; LucidDreamer's use_control_net),
with a tiny ``ControlNetModel`` made from the tiny pipeline's UNet (its zero convolutions given random
weights, so that its residuals are not zero) and saved as a diffusers folder."""
import glob
import os

import pytest
import torch

from threestudio_lucid import compat
from threestudio_lucid.errors import ConfigError
from threestudio_lucid.host import launch

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "custom", "threestudio-lucid", "configs")


def save_controlnet(unet_path, folder, seed=0, cross_attention_dim=None):
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(unet_path, subfolder="unet")
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 32, 32))
    if cross_attention_dim is not None:  # another text width: built from its config, not from this UNet
        controlnet = ControlNetModel.from_config({**controlnet.config, "cross_attention_dim": cross_attention_dim})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in controlnet.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block")):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    controlnet.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def controlnet_path(tiny_sd_path, tmp_path_factory):
    return save_controlnet(tiny_sd_path, tmp_path_factory.mktemp("controlnet") / "depth")


@pytest.fixture(scope="module")
def prompt_utils(make_prompt_utils):
    return {"plain": make_prompt_utils(prompt="a cube"), "perp_neg": make_prompt_utils(prompt="a cube", use_perp_neg=True)}


def make(name, tiny_sd_path, **cfg):
    return compat.find(name)({"pretrained_model_name_or_path": tiny_sd_path, **cfg})


def views(n=2):
    return dict(elevation=torch.zeros(n), azimuth=torch.tensor([0.0, 120.0])[:n], camera_distances=torch.full((n,), 2.0))


def depth_maps(n=2, size=16, seed=3):
    return torch.rand(n, size, size, 1, generator=torch.Generator().manual_seed(seed))


def noisy_latents(guidance, n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, guidance.latent_size, guidance.latent_size, generator=g), torch.tensor([500] * n)


def test_the_controlnet_adds_its_depth_residuals_to_the_prompted_unet_call(tiny_sd_path, controlnet_path, prompt_utils):
    from diffusers import ControlNetModel

    guidance = make("lucid-sds-guidance", tiny_sd_path, controlnet_model_name_or_path=controlnet_path,
                    controlnet_ratio=1.0)
    assert guidance.uses_control_depth
    latents, t = noisy_latents(guidance)
    depth = depth_maps()
    pu = prompt_utils["plain"]
    controlled = guidance.predict_noise(latents, t, pu, **views(), guidance_scale=7.5, control_depth=depth)["eps"]
    plain = guidance.predict_noise(latents, t, pu, **views(), guidance_scale=7.5)["eps"]

    # by hand with diffusers: the depth map resized to the UNet's image size over RGB, the residuals of
    # the ControlNet on the CFG batch [cond, uncond] added to that UNet call
    controlnet = ControlNetModel.from_pretrained(controlnet_path)
    image = torch.nn.functional.interpolate(depth.permute(0, 3, 1, 2), (guidance.image_size,) * 2, mode="bilinear",
                                            align_corners=False).repeat(1, 3, 1, 1)
    embeddings = pu.get_text_embeddings(**views(), view_dependent_prompting=True)
    batch, tt, images = torch.cat([latents] * 2), torch.cat([t] * 2), torch.cat([image] * 2)
    with torch.no_grad():
        down, mid = controlnet(batch, tt, encoder_hidden_states=embeddings, controlnet_cond=images, return_dict=False)
        eps = guidance.unet(batch, tt, encoder_hidden_states=embeddings, down_block_additional_residuals=down,
                            mid_block_additional_residual=mid).sample
    cond, uncond = eps.chunk(2)
    expected = uncond + 7.5 * (cond - uncond)
    assert torch.allclose(controlled, expected, atol=1e-5)
    assert (controlled - plain).abs().max() > 1e-2  # the residuals matter


def test_the_ratio_is_a_schedule_and_scale_zero_is_the_plain_unet(tiny_sd_path, controlnet_path, prompt_utils):
    guidance = make("lucid-sds-guidance", tiny_sd_path, controlnet_model_name_or_path=controlnet_path,
                    controlnet_ratio=[5, 0.0, 1.0, 6])  # LucidDreamer's switch at iteration 5, ratio 1
    latents, t = noisy_latents(guidance)
    args = dict(**views(), guidance_scale=7.5)
    plain = guidance.predict_noise(latents, t, prompt_utils["plain"], **args)["eps"]
    guidance.update_step(0, 3)
    before = guidance.predict_noise(latents, t, prompt_utils["plain"], control_depth=depth_maps(), **args)["eps"]
    guidance.update_step(0, 6)
    after = guidance.predict_noise(latents, t, prompt_utils["plain"], control_depth=depth_maps(), **args)["eps"]
    assert torch.equal(before, plain) and not torch.allclose(after, plain, atol=1e-3)

    off = make("lucid-sds-guidance", tiny_sd_path, controlnet_model_name_or_path=controlnet_path,
               controlnet_ratio=1.0, controlnet_conditioning_scale=0.0)
    zero = off.predict_noise(latents, t, prompt_utils["plain"], control_depth=depth_maps(), **args)["eps"]
    assert torch.allclose(zero, plain, atol=1e-6)


def test_ism_conditions_only_the_prediction_at_x_t_and_each_view_on_its_own_depth(tiny_sd_path, controlnet_path,
                                                                                   prompt_utils):
    guidance = make("lucid-ism-guidance", tiny_sd_path, controlnet_model_name_or_path=controlnet_path,
                    controlnet_ratio=1.0)
    calls = []
    guidance.models.controlnet.register_forward_hook(
        lambda module, args, kwargs, out: calls.append(kwargs["controlnet_cond"].detach().clone()), with_kwargs=True)
    depth = depth_maps()
    rgb = torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(0))
    out = guidance(rgb, prompt_utils["perp_neg"], **views(), control_depth=depth, t_index=300)
    assert torch.isfinite(out["loss_ism"])
    assert out["inversion_steps"] > 0 and len(calls) == 1  # the inversion's UNet calls stay plain
    (cond,) = calls
    n_neg = (cond.shape[0] - 4) // 2  # [cond (2), uncond (2), negatives (2 x n_neg, item-major)]
    assert n_neg >= 1 and cond.shape[0] == 2 * (2 + n_neg)
    per_view = [cond[0], cond[2], *cond[4:4 + n_neg]], [cond[1], cond[3], *cond[4 + n_neg:]]
    for i, rows in enumerate(per_view):
        expected = torch.nn.functional.interpolate(depth[i:i + 1].permute(0, 3, 1, 2), (guidance.image_size,) * 2,
                                                   mode="bilinear", align_corners=False)[0].repeat(3, 1, 1)
        assert all(torch.allclose(row, expected) for row in rows), i


def test_a_bad_controlnet_is_one_line_naming_the_key(tiny_sd_path, tmp_path):
    with pytest.raises(ConfigError, match=r"controlnet_model_name_or_path='.*' is a folder without config.json"):
        make("lucid-sds-guidance", tiny_sd_path, controlnet_model_name_or_path=str(tmp_path))
    wide = save_controlnet(tiny_sd_path, tmp_path / "wide", cross_attention_dim=64)
    with pytest.raises(ConfigError, match=r"cross-attends to 64-d text embeddings but the guidance's UNet to 32-d"):
        make("lucid-sds-guidance", tiny_sd_path, controlnet_model_name_or_path=wide)
    with pytest.raises(ConfigError, match=r"system.guidance.controlnet_ratio"):
        make("lucid-sds-guidance", tiny_sd_path, controlnet_model_name_or_path=wide, controlnet_ratio=1.5)


def test_a_run_passes_the_mirrored_depth_to_the_controlnet(tiny_sd_path, controlnet_path, tmp_path, monkeypatch):
    """Through the system: every step's guidance call gets the render's depth map, mirrored with the
    render on a flipped step (the system's guidance_flip_prob), and the run trains."""
    from threestudio_lucid.system.gaussian_system import GaussianSplattingSystem

    seen = []
    inputs = GaussianSplattingSystem.guidance_inputs

    def spy(self, out):
        image, extra = inputs(self, out)
        seen.append((image, extra["control_depth"], self.depth_image(out)))
        return image, extra

    monkeypatch.setattr(GaussianSplattingSystem, "guidance_inputs", spy)
    monkeypatch.chdir(tmp_path)
    args = ["--config", os.path.abspath(os.path.join(CONFIGS, "lucid-ism-cpu.yaml")), "--train",
            "system.prompt_processor.prompt=a small cube", f"system.prompt_processor.pretrained_model_name_or_path={tiny_sd_path}",
            f"system.guidance.pretrained_model_name_or_path={tiny_sd_path}",
            f"system.guidance.controlnet_model_name_or_path={controlnet_path}", "system.guidance.controlnet_ratio=1.0",
            "system.guidance_flip_prob=1.0", "system.depth_as_latent_prob=0.0", "data.width=16", "data.height=16",
            "data.eval_width=16", "data.eval_height=16", "data.n_val_views=1", "data.n_test_views=2",
            "system.geometry.init_num_pts=200", "trainer.max_steps=2", "trainer.val_check_interval=2"]
    assert launch.main(args) == 0
    assert len(seen) == 2
    for image, control, depth in seen:
        assert torch.equal(control, depth.flip(2)) and control.shape[-1] == 1 and image.shape[-1] == 3
    assert glob.glob(str(tmp_path / "outputs" / "*" / "*" / "ckpts" / "last.ckpt"))
