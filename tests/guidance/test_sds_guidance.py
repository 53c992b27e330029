"""lucid-sds-guidance: threestudio's SDS gradient, computed by hand from the UNet on the tiny pipeline."""
import pytest
import torch

from threestudio_lucid import compat
from threestudio_lucid.guidance.diffusion_base import perpendicular_component


@pytest.fixture(scope="module")
def setup(tiny_sd_path, make_prompt_utils):
    guidance = compat.find("lucid-sds-guidance")({"pretrained_model_name_or_path": tiny_sd_path, "guidance_scale": 100.0})
    plain = make_prompt_utils(prompt="a cube", negative_prompt="blurry")
    return guidance, plain, make_prompt_utils(prompt="a cube", use_perp_neg=True)


def views(b):
    return torch.zeros(b), torch.linspace(-180, 120, b), torch.full((b,), 2.0)


def test_sds_gradient_equals_hand_computation(setup):
    guidance, prompt_utils, _ = setup
    torch.manual_seed(0)
    rgb = torch.rand(2, 32, 32, 3, requires_grad=True)
    elev, azim, dist = views(2)
    t = torch.tensor([300, 700])
    torch.manual_seed(1)
    latents = guidance.prepare_latents(rgb)
    noise = torch.randn_like(latents)
    torch.manual_seed(1)  # the same VAE posterior sample inside the guidance
    out = guidance(rgb, prompt_utils, elev, azim, dist, noise=noise, t=t)

    with torch.no_grad():
        abar = guidance.alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = abar.sqrt() * latents + (1 - abar).sqrt() * noise
        emb = prompt_utils.get_text_embeddings(elev, azim, dist, True)
        eps = guidance.unet(torch.cat([x_t] * 2), torch.cat([t] * 2), encoder_hidden_states=emb).sample
        eps_c, eps_u = eps.chunk(2)
        eps_hat = eps_c + 100.0 * (eps_c - eps_u)  # threestudio's SDS CFG
        grad = (1 - abar) * (eps_hat - noise)
    assert out["grad_norm"].item() == pytest.approx(grad.norm().item(), rel=1e-4)
    assert out["loss_sds"].item() == pytest.approx(0.5 * (grad**2).sum().item() / 2, rel=1e-4)
    z = latents.detach().requires_grad_(True)
    guidance.gradient_as_loss(z, grad).backward()
    lat_grad = torch.autograd.grad(out["loss_sds"], rgb, retain_graph=True)[0]
    assert lat_grad.abs().sum() > 0  # flows back through the VAE encoder into the renders
    assert out["min_step"] == 20 and out["max_step"] == 980


def test_sds_perp_neg_branch(setup):
    guidance, _, perp_utils = setup
    rgb = torch.rand(2, 16, 16, 3)
    elev, azim, dist = views(2)
    t = torch.tensor([400, 400])
    torch.manual_seed(3)
    latents = guidance.prepare_latents(rgb)
    noise = torch.randn_like(latents)
    torch.manual_seed(3)
    out = guidance(rgb, perp_utils, elev, azim, dist, noise=noise, t=t)
    with torch.no_grad():
        abar = guidance.alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = abar.sqrt() * latents + (1 - abar).sqrt() * noise
        emb, w = perp_utils.get_text_embeddings_perp_neg(elev, azim, dist, True)
        # negatives item-major: view 0's two negatives, then view 1's (as the embeddings come)
        x_in = torch.cat([x_t, x_t, x_t.repeat_interleave(2, dim=0)])
        eps = guidance.unet(x_in, torch.cat([t] * 4), encoder_hidden_states=emb).sample
        c, u, negs = eps[:2], eps[2:4], eps[4:]
        e_pos = c - u
        acc = sum(w[:, i].view(-1, 1, 1, 1) * perpendicular_component(negs[i::2] - u, e_pos) for i in range(2))
        grad = (1 - abar) * (u + 100.0 * (e_pos + acc) - noise)
    assert out["grad_norm"].item() == pytest.approx(grad.norm().item(), rel=1e-4)


def test_grad_clip_and_nan(setup):
    guidance, prompt_utils, _ = setup
    guidance.cfg.grad_clip = 0.01
    try:
        guidance.update_step(0, 0)
        out = guidance(torch.rand(1, 16, 16, 3), prompt_utils, *views(1))
        n = 4 * 8 * 8
        assert out["grad_norm"].item() <= 0.01 * n**0.5 + 1e-6
    finally:
        guidance.cfg.grad_clip = None
        guidance.grad_clip_val = None
