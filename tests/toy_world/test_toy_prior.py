"""The toy prior: the autoencoder round trip, the denoiser against direct computations of the
mixture posterior (explicit loops, torch.distributions, Tweedie's formula by autograd), the nearest
matching render at small t, and text conditioning by caption."""
import math

import pytest
import torch
from diffusers import DDIMScheduler

from threestudio_lucid.tiny_pipeline import SD21_BASE_SCHEDULER_CONFIG
from threestudio_lucid.toy_world.pipeline import encode_captions
from threestudio_lucid.toy_world.prior import ToyAutoencoder, ToyDenoiser

ALPHAS = DDIMScheduler(**SD21_BASE_SCHEDULER_CONFIG).alphas_cumprod


# ------------------------------------------------------------------------------------------------
# autoencoder
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("f", [1, 2, 4])
def test_autoencoder_round_trip_and_config(f):
    vae = ToyAutoencoder(downsample=f, image_size=16)
    assert 2 ** (len(vae.config.block_out_channels) - 1) == f and vae.config.scaling_factor == 1.0
    z = torch.rand(2, 4, 16 // f, 16 // f) * 2 - 1
    x = vae.decode(z).sample
    assert x.shape == (2, 3, 16, 16)
    back = vae.encode(x).latent_dist
    assert torch.allclose(back.mean[:, :3], z[:, :3], atol=1e-6) and torch.all(back.mean[:, 3] == 0) and torch.all(back.std == 0)
    assert torch.equal(back.sample(), back.mean)
    img = torch.rand(2, 3, 16, 16) * 2 - 1
    blocks = vae.decode(vae.encode(img).latent_dist.mean).sample
    manual = img.reshape(2, 3, 16 // f, f, 16 // f, f).mean(dim=(3, 5)).repeat_interleave(f, 2).repeat_interleave(f, 3)
    assert torch.allclose(blocks, manual, atol=1e-6)


def test_autoencoder_passes_gradients_and_reports_dtype_and_device():
    vae = ToyAutoencoder(downsample=2, image_size=8, posterior_std=0.01)
    x = torch.rand(1, 3, 8, 8, requires_grad=True)
    g = torch.Generator().manual_seed(0)
    z = vae.encode(x).latent_dist.sample(generator=g)
    z.sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, 0.25))  # average pooling of 2x2 blocks
    assert vae.dtype == torch.float32 and vae.device.type == "cpu"
    assert vae.to(torch.float16).dtype == torch.float16
    (dist,) = vae.encode(x.half().detach(), return_dict=False)
    assert dist.mean.dtype == torch.float16


# ------------------------------------------------------------------------------------------------
# the denoiser on a small synthetic mixture
# ------------------------------------------------------------------------------------------------
CAPTIONS = ["", "a", "b", "c"]


@pytest.fixture(scope="module")
def small():
    g = torch.Generator().manual_seed(0)
    means = torch.rand(6, 4, 2, 2, generator=g) * 2 - 1
    members = torch.tensor(
        [[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 1]], dtype=torch.bool
    )
    embeddings = torch.randn(4, 5, 8, generator=g)
    den = ToyDenoiser(means, embeddings, members, CAPTIONS, ALPHAS, bandwidth=0.3)
    return den, means, members, embeddings


def direct_posterior_mean_eps(x, t, prior, means, b):
    """E[x0|x_t] and eps_hat by explicit loops: responsibilities from torch.distributions, each
    component's posterior mean in precision form (prior N(m, b^2), likelihood N(sqrt(a) x0, 1 - a))."""
    a = float(ALPHAS[t].double())
    logs, post = [], []
    for m, p in zip(means.double(), prior):
        if p == 0:
            continue
        component = torch.distributions.Normal(math.sqrt(a) * m, math.sqrt(a * b * b + 1 - a))
        logs.append(math.log(p) + component.log_prob(x).sum())
        precision = 1 / (b * b) + a / (1 - a)
        post.append((m / (b * b) + math.sqrt(a) * x / (1 - a)) / precision)
    w = torch.softmax(torch.stack(logs), 0)
    x0 = sum(wi * pi for wi, pi in zip(w, post))
    return x0, (x - math.sqrt(a) * x0) / math.sqrt(1 - a)


def test_prediction_equals_a_direct_computation_of_the_posterior_mean(small):
    den, means, members, embeddings = small
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 4, 2, 2, generator=g, dtype=torch.float64)
    t = torch.tensor([3, 150, 600, 990])
    emb = embeddings[[0, 1, 2, 3]]
    eps = den(x, t, encoder_hidden_states=emb).sample
    assert eps.dtype == torch.float64 and eps.shape == x.shape
    for i in range(4):
        prior = members[i].double() / members[i].sum()
        x0, eps_direct = direct_posterior_mean_eps(x[i], int(t[i]), prior, means, 0.3)
        assert torch.allclose(eps[i], eps_direct, atol=1e-10, rtol=1e-8)
        out = den.posterior(x[i : i + 1], t[i], torch.log(prior)[None])
        assert torch.allclose(out["x0_mean"][0], x0, atol=1e-10)


def test_prediction_is_tweedies_score_of_the_noised_mixture(small):
    den, means, members, embeddings = small
    b, t = 0.3, 400
    a = ALPHAS[t].double()
    prior = members[2].double() / members[2].sum()
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(probs=prior),
        torch.distributions.Independent(
            torch.distributions.Normal(a.sqrt() * means.double().reshape(6, -1), (a * b * b + 1 - a).sqrt()), 1
        ),
    )
    x = torch.randn(1, 16, dtype=torch.float64, requires_grad=True)
    (score,) = torch.autograd.grad(mixture.log_prob(x).sum(), x)
    eps = den(x.detach().reshape(1, 4, 2, 2), t, embeddings[2:3]).sample
    assert torch.allclose(eps.reshape(1, -1), -(1 - a).sqrt() * score, atol=1e-10)


def test_timestep_may_be_an_int_a_scalar_a_single_or_a_batch(small):
    den, _, _, embeddings = small
    x = torch.randn(3, 4, 2, 2)
    emb = embeddings[:1].expand(3, -1, -1)
    ref = den(x, torch.tensor([250, 250, 250]), emb).sample
    for t in (250, torch.tensor(250), torch.tensor([250]), torch.tensor(250.0), torch.tensor([249.6] * 3)):
        assert torch.equal(den(x, t, emb).sample, ref)
    (tup,) = den(x, 250, emb, return_dict=False)
    assert torch.equal(tup, ref) and ref.dtype == torch.float32


def test_zero_bandwidth_noise_prediction_grows_like_one_over_sigma_and_bandwidth_bounds_it(small):
    den, means, members, embeddings = small
    sharp = ToyDenoiser(means, embeddings, members, CAPTIONS, ALPHAS, bandwidth=0.0)
    x = torch.full((1, 4, 2, 2), 3.0)  # far off the data
    sharp_norms, smooth_norms, sigmas = [], [], []
    for t in (0, 10, 100):
        sigmas.append(float((1 - ALPHAS[t]).sqrt()))
        sharp_norms.append(float(sharp(x, t, embeddings[:1]).sample.norm()))
        smooth_norms.append(float(den(x, t, embeddings[:1]).sample.norm()))
    scaled = [n * s for n, s in zip(sharp_norms, sigmas)]
    assert max(scaled) / min(scaled) < 1.2  # ||eps|| sigma_t ~ constant: ||eps|| ~ 1 / sigma_t
    assert sharp_norms[0] > 200
    # with a bandwidth: ||eps|| = sqrt(1 - a) / v ||x - sqrt(a) m||, vanishing as t -> 0
    assert smooth_norms[0] < smooth_norms[1] < smooth_norms[2] and smooth_norms[0] < 0.02 * sharp_norms[0]


# ------------------------------------------------------------------------------------------------
# text conditioning
# ------------------------------------------------------------------------------------------------
def test_exact_captions_select_their_renders_and_the_empty_caption_all_uniformly(small):
    den, _, members, embeddings = small
    lam = den.caption_weights(embeddings)
    assert torch.equal(lam, torch.eye(4, dtype=torch.float64))
    log_prior = den.component_log_priors(lam)
    assert torch.allclose(log_prior[0], torch.full((6,), -math.log(6), dtype=torch.float64))
    assert torch.equal(torch.isfinite(log_prior), members)


def test_interpolated_embeddings_mix_the_render_sets(small):
    den, means, members, embeddings = small
    mixed = 0.3 * embeddings[1] + 0.7 * embeddings[2]
    lam = den.caption_weights(mixed[None])[0]
    assert torch.allclose(lam, torch.tensor([0, 0.3, 0.7, 0], dtype=torch.float64), atol=1e-8)
    prior = 0.3 * members[1].double() / 2 + 0.7 * members[2].double() / 3
    x = torch.randn(1, 4, 2, 2, dtype=torch.float64)
    _, eps_direct = direct_posterior_mean_eps(x[0], 300, prior, means, 0.3)
    assert torch.allclose(den(x, 300, mixed[None]).sample[0], eps_direct, atol=1e-8)


def test_unknown_text_is_the_empty_prompt_and_fp16_rounding_still_matches(small):
    den, _, _, embeddings = small
    unknown = torch.randn(1, 5, 8, generator=torch.Generator().manual_seed(5))
    assert torch.equal(den.caption_weights(unknown), den.caption_weights(embeddings[:1]))
    assert torch.equal(den.caption_weights(embeddings[2:3].half()), den.caption_weights(embeddings[2:3]))
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        den(torch.zeros(1, 4, 2, 2), 10, torch.zeros(1, 77, 8))


def test_denoiser_casts_keep_float64_math(small):
    den, means, members, embeddings = small
    half = ToyDenoiser(means, embeddings, members, CAPTIONS, ALPHAS, bandwidth=0.3).to(torch.float16)
    assert half.dtype == torch.float16 and half.means.dtype == torch.float64
    x = torch.randn(2, 4, 2, 2)
    out = half(x.half(), 500, embeddings[:2].half()).sample
    assert out.dtype == torch.float16
    assert torch.allclose(out.float(), den(x.half().float(), 500, embeddings[:2]).sample, atol=2e-3)


# ------------------------------------------------------------------------------------------------
# on the small toy world
# ------------------------------------------------------------------------------------------------
def embed(pipe, *captions):
    return encode_captions(pipe.tokenizer, pipe.text_encoder, list(captions))


def test_at_small_t_the_prediction_is_the_nearest_matching_render(toy_pipe):
    unet, train = toy_pipe.unet, toy_pipe.unet.train_set
    captions = toy_pipe.unet.captions
    front = int(((train.object_index == 0) & (train.elevation == 0) & (train.azimuth == 0)).nonzero()[0])
    x0 = unet.means[front].reshape(1, 4, 16, 16)
    t = 1
    a = ALPHAS[t].double()
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * torch.randn(x0.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    back = (unet.caption_priors[captions.index("a red cube, back view")] > 0).nonzero().squeeze(-1)
    dist = ((x_t.reshape(1, -1) - a.sqrt() * unet.means) ** 2).sum(-1)
    nearest_matching = int(back[dist[back].argmin()])
    assert int(dist.argmin()) == front != nearest_matching  # the nearest render overall is not a back view

    out = unet.posterior(x_t, t, unet.component_log_priors(unet.caption_weights(embed(toy_pipe, "a red cube, back view"))))
    assert out["responsibilities"][0, nearest_matching] > 1 - 1e-9
    b2 = unet.bandwidth**2
    v = a * b2 + 1 - a
    m = unet.means[nearest_matching].reshape(x_t.shape)
    expected = (1 - a).sqrt() / v * (x_t - a.sqrt() * m)  # one component: eps = sqrt(1-a) / v (x_t - sqrt(a) m)
    assert torch.allclose(out["eps"], expected, atol=1e-9)
    eps = unet(x_t.float(), torch.tensor([t]), embed(toy_pipe, "a red cube, back view")).sample
    assert torch.allclose(eps.double(), expected, atol=1e-4)

    # with zero bandwidth the posterior mean is that render itself
    sharp = ToyDenoiser(
        unet.means.reshape(-1, 4, 16, 16), embed(toy_pipe, *captions), unet.caption_priors > 0, captions, ALPHAS, bandwidth=0.0
    )
    lp = sharp.component_log_priors(sharp.caption_weights(embed(toy_pipe, "a red cube, back view")))
    assert torch.allclose(sharp.posterior(x_t, t, lp)["x0_mean"], m, atol=1e-9)
    # and the unconditional prediction returns the render x_t came from
    lp_all = sharp.component_log_priors(sharp.caption_weights(embed(toy_pipe, "")))
    assert torch.allclose(sharp.posterior(x_t, t, lp_all)["x0_mean"], x0, atol=1e-9)


def test_a_view_caption_gives_weight_only_to_its_renders_at_every_noise_level(toy_pipe):
    unet, captions = toy_pipe.unet, toy_pipe.unet.captions
    emb = embed(toy_pipe, "a penguin, front view", "a penguin", "")
    lam = unet.caption_weights(emb)
    assert torch.equal(lam.argmax(-1), torch.tensor([captions.index(c) for c in ("a penguin, front view", "a penguin", "")]))
    x = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for t in (5, 300, 999):
        resp = unet.posterior(x, t, unet.component_log_priors(lam))["responsibilities"]
        for row, caption in zip(resp, ("a penguin, front view", "a penguin", "")):
            outside = unet.caption_priors[captions.index(caption)] == 0
            assert float(row[outside].sum()) == 0.0 and float(row.sum()) == pytest.approx(1.0)


def test_a_lora_adapter_on_the_closed_form_denoiser_is_a_clear_error(small):
    with pytest.raises(NotImplementedError, match="closed-form"):
        small[0].add_adapter(object())
