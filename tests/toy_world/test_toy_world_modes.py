"""The multi-modal and biased worlds as the prior sees them: the front-heavy render counts follow
the documented weighting, captions without view words, the prior's posterior mean is a blend of
variants at high noise and snaps to one at low noise, the biased prior pulls a back view toward the
front, and ``lucid-build-toy-world`` writes these worlds so that they load like any other."""
import json
import math
import os

import pytest
import torch

from threestudio_lucid import compat
from threestudio_lucid.guidance.diffusion_base import load_stable_diffusion
from threestudio_lucid.toy_world.dataset import (
    ToyWorldSettings,
    azimuth_repeats,
    caption_table,
    load_render_sets,
    training_cameras,
)
from threestudio_lucid.toy_world.evaluate import janus_score
from threestudio_lucid.toy_world.pipeline import build_toy_world, encode_captions, load_toy_world_pipeline, main

# r(a) = floor(8^((1 + cos a) / 2) + 1/2) on the 8-azimuth grid 0, 45, ..., 315 (worked by hand:
# 8^1 = 8, 8^0.854 = 5.90, 8^0.5 = 2.83, 8^0.146 = 1.36, 8^0 = 1)
REPEATS_8 = {0.0: 8, 45.0: 6, 90.0: 3, 135.0: 1, 180.0: 1, 225.0: 1, 270.0: 3, 315.0: 6}


def test_front_heavy_renders_repeat_by_the_documented_weighting(toy_cache_dir):
    settings = ToyWorldSettings(objects=["ball"], image_size=8, n_azimuths=8, elevations_deg=[0.0, 30.0, 70.0],
                                n_eval_views=2, view_distribution="front_heavy")
    grid = torch.tensor(list(REPEATS_8), dtype=torch.float32)
    assert azimuth_repeats(settings, grid).tolist() == list(REPEATS_8.values())
    train, held_out = load_render_sets(settings, toy_cache_dir)
    assert len(train) == 3 * sum(REPEATS_8.values()) == 3 * 29
    direction = train.direction_index
    for elevation in (0.0, 30.0):  # below the overhead threshold: front 0 deg, back 180 deg (strict thresholds)
        at = train.elevation == elevation
        counts = [int((at & (direction == d)).sum()) for d in range(4)]  # side, front, back, overhead
        assert counts == [20, 8, 1, 0], (elevation, counts)
    assert int(((train.elevation == 70.0) & (direction == 3)).sum()) == 29
    # copies of one render, made once; held-out views are not repeated
    uniform, uniform_eval = load_render_sets(ToyWorldSettings(**{**settings.to_dict(), "view_distribution": "uniform"}),
                                             toy_cache_dir)
    for i in range(len(uniform)):
        same = (train.elevation == uniform.elevation[i]) & (train.azimuth == uniform.azimuth[i])
        assert int(same.sum()) == REPEATS_8[float(uniform.azimuth[i])]
        assert all(torch.equal(train.rgb[j], uniform.rgb[i]) for j in same.nonzero().flatten().tolist())
    assert torch.equal(held_out.rgb, uniform_eval.rgb)
    assert torch.equal(training_cameras(settings)["azimuth"], train.azimuth)
    # a stronger bias, and R = 1 is the uniform world
    assert azimuth_repeats(ToyWorldSettings(view_distribution="front_heavy", front_repeats=27), grid).tolist() == [
        27, 17, 5, 2, 1, 2, 5, 17]
    assert azimuth_repeats(ToyWorldSettings(view_distribution="front_heavy", front_repeats=1), grid).tolist() == [1] * 8


def test_captions_without_view_words_are_the_object_names_only(toy_cache_dir):
    settings = ToyWorldSettings(objects=["ball", "penguin"], image_size=8, n_azimuths=4, elevations_deg=[0.0, 70.0],
                                n_eval_views=2, caption_views=False)
    train, _ = load_render_sets(settings, toy_cache_dir)
    captions, members = caption_table(train)
    assert captions == ["", "a blue ball", "a penguin"]
    assert torch.equal(members[2], train.object_index == 1) and bool(members[0].all())
    assert {train.captions_of(i) for i in range(len(train))} == {("a blue ball",), ("a penguin",)}


# ------------------------------------------------------------------------------------------------
# the prior on a multi-modal world
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def multimodal(tmp_path_factory, toy_cache_dir):
    """The cube in its three textured variants, one elevation: the front-view caption selects exactly
    one render per variant."""
    path = build_toy_world(tmp_path_factory.mktemp("multimodal") / "world", objects=["cube"], image_size=32,
                           n_azimuths=8, elevations_deg=[0.0], n_eval_views=2, variants=["striped", "spotted", "checkered"],
                           cache_dir=toy_cache_dir)
    return load_toy_world_pipeline(path)


def noised(unet, x0, t, seed=0):
    a = unet.alphas_cumprod[t]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def test_the_posterior_mean_blends_the_variants_at_high_noise_and_snaps_to_one_at_low_noise(multimodal):
    unet, train = multimodal.unet, multimodal.unet.train_set
    lam = unet.caption_weights(encode_captions(multimodal.tokenizer, multimodal.text_encoder, ["a red cube, front view"]))
    log_prior = unet.component_log_priors(lam)
    front = (unet.caption_priors[multimodal.unet.captions.index("a red cube, front view")] > 0).nonzero().flatten()
    assert train.variant_index[front].tolist() == [0, 1, 2] and torch.all(train.azimuth[front] == 0)
    variants = unet.means[front]
    blend = variants.mean(0)
    shape = (1, 4, 16, 16)
    for a in range(3):  # each variant's own front render, noised
        x0 = variants[a].reshape(shape)
        high = unet.posterior(noised(unet, x0, 900, a), 900, log_prior)
        mass = high["responsibilities"][0, front]
        assert torch.all(mass > 0.15) and torch.all(mass < 0.6), mass  # no variant wins
        pred = high["x0_mean"].reshape(-1)
        assert (pred - blend).norm() < 0.8 * (pred - variants[a]).norm()
        low = unet.posterior(noised(unet, x0, 100, a), 100, log_prior)
        assert low["responsibilities"][0, front[a]] > 1 - 1e-9
        pred = low["x0_mean"].reshape(-1)
        assert (pred - variants[a]).norm() < 0.6 * min((pred - variants[b]).norm() for b in range(3) if b != a)
        assert (pred - variants[a]).norm() < 0.6 * (pred - blend).norm()


# ------------------------------------------------------------------------------------------------
# the biased world: no caption pins the back down
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def penguin_world_paths(tmp_path_factory, toy_cache_dir):
    base = dict(objects=["penguin"], image_size=32, n_azimuths=8, elevations_deg=[0.0, 30.0], n_eval_views=4,
                cache_dir=toy_cache_dir)
    root = tmp_path_factory.mktemp("penguins")
    return {
        "view captions": build_toy_world(root / "views", **base),
        "biased": build_toy_world(root / "biased", view_distribution="front_heavy", caption_views=False, **base),
    }


@pytest.fixture(scope="module")
def penguin_worlds(penguin_world_paths):
    return {name: load_toy_world_pipeline(path) for name, path in penguin_world_paths.items()}


def back_view_pull(pipe, caption, t, seeds=range(6)):
    """Mass on front renders and the Janus score of the decoded x0 prediction, for the true back view
    (elevation 0) noised to ``t``, averaged over noise draws."""
    unet, train = pipe.unet, pipe.unet.train_set
    lam = unet.caption_weights(encode_captions(pipe.tokenizer, pipe.text_encoder, [caption]))
    log_prior = unet.component_log_priors(lam)
    back = int(((train.elevation == 0) & (train.azimuth == 180)).nonzero()[0])
    front = int(((train.elevation == 0) & (train.azimuth == 0)).nonzero()[0])
    back_gt = {"rgb": train.rgb_float()[back], "alpha": train.alpha_float()[back]}
    front_gt = {"rgb": train.rgb_float()[front].flip(1), "alpha": train.alpha_float()[front].flip(1)}
    masses, janus = [], []
    for seed in seeds:
        out = unet.posterior(noised(unet, unet.means[back].reshape(1, 4, 16, 16), t, seed), t, log_prior)
        masses.append(float(out["responsibilities"][0, train.direction_index == 1].sum()))
        image = (pipe.vae.decode(out["x0_mean"].float()).sample[0].permute(1, 2, 0) + 1) / 2
        janus.append(janus_score(image.clamp(0, 1), back_gt, front_gt))
    return sum(masses) / len(masses), sum(janus) / len(janus)


def test_the_biased_world_pulls_a_back_view_toward_the_front_where_view_captions_do_not(penguin_worlds):
    biased, views = penguin_worlds["biased"], penguin_worlds["view captions"]
    assert biased.unet.captions == ["", "a penguin"] and len(biased.unet.train_set) == 2 * 29
    mass_views, janus_views = back_view_pull(views, "a penguin, back view", 800)
    assert mass_views == 0.0  # the back-view caption excludes the front renders at every noise level
    mass, janus = back_view_pull(biased, "a penguin", 800)
    assert mass > 0.15  # near the front renders' prior share (8 of 29 per elevation) even from the true back...
    assert janus > janus_views + 0.1, (janus, janus_views)  # ...so the prediction takes on a second front
    mass_low, _ = back_view_pull(biased, "a penguin", 100)
    assert mass_low < 1e-6  # at low noise the back view is still recognised: the bias acts through high t


def test_guidance_without_view_prompts_asks_the_biased_world_for_its_object_caption(penguin_world_paths, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)  # the prompt processor's embedding cache
    path = penguin_world_paths["biased"]
    prompt_utils = compat.find("stable-diffusion-prompt-processor")(
        {"prompt": "a penguin", "pretrained_model_name_or_path": path})()
    guidance = compat.find("lucid-sds-guidance")({"pretrained_model_name_or_path": path, "view_dependent_prompting": False})
    elevation, azimuth, distance = torch.zeros(2), torch.tensor([0.0, 180.0]), torch.full((2,), 4.0)
    rgb = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    out = guidance(rgb, prompt_utils, elevation, azimuth, distance)
    out["loss_sds"].backward()
    assert torch.isfinite(out["loss_sds"]) and torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
    # front and back cameras alike get the object's caption (and the empty one): known text, one-hot
    lam = guidance.unet.caption_weights(prompt_utils.get_text_embeddings(elevation, azimuth, distance, False))
    assert torch.equal(lam, torch.eye(2, dtype=torch.float64)[[1, 1, 0, 0]])


# ------------------------------------------------------------------------------------------------
# the console entry
# ------------------------------------------------------------------------------------------------
def test_console_entry_builds_multimodal_and_biased_worlds_that_load_like_any_other(tmp_path, toy_cache_dir, capsys):
    path = tmp_path / "biased-mm"
    args = [str(path), "--objects", "ball", "cube", "--image-size", "16", "--n-azimuths", "8", "--elevations", "0",
            "--n-eval-views", "2", "--variants", "ball:striped", "ball:spotted", "cube:checkered",
            "--view-distribution", "front_heavy", "--front-repeats", "4", "--no-view-captions"]
    assert main(args) == 0
    assert "Toy world written" in capsys.readouterr().out
    with open(os.path.join(path, "toy_world.json")) as f:
        described = json.load(f)
    saved = described["settings"]
    assert saved["variants"] == ["ball:striped", "ball:spotted", "cube:checkered"]
    assert (saved["view_distribution"], saved["front_repeats"], saved["caption_views"]) == ("front_heavy", 4, False)
    assert list(described["objects"]["ball"]["variants"]) == ["striped", "spotted"]
    assert described["captions"] == {"": described["num_renders"], "a blue ball": 2 * 17, "a red cube": 17}

    pipe = load_stable_diffusion(str(path), torch.float32)  # the guidance's loader, as for any model folder
    assert pipe.unet.settings.variant_table == {"ball": ["striped", "spotted"], "cube": ["checkered"]}
    assert pipe.unet.captions == ["", "a blue ball", "a red cube"]
    # r = floor(4^((1 + cos a) / 2) + 1/2) on the 8 azimuths: 4, 3, 2, 1, 1, 1, 2, 3, i.e. 17 per variant
    per_variant = sum(math.floor(4 ** ((1 + math.cos(math.radians(45 * k))) / 2) + 0.5) for k in range(8))
    assert per_variant == 17 and pipe.unet.means.shape[0] == 3 * per_variant
    assert len(pipe.unet.eval_set) == 3 * 2


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--variants", "9"], "variants: got 9, but ball has fewer"),
        (["--variants", "ball:polka"], "'ball:polka' is not a variant of ball"),
        (["--view-distribution", "sideways"], "invalid choice: 'sideways'"),
        (["--front-repeats", "0"], "front_repeats: got 0; use an integer >= 1"),
    ],
)
def test_console_entry_names_a_bad_option_value(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "w"), "--objects", "ball", "--no-render", *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "w")
