"""The multi-modal scores: nearest variant, PSNR / IoU against it, sharpness and view consistency,
on exact ground truth, on blends and blurs of it, on views stitched from two variants, and through
``evaluate_renderer`` with a real system's renderer."""
import math
import os

import pytest
import torch
import torch.nn.functional as F

from threestudio_lucid import compat
from threestudio_lucid.host.utils.config import load_config
from threestudio_lucid.toy_world.dataset import ToyWorldSettings, eval_cameras
from threestudio_lucid.toy_world.evaluate import (
    evaluate_renderer,
    ground_truth,
    high_frequency_energy,
    interior,
    laplacian,
    score_renders,
    scores_only,
    sharpness,
)

CONFIGS = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "custom", "threestudio-lucid", "configs"))
TEXTURED = ["striped", "spotted", "checkered"]


def cameras(settings, key):
    cams = eval_cameras(settings)
    pick = (cams["object_index"] == settings.objects.index(key)) & (cams["variant_index"] == 0)
    return cams["elevation"][pick], cams["azimuth"][pick], cams["distance"][pick]


@pytest.fixture(scope="module")
def world():
    return ToyWorldSettings(objects=["penguin", "ball"], image_size=32, n_azimuths=8, n_eval_views=4, variants="all")


def test_laplacian_interior_and_sharpness_helpers():
    ramp = torch.arange(8.0)[None, :, None, None].expand(1, 8, 8, 3) / 8  # linear: no curvature
    assert torch.allclose(laplacian(ramp)[:, 1:-1, 1:-1], torch.zeros(1, 6, 6, 3), atol=1e-6)
    dot = torch.zeros(1, 5, 5, 3)
    dot[0, 2, 2] = 1.0
    assert laplacian(dot)[0, 2, 2, 0] == -4.0 and laplacian(dot)[0, 1, 2, 0] == 1.0
    mask = torch.zeros(1, 9, 9, dtype=torch.bool)
    mask[0, 1:8, 1:8] = True  # a 7 x 7 square, one pixel off the border
    inner = interior(mask, margin=2)
    assert inner.sum() == 9 and bool(inner[0, 3:6, 3:6].all())
    assert interior(torch.ones(1, 9, 9, dtype=torch.bool), margin=2).sum() == 25  # the image border is an edge
    checks = (torch.arange(16)[:, None] + torch.arange(16)[None]) % 2
    image = checks[None, ..., None].float().expand(1, 16, 16, 3)
    full = torch.ones(1, 16, 16, dtype=torch.bool)
    assert sharpness(image, full, image, full) == 1.0
    assert sharpness(0.5 * image, full, image, full) == pytest.approx(0.25)  # energy is quadratic
    assert sharpness(torch.full_like(image, 0.5), full, image, full) == 0.0
    assert math.isnan(sharpness(image, full, torch.full_like(image, 0.5), full))  # a truth without detail
    assert high_frequency_energy(image, interior(full)) > 0


@pytest.mark.parametrize("key", ["penguin", "ball"])
def test_exact_ground_truth_scores_perfectly_against_its_own_variant(world, key):
    el, az, d = cameras(world, key)
    exact = ground_truth(world, key, el, az, d)
    smooth = ground_truth(world, key, el, az, d, world.supersample)  # as the world's training renders
    for name in world.variants_of(key):
        result = score_renders(world, key, exact[name]["rgb"], exact[name]["alpha"], el, az, d)
        assert result["variant"] == name and result["psnr"] == float("inf") and result["iou"] == 1.0
        assert result["consistency"] == 1.0 and result["view_variants"] == [name] * 4
        assert result["psnr_by_variant"][name] == float("inf") and result["iou_by_variant"][name] == 1.0
        if key == "penguin":  # the ball's mirrored front is its back: no Janus to tell
            assert result["janus"] == 0.0
        # sharpness is measured against the anti-aliased truth: the world's own renders score 1
        aa = score_renders(world, key, smooth[name]["rgb"], smooth[name]["alpha"], el, az, d)
        assert aa["variant"] == name and aa["sharpness"] == pytest.approx(1.0, abs=1e-6) and aa["psnr"] > 20
        if key == "ball":  # markings all over: every view still tells the variants apart (the penguin's
            assert aa["consistency"] == 1.0  # few-pixel crests and patches drown in the edge differences)


def test_a_blend_of_variants_is_blurrier_than_the_nearest_and_a_blur_is_too():
    settings = ToyWorldSettings(objects=["cube", "ball", "cone"], image_size=64, n_azimuths=8, n_eval_views=8,
                                variants=TEXTURED)
    for key in settings.objects:
        el, az, d = cameras(settings, key)
        truth = ground_truth(settings, key, el, az, d, settings.supersample)
        blend = torch.stack([t["rgb"] for t in truth.values()]).mean(0)
        result = score_renders(settings, key, blend, truth["striped"]["alpha"], el, az, d)
        assert result["sharpness"] < 0.6, (key, result["sharpness"])  # the posterior mean of a mode blend
        assert result["iou"] > 0.9 and 20 < result["psnr"] < 30 and result["consistency"] == 1.0
        # a 3x3 binomial blur of one variant: blurrier still, yet nearest to that variant
        rgb = truth["spotted"]["rgb"].permute(0, 3, 1, 2).reshape(-1, 1, 64, 64)
        kernel = (torch.tensor([1.0, 2.0, 1.0])[:, None] * torch.tensor([1.0, 2.0, 1.0])[None]) / 16
        blurred = F.conv2d(F.pad(rgb, (1, 1, 1, 1), mode="replicate"), kernel[None, None])
        blurred = blurred.reshape(8, 3, 64, 64).permute(0, 2, 3, 1)
        result = score_renders(settings, key, blurred, truth["spotted"]["alpha"], el, az, d)
        assert result["variant"] == "spotted" and result["sharpness"] < 0.6, (key, result)
        # and noise is sharper than the truth
        noisy = (truth["spotted"]["rgb"] + 0.2 * torch.randn(8, 64, 64, 3, generator=torch.Generator().manual_seed(0)))
        assert score_renders(settings, key, noisy.clamp(0, 1), truth["spotted"]["alpha"], el, az, d)["sharpness"] > 1.5


def test_views_stitched_from_two_variants_are_inconsistent(world):
    el, az, d = cameras(world, "ball")
    truth = ground_truth(world, "ball", el, az, d)
    pick = ["striped", "spotted", "striped", "spotted"]  # alternate views
    rgb = torch.stack([truth[v]["rgb"][i] for i, v in enumerate(pick)])
    alpha = torch.stack([truth[v]["alpha"][i] for i, v in enumerate(pick)])
    result = score_renders(world, "ball", rgb, alpha, el, az, d)
    assert result["variant"] == "striped"  # two exact views each: the first in catalogue order wins the tie
    assert result["view_variants"] == pick and result["consistency"] == 0.5
    assert result["psnr"] == float("inf")  # a mean over views with exact ones, as for one variant


def test_views_where_the_variants_look_alike_do_not_count_for_consistency():
    """The African penguin differs from the plain one on its belly only: from behind they look alike."""
    settings = ToyWorldSettings(objects=["penguin"], image_size=32, n_azimuths=8, n_eval_views=4, variants=2)
    el, az, d = cameras(settings, "penguin")  # 22.5, 112.5, 202.5, 292.5 deg
    truth = ground_truth(settings, "penguin", el, az, d)
    alike = (truth["plain"]["rgb"] == truth["african"]["rgb"]).flatten(1).all(1)
    assert alike.tolist() == [False, True, True, False]
    # the African belly in the first view, the plain one in the last: one informative view each
    pick = ["african", "plain", "plain", "plain"]
    rgb = torch.stack([truth[v]["rgb"][i] for i, v in enumerate(pick)])
    result = score_renders(settings, "penguin", rgb, truth["plain"]["alpha"], el, az, d)
    assert result["variant"] == "african"  # its one wrong view shows fewer belly pixels than plain's
    assert result["consistency"] == 0.5  # of the two views that tell the variants apart, not 3 of 4
    assert result["view_variants"] == ["african", "african", "african", "plain"]


def test_a_one_variant_world_keeps_its_scores_and_adds_sharpness_only():
    settings = ToyWorldSettings(objects=["penguin"], image_size=32, n_azimuths=8, n_eval_views=4)
    el, az, d = cameras(settings, "penguin")
    truth = ground_truth(settings, "penguin", el, az, d)["plain"]
    result = scores_only(score_renders(settings, "penguin", truth["rgb"], truth["alpha"], el, az, d))
    assert set(result) == {"object", "psnr", "iou", "janus", "sharpness", "n_views", "azimuths"}
    assert result["psnr"] == float("inf") and result["iou"] == 1.0 and result["janus"] == 0.0


def test_evaluate_renderer_scores_a_system_on_a_multimodal_world(tmp_path_factory, toy_cache_dir, tmp_path, monkeypatch):
    from threestudio_lucid.toy_world.pipeline import build_toy_world, read_toy_world_settings

    world = build_toy_world(tmp_path_factory.mktemp("mm") / "world", objects=["penguin"], image_size=32, n_azimuths=8,
                            elevations_deg=[0.0, 30.0], n_eval_views=4, variants=3, cache_dir=toy_cache_dir)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(os.path.join(CONFIGS, "lucid-sds-toy.yaml"), cli_args=[
        "system.prompt_processor.prompt=a penguin",
        f"system.prompt_processor.pretrained_model_name_or_path={world}",
        f"system.guidance.pretrained_model_name_or_path={world}",
        "system.renderer.backend=auto", "system.geometry.init_num_pts=500",
    ])
    system = compat.find(cfg.system_type)(cfg.system)
    result = evaluate_renderer(system.renderer, world, "a penguin, front view")
    assert result["object"] == "penguin" and result["n_views"] == 4 and result["renders"].shape == (4, 32, 32, 3)
    assert result["variant"] in ("plain", "african", "rockhopper")
    assert set(result["psnr_by_variant"]) == {"plain", "african", "rockhopper"}
    assert result["psnr"] == max(result["psnr_by_variant"].values())
    assert 0.0 <= result["consistency"] <= 1.0 and result["sharpness"] >= 0.0 and 0.0 <= result["janus"] <= 1.0
    settings = read_toy_world_settings(world)
    truth = ground_truth(settings, "penguin", *cameras(settings, "penguin"))[result["variant"]]
    assert torch.equal(result["ground_truth"], truth["rgb"])
