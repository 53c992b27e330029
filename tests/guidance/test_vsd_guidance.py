"""lucid-vsd-guidance and lucid-esd-guidance on the tiny pipeline: the VSD gradient and the LoRA loss by
hand, ESD's lambda_coeff as 1 - guidance_scale_lora, single-model sharing, registration and state dicts."""

import pytest
import torch

from threestudio_lucid import compat
from threestudio_lucid.errors import ConfigError
from threestudio_lucid.guidance.diffusion_base import perpendicular_component


@pytest.fixture(scope="module")
def prompt_utils(make_prompt_utils):
    return {
        "plain": make_prompt_utils(prompt="a cube", negative_prompt="blurry"),
        "perp_neg": make_prompt_utils(prompt="a cube", use_perp_neg=True),
    }


def make(name, tiny_sd_path, **cfg):
    base = {"pretrained_model_name_or_path": tiny_sd_path, "pretrained_model_name_or_path_lora": tiny_sd_path}
    return compat.find(name)({**base, **cfg})


def pristine_unet(path):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(path, subfolder="unet").eval()


def cameras(b, seed=0):
    g = torch.Generator().manual_seed(seed)
    elevation = torch.tensor([10.0, 30.0, 80.0, -5.0])[:b]
    azimuth = torch.tensor([0.0, 100.0, -170.0, 45.0])[:b]
    distances = torch.full((b,), 2.5)
    c2w = torch.randn(b, 4, 4, generator=g)
    mvp = torch.randn(b, 4, 4, generator=g)
    return elevation, azimuth, distances, mvp, c2w


def latents_input(b, seed=0):
    """Renders that are latents already ([B,8,8,4] at the tiny model's latent size: no resize)."""
    return torch.randn(b, 8, 8, 4, generator=torch.Generator().manual_seed(seed), requires_grad=True)


def randomise_lora(guidance, seed):
    """Non-zero B matrices and camera embedding, so camera-conditioned and camera-free scores differ."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in guidance.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))


def lora_b_and_camera_zero(guidance):
    """The LoRA adds nothing (peft's init has B = 0) and the camera embedding outputs zero."""
    assert all(not layer["lora_B"].weight.any() for layer in guidance.lora_layers.values())
    with torch.no_grad():
        guidance.camera_embedding.linear_2.weight.zero_()
        guidance.camera_embedding.linear_2.bias.zero_()


def test_vsd_gradient_with_inert_lora_equals_pretrained_cfg_minus_base_unet(tiny_sd_path, prompt_utils):
    guidance = make("lucid-vsd-guidance", tiny_sd_path, guidance_scale=7.5, guidance_scale_lora=0.5)
    lora_b_and_camera_zero(guidance)
    unet = pristine_unet(tiny_sd_path)
    b = 3
    rgb = latents_input(b)
    elev, azim, dist, mvp, c2w = cameras(b)
    t = torch.tensor([50, 400, 900])
    noise = torch.randn(b, 4, 8, 8, generator=torch.Generator().manual_seed(1))

    for kind in ("plain", "perp_neg"):
        utils = prompt_utils[kind]
        out = guidance(rgb, utils, elev, azim, dist, mvp, c2w, rgb_as_latents=True, noise=noise, t=t)
        with torch.no_grad():
            z = rgb.detach().permute(0, 3, 1, 2)
            abar = guidance.alphas_cumprod[t].view(-1, 1, 1, 1)
            x_t = abar.sqrt() * z + (1 - abar).sqrt() * noise
            if kind == "plain":
                emb = utils.get_text_embeddings(elev, azim, dist, True)
                cond, uncond = unet(torch.cat([x_t] * 2), torch.cat([t] * 2), encoder_hidden_states=emb).sample.chunk(2)
                eps_pretrained = uncond + 7.5 * (cond - uncond)
            else:
                emb, w = utils.get_text_embeddings_perp_neg(elev, azim, dist, True)
                x_in = torch.cat([x_t, x_t, x_t.repeat_interleave(2, dim=0)])  # negatives item-major
                eps = unet(x_in, torch.cat([t, t, t.repeat_interleave(2, dim=0)]), encoder_hidden_states=emb).sample
                cond, uncond, negs = eps[:b], eps[b : 2 * b], eps[2 * b :]
                e_pos = cond - uncond
                acc = sum(
                    w[:, i].view(-1, 1, 1, 1) * perpendicular_component(negs[i::2] - uncond, e_pos) for i in range(2)
                )
                eps_pretrained = uncond + 7.5 * (e_pos + acc)
            # the LoRA branch: the base UNet on the conditional, view-independent prompt
            text = utils.get_text_embeddings(elev, azim, dist, False)[:b]
            eps_lora = unet(x_t, t, encoder_hidden_states=text).sample
            grad = (1 - abar) * (eps_pretrained - eps_lora)
        assert out["grad_norm"].item() == pytest.approx(grad.norm().item(), rel=1e-4), kind
        (lat_grad,) = torch.autograd.grad(out["loss_vsd"], rgb)
        assert torch.allclose(lat_grad, grad.permute(0, 2, 3, 1) / b, atol=1e-5), kind
    assert out["min_step"] == 20 and out["max_step"] == 980
    assert torch.equal(out["timesteps"], t)


def test_esd_lambda_gives_vsd_gradient_with_guidance_scale_lora_one_minus_lambda(tiny_sd_path, prompt_utils):
    lam = 0.3
    vsd = make("lucid-vsd-guidance", tiny_sd_path, guidance_scale_lora=1 - lam)
    esd = make("lucid-esd-guidance", tiny_sd_path, lambda_coeff=lam)
    assert esd.guidance_scale_lora == pytest.approx(1 - lam) and esd.lambda_coeff == lam
    randomise_lora(vsd, seed=3)
    esd.load_state_dict(vsd.state_dict())
    b = 2
    rgb = latents_input(b, seed=4)
    elev, azim, dist, mvp, c2w = cameras(b, seed=5)
    t = torch.tensor([300, 700])
    noise = torch.randn(b, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    utils = prompt_utils["plain"]

    def run(g):
        out = g(rgb, utils, elev, azim, dist, mvp, c2w, rgb_as_latents=True, noise=noise, t=t,
                generator=torch.Generator().manual_seed(7))
        return out, torch.autograd.grad(out["loss_vsd"], rgb)[0]

    (out_vsd, grad_vsd), (out_esd, grad_esd) = run(vsd), run(esd)
    assert torch.allclose(grad_vsd, grad_esd, atol=1e-6)
    assert out_vsd["loss_lora"].item() == pytest.approx(out_esd["loss_lora"].item(), rel=1e-6)

    # the LoRA score is the paper's mix lambda * eps(null) + (1 - lambda) * eps(camera) ...
    with torch.no_grad():
        x_t = esd.scheduler.add_noise(rgb.detach().permute(0, 3, 1, 2), noise, t)
        text = utils.get_text_embeddings(elev, azim, dist, False)[:b]
        camera = c2w.reshape(b, 16)
        eps_cam = esd.lora_eps(x_t, t, text, camera)
        eps_free = esd.lora_eps(x_t, t, text, torch.zeros_like(camera))
        # one batched [camera, null] UNet call vs two calls: float32 noise up to ~1.2e-5 on older diffusers
        torch.testing.assert_close(esd.lora_score(x_t, t, text, camera), lam * eps_free + (1 - lam) * eps_cam, rtol=1e-4, atol=5e-5)
        # ... and with the randomised LoRA the two halves really differ, so the mapping is tested
        assert (eps_cam - eps_free).abs().max() > 1e-3


def test_two_models_v_prediction_lora_gradient_and_velocity_loss(tiny_sd_path, v_prediction_sd_path, prompt_utils):
    guidance = make("lucid-vsd-guidance", tiny_sd_path, pretrained_model_name_or_path_lora=v_prediction_sd_path)
    assert not guidance.single_model and guidance.unet_lora is not guidance.unet
    assert guidance.prediction_type == "epsilon" and guidance.lora_prediction_type == "v_prediction"
    # the pretrained UNet carries neither the adapter nor the camera embedding
    assert not getattr(guidance.unet, "_hf_peft_config_loaded", False) and guidance.unet.class_embedding is None
    lora_b_and_camera_zero(guidance)
    pretrained, lora_base = pristine_unet(tiny_sd_path), pristine_unet(v_prediction_sd_path)

    b = 2
    rgb = latents_input(b, seed=8)
    elev, azim, dist, mvp, c2w = cameras(b)
    t = torch.tensor([100, 800])
    noise = torch.randn(b, 4, 8, 8, generator=torch.Generator().manual_seed(9))
    utils = prompt_utils["plain"]
    out = guidance(rgb, utils, elev, azim, dist, mvp, c2w, rgb_as_latents=True, noise=noise, t=t,
                   generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        z = rgb.detach().permute(0, 3, 1, 2)
        abar = guidance.alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = abar.sqrt() * z + (1 - abar).sqrt() * noise
        emb = utils.get_text_embeddings(elev, azim, dist, True)
        cond, uncond = pretrained(torch.cat([x_t] * 2), torch.cat([t] * 2), encoder_hidden_states=emb).sample.chunk(2)
        text = utils.get_text_embeddings(elev, azim, dist, False)[:b]
        v = lora_base(x_t, t, encoder_hidden_states=text).sample
        eps_lora = (1 - abar).sqrt() * x_t + abar.sqrt() * v
        grad = (1 - abar) * (uncond + 7.5 * (cond - uncond) - eps_lora)
        assert out["grad_norm"].item() == pytest.approx(grad.norm().item(), rel=1e-4)

        # LoRA loss: the generator draws t ~ U[0, 1000), the noise, then the camera drops
        g = torch.Generator().manual_seed(10)
        t_lora = torch.randint(0, 1000, [b], generator=g)
        n_lora = torch.randn(z.shape, generator=g)
        abar_l = guidance.alphas_cumprod_lora[t_lora].view(-1, 1, 1, 1)
        noisy = abar_l.sqrt() * z + (1 - abar_l).sqrt() * n_lora
        velocity = abar_l.sqrt() * n_lora - (1 - abar_l).sqrt() * z
        pred = lora_base(noisy, t_lora, encoder_hidden_states=text).sample
        assert out["loss_lora"].item() == pytest.approx(((pred - velocity) ** 2).mean().item(), rel=1e-4)


def test_only_lora_and_camera_embedding_are_registered_and_the_unet_is_shared(tiny_sd_path, prompt_utils):
    from peft.tuners.lora import LoraLayer

    guidance = make("lucid-vsd-guidance", tiny_sd_path)
    unet = guidance.unet
    # single-model mode: one UNet, the pipeline's own, with the adapter injected in place
    assert guidance.single_model and guidance.unet_lora is unet and guidance.models.pipe.unet is unet
    lora_modules = {name: m for name, m in unet.named_modules() if isinstance(m, LoraLayer)}
    projections = {"to_q", "to_k", "to_v", "to_out.0"}
    attention_projections = [
        n for n, m in unet.named_modules() if any(n.endswith("." + p) for p in projections) and "base_layer" not in n
    ]
    assert set(lora_modules) == set(attention_projections) and lora_modules

    named = dict(guidance.named_parameters())
    assert len(named) == 2 * len(lora_modules) + 4  # A and B per layer; two linears in the camera embedding
    assert all(k.startswith(("lora_layers.", "camera_embedding.")) for k in named)
    assert all(p.requires_grad and p.dtype == torch.float32 for p in named.values())
    registered = {id(p) for p in named.values()}
    frozen = [p for p in unet.parameters() if id(p) not in registered]
    assert frozen and not any(p.requires_grad for p in frozen)
    # the registered tensors are the UNet's own adapter weights, not copies
    to_q = lora_modules["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"]
    key = "lora_layers.down_blocks__0__attentions__0__transformer_blocks__0__attn1__to_q.lora_B.weight"
    assert named[key].data_ptr() == to_q.lora_B["lucid_vsd"].weight.data_ptr()
    assert unet.class_embedding is guidance.camera_embedding
    # no second copy of the pretrained weights: the UNet holds the pretrained count plus the trainables
    n_pretrained = sum(p.numel() for p in pristine_unet(tiny_sd_path).parameters())
    assert sum(p.numel() for p in unet.parameters()) == n_pretrained + sum(p.numel() for p in named.values())

    # the pretrained score switches the adapter and the camera off, then restores both
    with guidance.pretrained_unet() as pre:
        assert pre is unet and pre.class_embedding is None
        assert all(m.disable_adapters for m in lora_modules.values())
    assert unet.class_embedding is guidance.camera_embedding
    assert not any(m.disable_adapters for m in lora_modules.values())
    assert all(p.requires_grad for p in named.values())

    # state dict: only the trainables, and a round trip into a new guidance restores the LoRA score
    randomise_lora(guidance, seed=11)
    state = {k: v.clone() for k, v in guidance.state_dict().items()}
    assert set(state) == set(named)
    restored = make("lucid-vsd-guidance", tiny_sd_path)
    b = 2
    elev, azim, dist, mvp, c2w = cameras(b)
    x_t = torch.randn(b, 4, 8, 8)
    t = torch.tensor([200, 600])
    text = prompt_utils["plain"].get_text_embeddings(elev, azim, dist, False)[:b]
    with torch.no_grad():
        expected = guidance.lora_eps(x_t, t, text, c2w.reshape(b, 16))
        fresh = restored.lora_eps(x_t, t, text, c2w.reshape(b, 16))
        restored.load_state_dict(state)
        got = restored.lora_eps(x_t, t, text, c2w.reshape(b, 16))
    assert torch.allclose(got, expected, atol=1e-6) and not torch.allclose(fresh, expected, atol=1e-3)
    to_q_restored = dict(restored.unet.named_modules())["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"]
    assert torch.equal(to_q_restored.lora_B["lucid_vsd"].weight, state[key])


def test_camera_condition_types(tiny_sd_path):
    guidance = make("lucid-vsd-guidance", tiny_sd_path, camera_condition_type="mvp")
    _, _, _, mvp, c2w = cameras(2)
    assert torch.equal(guidance.camera_condition(mvp, c2w), mvp.reshape(2, 16))
    guidance.cfg.camera_condition_type = "extrinsics"
    assert torch.equal(guidance.camera_condition(mvp, c2w), c2w.reshape(2, 16))
    with pytest.raises(ConfigError, match="camera_condition_type"):
        make("lucid-vsd-guidance", tiny_sd_path, camera_condition_type="intrinsics")


def test_lora_training_drops_the_camera_about_one_time_in_ten(tiny_sd_path, prompt_utils, monkeypatch):
    guidance = make("lucid-vsd-guidance", tiny_sd_path, lora_n_timestamp_samples=2)
    seen = []

    def spy(latents, t, text, camera, scale_loss=False):  # records the camera the LoRA UNet would get
        seen.append(camera.clone())
        return torch.zeros_like(latents)

    monkeypatch.setattr(guidance, "lora_model_output", spy)
    b = 4
    elev, azim, dist, mvp, c2w = cameras(b)
    camera = c2w.reshape(b, 16)
    text = prompt_utils["plain"].get_text_embeddings(elev, azim, dist, False)[:b]
    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        guidance.lora_loss(torch.randn(b, 4, 8, 8), text, camera, generator=g)
    cams = torch.cat(seen)
    assert cams.shape == (100 * 2 * b, 16)  # lora_n_timestamp_samples per view
    dropped = (cams == 0).all(dim=1)
    kept = cams[~dropped]
    assert 0.06 < dropped.float().mean().item() < 0.14
    assert all(any(torch.equal(row, c) for c in camera) for row in kept[:20])


def test_esd_config_errors_name_the_keys(tiny_sd_path):
    with pytest.raises(ConfigError) as exc:
        make("lucid-esd-guidance", tiny_sd_path, lambda_coeff=0.5, guidance_scale_lora=0.5)
    assert "system.guidance.lambda_coeff" in str(exc.value) and "system.guidance.guidance_scale_lora" in str(exc.value)
    with pytest.raises(ConfigError, match="system.guidance.lora_cfg_training"):
        make("lucid-esd-guidance", tiny_sd_path, lora_cfg_training=False)
    esd = make("lucid-esd-guidance", tiny_sd_path)  # neither: the ESD authors' lambda = 0.5
    assert esd.lambda_coeff == 0.5 and esd.guidance_scale_lora == 0.5
    esd = make("lucid-esd-guidance", tiny_sd_path, guidance_scale_lora=0.8)
    assert esd.lambda_coeff == pytest.approx(0.2)
