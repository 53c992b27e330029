"""scripts/claims_diagnostics.py: the measurements on the tiny world of conftest.py (32 px: a ball in two textured
variants and a plain penguin) with the real guidance classes. What a probe reads from a guidance call must add up to the update the guidance sends
(SDS pulls toward its pseudo-ground-truth, ISM along the difference of its two estimates, ESD's update is
the pretrained plus the estimator term, and the estimator term is lambda's mix of its two halves); the
measures give the values their definitions say on inputs whose answer is known; missing benchmark runs
are named with the command that makes them; the conclusions turn with the numbers."""
import math
import os

import pytest
import torch
from repo_scripts import load_repo_script

from threestudio_lucid import compat


@pytest.fixture(scope="module")
def cd():
    return load_repo_script("scripts/claims_diagnostics.py")


@pytest.fixture(scope="module")
def prompts(world, tmp_path_factory):
    """Prompt utils per object: ``ball`` (view-dependent, the multimodal case) and ``penguin``."""
    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("prompt-cwd"))  # the processor's embedding cache is relative to it
    try:
        return {key: compat.find("stable-diffusion-prompt-processor")(
            {"prompt": caption, "pretrained_model_name_or_path": world})()
            for key, caption in (("ball", "a blue ball"), ("penguin", "a penguin"))}
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def guidances(world):
    sds = compat.find("lucid-sds-guidance")({"pretrained_model_name_or_path": world})
    ism = compat.find("lucid-ism-guidance")({"pretrained_model_name_or_path": world, "warmup_iter": 10})
    ism.update_step(0, 10)  # after warm-up, as at the end of a run
    esd = compat.find("lucid-esd-guidance")({
        "pretrained_model_name_or_path": world, "pretrained_model_name_or_path_lora": world,
        "lora_unet_subfolder": "estimator_unet", "train_full_estimator": True, "lambda_coeff": 0.5})
    return {"sds": sds, "ism": ism, "esd": esd}


@pytest.fixture(scope="module")
def scene(cd, world):
    """The ball's held-out views, their guidance cameras and each of its variants' truth."""
    from threestudio_lucid.toy_world.evaluate import ground_truth
    from threestudio_lucid.toy_world.pipeline import read_toy_world_settings

    settings = read_toy_world_settings(world)
    views = cd.held_out_views(settings, "ball")
    truths = ground_truth(settings, "ball", views["elevation"], views["azimuth"], views["distance"], settings.supersample)
    return settings, views, cd.guidance_cameras(settings, views), truths


def all_channels_cos(a, b):
    a, b = a.flatten(1).double(), b.flatten(1).double()
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def test_recording_reads_each_call_and_restores_the_method(cd):
    class Thing:
        def double(self, x):
            return 2 * x

    thing = Thing()
    with cd.recording(thing, "double") as calls:
        assert thing.double(3) == 6 and thing.double(x=4) == 8
    assert calls["double"] == [((3,), {}, 6), ((), {"x": 4}, 8)]
    assert "double" not in vars(thing) and thing.double(5) == 10


def test_sds_update_is_the_pull_toward_its_pseudo_ground_truth(cd, guidances, prompts, scene):
    g, (_, _, cams, truths) = guidances["sds"], scene
    rgb = truths["striped"]["rgb"]
    noise = torch.randn(cd.latent_shape(g, len(rgb)), generator=torch.Generator().manual_seed(1))
    p = cd.probe(g, rgb, prompts["ball"], cams, 500, noise)
    assert torch.equal(p["t"], torch.full((len(rgb),), 500))
    assert torch.allclose(p["z"], cd.encode(g, rgb))
    # -grad = w (noise - eps) = w sqrt(a) / sqrt(1 - a) (x0^t - z): parallel, with that length
    assert all_channels_cos(p["update"], p["target"] - p["z"]).min() > 1 - 1e-6
    a = g.alphas_cumprod[500]
    factor = (1 - a) * a.sqrt() / (1 - a).sqrt()
    assert torch.allclose(p["update"], factor * (p["target"] - p["z"]), atol=1e-5)


def test_ism_update_is_the_difference_of_its_two_estimates(cd, guidances, prompts, scene):
    g, (_, _, cams, truths) = guidances["ism"], scene
    rgb = truths["checkered"]["rgb"]
    low, high = g.index_bounds
    index = (low + high) // 2
    g.noise_generator.manual_seed(0)
    p = cd.probe(g, rgb, prompts["ball"], cams, index, g.sample_noise(cd.latent_shape(g, len(rgb))))
    assert int(p["t"][0]) == g.timestep_values[index]
    assert int(p["s"][0]) == g.timestep_values[index - g.current_delta_t]
    # -grad = lambda w (e_s - eps_t) = c (x0^t - x0^s): parallel to the difference of the two estimates, and
    # not to the SDS form x0^t - z (x0^s is not the render)
    assert all_channels_cos(p["update"], p["target"] - p["start"]).min() > 1 - 1e-6
    assert not torch.allclose(p["start"], p["z"], atol=1e-3)
    # the grid spans the index range [20, 500) of the end of warm-up (min 0.02, max 0.5 of 1000 steps)
    assert (low, high) == (20, 500) and cd.timestep_grid(g, 3) == [20, 260, 499]
    assert [cd.timestep_of(g, i) for i in (20, 499)] == [g.timestep_values[20], g.timestep_values[499]]


def test_esd_update_is_the_pretrained_plus_the_estimator_term_mixed_by_lambda(cd, guidances, prompts, scene):
    g, (_, _, cams, truths) = guidances["esd"], scene
    rgb = truths["striped"]["rgb"]
    gen = torch.Generator().manual_seed(2)
    p = cd.probe(g, rgb, prompts["ball"], cams, 400, torch.randn(cd.latent_shape(g, len(rgb)), generator=gen), gen)
    assert torch.allclose(p["update"], p["pretrained"] + p["estimator"], atol=1e-5)
    # lambda 0.5: L = L_cam + 0.5 (L_free - L_cam)
    assert torch.allclose(p["estimator"], 0.5 * (p["estimator_camera"] + p["estimator_free"]), atol=1e-5)
    assert not torch.allclose(p["estimator_camera"], p["estimator_free"])  # the camera does reach the estimator


def test_cosine_spread_and_agreement_on_hand_made_tensors(cd):
    x = torch.zeros(2, 4, 2, 2)
    x[0, 0, 0, 0], x[1, 1, 0, 0] = 1.0, 2.0
    y = torch.zeros(2, 4, 2, 2)
    y[0, 0, 0, 0], y[0, 1, 0, 0] = 1.0, 1.0
    cos = cd.cosine(x, y)
    assert cos[0].item() == pytest.approx(1 / math.sqrt(2)) and math.isnan(cos[1].item())  # y[1] = 0
    assert cd.nanmean(cos) == pytest.approx(1 / math.sqrt(2))
    x[0, 3] = 5.0  # channel 3 never reaches a render: it does not count
    assert cd.cosine(x, y)[0].item() == pytest.approx(1 / math.sqrt(2))
    same = torch.ones(5, 2, 4, 2, 2)
    assert torch.equal(cd.spread(same), torch.zeros(2))
    two = torch.stack([torch.zeros(2, 4, 2, 2), torch.ones(2, 4, 2, 2)])  # std 0.5 at every visible entry
    assert torch.allclose(cd.spread(two), torch.full((2,), 0.5, dtype=torch.float64))
    # 4 draws, 2 views, 3 variants: view 0 favours variant 1 three times out of four, view 1 always variant 2
    shares = torch.tensor([[[0.1, 0.8, 0.1], [0, 0, 1]], [[0.1, 0.8, 0.1], [0, 0, 1]],
                           [[0.7, 0.2, 0.1], [0, 0, 1]], [[0.1, 0.8, 0.1], [0, 0, 1]]])
    assert cd.favoured_agreement(shares).tolist() == [0.75, 1.0]


def test_the_prior_commits_to_the_variant_at_low_noise_and_blends_at_high(cd, guidances, prompts, scene):
    g, settings = guidances["sds"], scene[0]
    train = g.models.pipe.unet.train_set
    i = int((train.variant_index == 1).nonzero()[0])  # a checkered ball's render, seen from its own camera
    assert train.object_index[i] == 0
    one = cd.guidance_cameras(settings, {k: getattr(train, k)[i:i + 1] for k in ("elevation", "azimuth", "distance")})
    render = g.unet.means[i].reshape(1, *cd.latent_shape(g, 1)[1:]).float()
    for t, expect in ((20, [0.0, 1.0]), (999, [0.5, 0.5])):
        a = g.alphas_cumprod[t]
        shares = cd.variant_shares(g, a.sqrt() * render, torch.tensor([t]), prompts["ball"], one)
        assert shares.shape == (1, 2) and shares.sum().item() == pytest.approx(1.0)
        assert shares[0].tolist() == pytest.approx(expect, abs=0.05)


def test_oversmoothing_measures_of_a_perfect_render(cd, guidances, prompts, scene):
    from threestudio_lucid.toy_world.evaluate import interior

    g, (_, views, cams, truths) = guidances["sds"], scene
    variants = {v: t["rgb"] for v, t in truths.items()}
    mask = interior(truths["checkered"]["alpha"][..., 0] > 0.5, margin=1)
    n = len(views["azimuth"])
    train = g.models.pipe.unet.train_set
    near = cd.near_view_mask(train, views, 45.0, object_index=0)
    # held-out azimuths 45, 165, 285 at elevation 15; training azimuths 0, 90, 180, 270 at elevations 0 and 15.
    # Within 45 degrees: 45 -> 0 and 90 at elevation 15 (43.4 deg; 46.9 at elevation 0); 165 -> 180 at both
    # elevations (14.5 and 21 deg); 285 -> 270 at both. Two renders per view and variant, the penguin's left out
    assert near.sum(1).tolist() == [4, 4, 4] and not near[:, train.object_index == 1].any()
    m = cd.oversmoothing_measures(g, variants["checkered"], prompts["ball"], cams, ["checkered"] * n, variants,
                                  variants["checkered"], mask, near, n_timesteps=2, n_draws=2, seed=0)
    assert m["input_sharpness"] == pytest.approx(1.0)  # the truth's own latent, against itself
    assert math.isnan(m["cos_variant"])  # the render is the variant: no direction to it
    # a perfect render's markings: moving toward the blend is moving against them, and the split is exact
    assert m["cos_texture"] == pytest.approx(-m["cos_blend"], abs=1e-6)
    assert list(m["by_t"]) == [20, 980] and m["spread"] >= 0 and 0.5 <= m["share_max"] <= 1
    assert 0.5 <= m["agreement"] <= 1 and m["view_agreement"] in (pytest.approx(2 / 3), 1.0)
    assert 0 <= m["share_view"] <= 1 and m["favoured_is_nearest"] in (0, pytest.approx(1 / 3), pytest.approx(2 / 3), 1)
    assert m["by_t"][20]["share_view"] > 0.9  # at low noise the prior reads a perfect render as its own view
    assert set(m["split"]) == {"cos_blend", "cos_texture"}
    assert m["expected_targets"][20].shape == variants["checkered"].shape


def test_janus_measures_on_the_true_back_and_the_split_of_esd(cd, guidances, prompts, scene):
    settings = scene[0]
    views = cd.held_out_views(settings, "penguin")
    back = cd.back_view_mask(settings, views["azimuth"])
    assert back.tolist() == [False, True, False]  # held-out azimuths 45, 165, 285: 165 is a back view
    bviews = {k: v[back] for k, v in views.items()}
    cams = cd.guidance_cameras(settings, bviews)
    refs = cd.janus_references(settings, "penguin", "plain", bviews)
    assert not torch.allclose(refs["back"], refs["front"])
    sds = cd.janus_measures(guidances["sds"], refs["back"], prompts["penguin"], cams, refs, 2, 2, 0)
    u = sds["update"]
    assert math.isnan(u["cos_back"]) and u["cos_front"] == pytest.approx(u["cos_axis"])  # z is the back itself
    assert "pretrained" not in sds and "step_ratio" not in sds
    esd = cd.janus_measures(guidances["esd"], refs["front"], prompts["penguin"], cams, refs, 2, 2, 0)
    assert math.isnan(esd["update"]["cos_front"]) and esd["pretrained"]["relative"] == pytest.approx(1.0)
    assert esd["pretrained"]["cos_pretrained"] == pytest.approx(1.0)
    assert esd["step_ratio"] > 0 and 0 < esd["camera_effect"] < 1
    assert set(esd["by_t"]) == {20, 980} and "estimator_free cos_axis" in esd["split"]


def test_missing_runs_are_named_with_the_command_that_makes_them(cd, tmp_path, capsys):
    out = tmp_path / "claims-benchmark"
    assert cd.main(["--out", str(out), "--report", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"missing (1):\n  {out}\n" in err and "`python scripts/claims_benchmark.py`" in err
    # the folder without some runs: every missing part is named, the runs' and the worlds'
    trial = out / "lucid-sds-toy" / "multimodal-sds-s0"
    (trial / "ckpts").mkdir(parents=True)
    (trial / "ckpts" / "last.ckpt").write_bytes(b"")
    (trial / "configs").mkdir()
    (trial / "configs" / "parsed.yaml").write_text(
        f"system:\n  guidance:\n    pretrained_model_name_or_path: {tmp_path / 'no-world'}\n")
    assert cd.main(["--out", str(out), "--report", str(tmp_path / "r"), "--seeds", "0"]) == 2
    err = capsys.readouterr().err
    assert "missing (8):" in err and str(tmp_path / "no-world") in err
    assert "lucid-ism-toy/multimodal-ism-s0/ckpts/last.ckpt" in err and "multimodal-sds-s0/ckpts" not in err
    assert "lucid-esd-toy/biased-esd-1-s0/ckpts/last.ckpt" in err
    assert "--seeds 5" in cd.missing_message(["x"], [5]) and "--seeds" not in cd.missing_message(["x"], [0, 2])
    assert not (tmp_path / "r.md").exists()


def test_numbers_over_seeds(cd):
    assert cd.fmt([0.1, 0.3]) == "0.20 ± 0.14" and cd.fmt([0.25], 3) == "0.250"
    assert cd.fmt([float("nan")]) == "n/a" and cd.fmt([None, 0.5]) == "0.50"
    results = [{"janus": {"methods": {"vsd": {"update": {"cos_axis": v}}}}} for v in (0.1, 0.3)]
    assert cd.Seeds(results).janus("vsd", "update", "cos_axis") == [0.1, 0.3]
    assert math.isnan(cd.Seeds(results).janus("sds", "update", "cos_axis")[0])


def janus_result(cd, true_back_axis, vsd_p_axis, vsd_l_axis, entropy_axis):
    by_t = {20: {"update": {"cos_axis": 0.0}}, 980: {"update": {"cos_axis": true_back_axis}}}
    term = lambda axis, **kw: {"cos_axis": axis, "cos_back": 0.3, "cos_front": 0.2, "relative": 1.2,  # noqa: E731
                               "cos_pretrained": -0.3, **kw}
    vsd = {"pretrained": term(vsd_p_axis), "estimator": term(vsd_l_axis), "entropy": term(entropy_axis, relative=0.1),
           "update": term(vsd_p_axis + vsd_l_axis), "step_ratio": 4.0, "camera_effect": 0.05}
    return [{"janus": {"methods": {cd.TRUE_BACK: {"update": {"cos_axis": true_back_axis}, "by_t": by_t}, "vsd": vsd}}}]


def test_janus_conclusions_turn_with_the_numbers(cd):
    text = " ".join(cd.janus_conclusions(cd.Seeds(janus_result(cd, 0.6, 0.0, -0.2, 0.3))))
    assert "The world exposes the bias ESD blames" in text and "more at high noise" in text
    assert "it is the estimator term that keeps VSD's backs off the front" in text
    assert "differ by 0.050 (VSD)" in text and "direction that raises Janus" in text
    text = " ".join(cd.janus_conclusions(cd.Seeds(janus_result(cd, -0.2, 0.3, 0.1, -0.3))))
    assert "exposes" not in text and "less at high noise" in text
    assert "keeps VSD's backs off the front" not in text and "does not raise Janus" in text
