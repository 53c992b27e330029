"""lucid-ism-guidance on the tiny pipeline: the inversion written out step by step, the target, the
SDS fall-back, the degenerate interval, and the warm-up schedule."""

import pytest
import torch

from threestudio_lucid import compat


@pytest.fixture(scope="module")
def prompt_utils(make_prompt_utils):
    return make_prompt_utils(prompt="a cube", negative_prompt="blurry")


def make(tiny_sd_path, **cfg):
    return compat.find("lucid-ism-guidance")({"pretrained_model_name_or_path": tiny_sd_path, **cfg})


@pytest.fixture(scope="module")
def ism(tiny_sd_path):
    return make(tiny_sd_path, inverse_text="a cube", lambda_guidance=0.1)


def views(b):
    return torch.zeros(b), torch.linspace(-90, 90, b), torch.full((b,), 2.0)


def eps_of(g, x, t, emb):
    return g.unet(x, t.reshape(1).expand(x.shape[0]), encoder_hidden_states=emb.expand(x.shape[0], -1, -1)).sample


def ddim(g, x, eps, t_from, t_to):
    a0, a1 = g.alphas_cumprod[t_from], g.alphas_cumprod[t_to]
    x0 = (x - (1 - a0).sqrt() * eps) / a0.sqrt()
    return a1.sqrt() * x0 + (1 - a1).sqrt() * eps


def test_timestep_table_is_ascending_ddim_with_steps_offset(ism):
    T = ism.timestep_table
    assert T.shape == (1000,) and torch.equal(T, torch.arange(1, 1001))  # SD 2.1-base: steps_offset 1


def run_with_intercept(g, rgb, prompt_utils, noise, t_index):
    """Run the guidance and capture the latents and targets it builds."""
    seen = {}
    orig_step, orig_pred = g.ddim_step, g.predict_noise

    def step(x, eps, t_from, t_to, **kw):
        out = orig_step(x, eps, t_from, t_to, **kw)
        seen.setdefault("steps", []).append((t_from, t_to))
        seen["last_x"], seen["last_eps"] = x, eps
        return out

    def pred(latents_noisy, *a, **kw):
        seen["x_t"] = latents_noisy
        return orig_pred(latents_noisy, *a, **kw)

    g.ddim_step, g.predict_noise = step, pred
    try:
        torch.manual_seed(7)
        out = g(rgb, prompt_utils, *views(rgb.shape[0]), noise=noise, t_index=t_index)
    finally:
        g.ddim_step, g.predict_noise = orig_step, orig_pred
    return out, seen


def test_inversion_matches_stepwise_ddim_and_target_is_eps_at_s(ism, prompt_utils):
    torch.manual_seed(0)
    rgb = torch.rand(2, 32, 32, 3)
    ism.update_step(0, 3000)  # after warm-up: delta_t = 80
    i_t = 450
    i_s = i_t - 80
    torch.manual_seed(7)
    z0 = ism.prepare_latents(rgb)
    noise = torch.randn_like(z0)
    out, seen = run_with_intercept(ism, rgb, prompt_utils, noise, i_t)

    T = ism.timestep_table
    inv = ism.extra_text_embeddings["inverse_text"]
    with torch.no_grad():
        # x at T[0] (start index max(370 - 1000, 0) = 0), then 200-index DDIM inversion steps to i_s
        x = ism.alphas_cumprod[T[0]].sqrt() * z0 + (1 - ism.alphas_cumprod[T[0]]).sqrt() * noise
        expected_steps = []
        for cur, nxt in [(0, 200), (200, 370)]:
            x = ddim(ism, x, eps_of(ism, x, T[cur], inv), T[cur], T[nxt])
            expected_steps.append((int(T[cur]), int(T[nxt])))
        x_s = x
        e_s = eps_of(ism, x_s, T[i_s], inv)
        x_t = ddim(ism, x_s, e_s, T[i_s], T[i_t])
        emb = prompt_utils.get_text_embeddings(*views(2), True)
        eps_c, eps_u = ism.unet(torch.cat([x_t] * 2), T[i_t].repeat(4), encoder_hidden_states=emb).sample.chunk(2)
        pred = eps_u + 7.5 * (eps_c - eps_u)
        abar = ism.alphas_cumprod[T[i_t]]
        grad = 0.1 * ((1 - abar) / abar).sqrt() * (pred - e_s)

    assert seen["steps"] == expected_steps + [(int(T[i_s]), int(T[i_t]))]
    assert torch.allclose(seen["last_x"], x_s, atol=1e-5)  # x_s fed into the s -> t step
    assert torch.allclose(seen["last_eps"], e_s, atol=1e-5)  # the target drove that step
    assert torch.allclose(seen["x_t"], x_t, atol=1e-5)
    assert out["grad_norm"].item() == pytest.approx(grad.norm().item(), rel=1e-4)
    assert out["loss_ism"].item() == pytest.approx(0.5 * (grad**2).sum().item(), rel=1e-4)  # no 1/B
    assert (out["timestep"], out["timestep_s"], out["delta_t"], out["inversion_steps"]) == (451, 371, 80, 2)


def test_sds_true_gives_the_sds_gradient_for_the_same_noise_and_timestep(tiny_sd_path, prompt_utils):
    ism = make(tiny_sd_path, sds=True, guidance_scale=7.5, lambda_guidance=1.0)
    sds = compat.find("lucid-sds-guidance")({"pretrained_model_name_or_path": tiny_sd_path, "guidance_scale": 6.5})
    rgb = torch.rand(2, 16, 16, 3)
    torch.manual_seed(1)
    z0 = ism.prepare_latents(rgb)
    noise = torch.randn_like(z0)
    i_t = 300
    t = int(ism.timestep_table[i_t])
    torch.manual_seed(1)
    out_ism = ism(rgb, prompt_utils, *views(2), noise=noise, t_index=i_t)
    torch.manual_seed(1)
    out_sds = sds(rgb, prompt_utils, *views(2), noise=noise, t=torch.tensor([t, t]))
    abar = ism.alphas_cumprod[t]
    # SDS: (1 - abar)(eps_c + 6.5 (eps_c - eps_u) - eps) / B-averaged loss;  ISM-SDS: sqrt((1-abar)/abar)(eps_u + 7.5(...) - eps)
    ratio = ((1 - abar) / abar).sqrt() / (1 - abar)
    assert out_ism["grad_norm"].item() == pytest.approx(out_sds["grad_norm"].item() * ratio.item(), rel=1e-4)
    assert out_ism["inversion_steps"] == 0


def test_zero_inversion_steps_at_s_zero_degenerates(tiny_sd_path, prompt_utils):
    ism = make(tiny_sd_path, xs_inv_steps=0, delta_t=100, delta_t_start=100)
    rgb = torch.rand(1, 16, 16, 3)
    torch.manual_seed(7)  # the VAE posterior sample run_with_intercept will draw
    z0 = ism.prepare_latents(rgb)
    noise = torch.randn_like(z0)
    out, seen = run_with_intercept(ism, rgb, prompt_utils, noise, 60)  # i_s = max(60 - 100, 0) = 0
    T = ism.timestep_table
    with torch.no_grad():
        x_s = ism.alphas_cumprod[T[0]].sqrt() * z0 + (1 - ism.alphas_cumprod[T[0]]).sqrt() * noise
        e_s = eps_of(ism, x_s, T[0], ism.extra_text_embeddings["inverse_text"])
        x_t = ddim(ism, x_s, e_s, T[0], T[60])
    assert seen["steps"] == [(1, 61)]  # only the s -> t step
    assert torch.allclose(seen["x_t"], x_t, atol=1e-5)
    assert out["timestep_s"] == 1 and out["inversion_steps"] == 0


def test_reverse_cfg_in_the_inversion(tiny_sd_path, prompt_utils):
    ism = make(tiny_sd_path, denoise_guidance_scale=2.0)
    x = torch.randn(2, 4, 8, 8)
    t = ism.timestep_table[100]
    uncond = prompt_utils.get_text_embeddings(*views(2), False)[2:]
    with torch.no_grad():
        inv = ism.extra_text_embeddings["inverse_text"]
        e_inv = eps_of(ism, x, t, inv)
        e_neg = ism.unet(x, t.repeat(2), encoder_hidden_states=uncond).sample
        assert torch.allclose(ism.inversion_eps(x, t, uncond), e_inv + 2.0 * (e_neg - e_inv), atol=1e-5)


def test_warmup_anneals_interval_and_upper_bound(tiny_sd_path):
    ism = make(tiny_sd_path, warmup_iter=1500, delta_t=80, delta_t_start=100)
    expected = {0: (100, 980), 750: (90, 740), 1500: (80, 500), 4000: (80, 500)}
    for step, (delta, high) in expected.items():
        ism.update_step(0, step)
        assert ism.current_delta_t == delta and ism.index_bounds == (20, high), step
    ism.update_step(0, 0)
    draws = [ism.sample_index() for _ in range(400)]
    assert min(draws) >= 20 and max(draws) < 980 and max(draws) > 800
    no_anneal = make(tiny_sd_path, annealing_intervals=False, delta_t=80)
    no_anneal.update_step(0, 0)
    assert no_anneal.current_delta_t == 80


def test_noise_has_shared_offset_and_fix_noise_reuses_it(tiny_sd_path):
    ism = make(tiny_sd_path, fix_noise=True, noise_seed=3)
    a = ism.sample_noise((2, 4, 8, 8))
    assert ism.sample_noise((2, 4, 8, 8)) is a
    g = torch.Generator().manual_seed(3)
    base = torch.randn((2, 4, 8, 8), generator=g)
    offset = 0.1 * torch.randn((1, 4, 1, 1), generator=g)
    assert torch.allclose(a, base + offset)


def test_bad_interval_settings_are_named(tiny_sd_path):
    from threestudio_lucid.errors import ConfigError

    with pytest.raises(ConfigError, match="xs_delta_t"):
        make(tiny_sd_path, xs_delta_t=0)


def test_perp_neg_option_runs_through_ism(tiny_sd_path, make_prompt_utils):
    perp = make_prompt_utils(prompt="a cube", use_perp_neg=True)
    ism = make(tiny_sd_path)
    seen = {}
    orig = ism.unet_eps

    def spy(latents, t, emb, **kw):
        seen.setdefault("batches", []).append(latents.shape[0])
        return orig(latents, t, emb, **kw)

    ism.unet_eps = spy
    out = ism(torch.rand(2, 16, 16, 3), perp, *views(2), t_index=300)
    assert torch.isfinite(out["loss_ism"]) and torch.isfinite(out["grad_norm"])
    assert seen["batches"][-1] == 8  # the prediction at x_t: cond, uncond and 2 negatives per view


def test_perp_neg_path_rounds_the_annealed_interval_up(tiny_sd_path, make_prompt_utils):
    """LucidDreamer: ``int(delta_t + r (start - delta_t))`` in train_step, ``int(delta_t + ceil(...))`` in
    train_step_perpneg. With delta_t 80, start 100 and r = 1 - 1/3 the annealed part is 13.33."""
    ism = make(tiny_sd_path, warmup_iter=3, delta_t=80, delta_t_start=100)
    ism.update_step(0, 1)
    assert ism.annealed_delta_t(perp_neg=False) == 93 == ism.current_delta_t
    assert ism.annealed_delta_t(perp_neg=True) == 94
    perp = make_prompt_utils(prompt="a cube", use_perp_neg=True)
    out = ism(torch.rand(1, 16, 16, 3), perp, *views(1), t_index=300)
    assert (out["delta_t"], out["timestep_s"]) == (94, int(ism.timestep_table[300 - 94]))
    ism.update_step(0, 3)  # after warm-up both are delta_t
    assert ism.annealed_delta_t(perp_neg=False) == ism.annealed_delta_t(perp_neg=True) == 80
