"""The structure scores (``toy_world/structure_metrics.py``): the bands and correlations on hand-made
images, invariance to a brightness / contrast change on rendered assets, the back-view cameras, the
diversities and fractions of a reference."""
import math

import pytest
import torch

from threestudio_lucid.toy_world import structure_metrics as sm
from threestudio_lucid.toy_world.dataset import ToyWorldSettings, eval_cameras, training_grid, view_direction_index
from threestudio_lucid.toy_world.objects import get_variant
from threestudio_lucid.toy_world.positive_controls import blend, blurred, shifted, truth, two_faced_object

BALL = dict(objects=["ball"], variants=["striped", "spotted", "checkered"])
SCORES = ("identity", "sharpness", "consistency", "view_diversity", "janus", "back_match")


def checks(size=16):
    """A full-coverage checkerboard [1,size,size,3] with its alpha."""
    c = ((torch.arange(size)[:, None] // 2 + torch.arange(size)[None] // 2) % 2).float()
    return c[None, ..., None].expand(1, size, size, 3).clone(), torch.ones(1, size, size, 1)


def test_bands_of_a_flat_object_are_zero_and_an_offset_cancels():
    rgb, alpha = checks()
    alpha[:, :, :3] = 0.0  # a strip of background: it must not leak into the bands
    rgb = torch.where(alpha > 0, rgb, torch.ones_like(rgb))
    b = sm.bands(rgb, alpha)
    assert not b["support"][:, :, :4].any() and b["support"][:, 4:-1, 4:-1].all()
    assert float(b["structure"].abs().max()) > 0.1
    flat = sm.bands(torch.where(alpha > 0, torch.full_like(rgb, 0.3), rgb), alpha)
    assert float(flat["structure"].abs().max()) < 1e-6 and float(flat["fine"].abs().max()) < 1e-6
    moved = sm.bands(torch.where(alpha > 0, 0.5 * rgb + 0.2, rgb), alpha)
    assert torch.allclose(moved["structure"], 0.5 * b["structure"], atol=1e-6)


def test_object_colours_undo_the_compositing_over_the_background():
    colour = torch.tensor([0.2, 0.4, 0.6])
    alpha = torch.tensor([1.0, 0.75, 0.25, 0.0]).reshape(1, 1, 4, 1)
    bg = torch.tensor([1.0, 0.9, 0.8])
    rgb = alpha * colour + (1 - alpha) * bg
    out = sm.object_colours(rgb, alpha, bg.tolist())[0, 0]
    assert torch.allclose(out[:3], colour.expand(3, 3), atol=1e-6) and torch.allclose(out[3], bg)


def test_ncc_is_scale_free_and_zero_without_structure():
    rgb, alpha = checks()
    x = sm.bands(rgb, alpha)["structure"]
    region = sm.comparison_region(alpha, alpha)
    assert sm.ncc(x, x, region) == pytest.approx(1.0)
    assert sm.ncc(3.0 * x, x, region) == pytest.approx(1.0) and sm.ncc(-x, x, region) == pytest.approx(-1.0)
    assert sm.ncc(torch.zeros_like(x), x, region) == 0.0
    assert sm.ncc(1e-6 * x, x, region) == 0.0  # below the structure floor: rounding noise is no structure
    assert sm.structure_distance(x, x) == 0.0 and sm.structure_distance(x, -x) == pytest.approx(2.0)
    assert sm.structure_distance(x, torch.zeros_like(x)) == 1.0
    assert sm.structure_distance(torch.zeros_like(x), torch.zeros_like(x)) == 0.0


@pytest.fixture(scope="module")
def ball_world():
    return ToyWorldSettings(**BALL)


@pytest.fixture(scope="module")
def penguin_world():
    return ToyWorldSettings(objects=["penguin"], variants=2)


def test_every_structure_score_is_unchanged_by_a_brightness_and_contrast_change(ball_world, penguin_world):
    """``a c + b`` of the object's colours, several a > 0 and b: every score within 1e-4 of the asset's own."""
    spotted = get_variant("ball", "spotted")
    balls, penguins = {}, {}  # each world's truths, rendered once
    assets = [
        (ball_world, balls, "ball", blurred(ball_world, spotted, 3, balls), ("views",)),
        (ball_world, balls, "ball", blend(ball_world, [get_variant("ball", v) for v in BALL["variants"]], balls),
         ("views",)),
        (penguin_world, penguins, "penguin",
         truth(penguin_world, two_faced_object(get_variant("penguin", "african")), penguins), ("views", "janus")),
    ]
    for settings, cache, key, render, parts in assets:
        base = sm.score_structure(render, settings, key, parts=parts, cache=cache)
        for a, b in ((0.25, 0.35), (0.6, -0.3), (3.0, -0.4)):
            moved = sm.score_structure(shifted(render, a, b, settings.background), settings, key, parts=parts,
                                       cache=cache)
            assert moved["variant"] == base["variant"] and moved["view_variants"] == base["view_variants"]
            for score in SCORES:
                if score in base and not (isinstance(base[score], float) and math.isnan(base[score])):
                    assert moved[score] == pytest.approx(base[score], abs=1e-4), (key, a, b, score)
            for v, x in base["identity_by_variant"].items():
                assert moved["identity_by_variant"][v] == pytest.approx(x, abs=1e-4)


def test_back_cameras_are_held_out_back_views_at_three_elevations(ball_world):
    for settings in (ball_world, ToyWorldSettings(objects=["penguin"], n_azimuths=8)):
        cams = sm.back_cameras(settings)
        assert cams["azimuth"].numel() >= 6 and len(set(cams["elevation"].tolist())) == 3
        directions = view_direction_index(cams["elevation"], cams["azimuth"], settings.front_threshold,
                                          settings.back_threshold, settings.overhead_threshold)
        assert (directions == 2).all()  # every one a back view by the prompt processor's rule
        train = training_grid(settings)
        seen = {(round(float(e), 3), round(float(a) % 360, 3)) for e, a in zip(train["elevation"], train["azimuth"])}
        assert not any((round(float(e), 3), round(float(a) % 360, 3)) in seen
                       for e, a in zip(cams["elevation"], cams["azimuth"]))
        assert torch.equal(cams["distance"], torch.full_like(cams["elevation"], settings.camera_distances[0]))
    default = sm.back_cameras(ball_world)
    assert sorted(set(default["azimuth"].tolist())) == [157.5, 172.5, 187.5, 202.5]
    assert sorted(set(default["elevation"].tolist())) == [0.0, 15.0, 30.0]
    assert eval_cameras(ball_world)["azimuth"].numel() == 8 * 3  # the held-out set the evaluator uses is as it was
    with pytest.raises(ValueError, match="overhead threshold"):
        sm.back_cameras(ball_world, elevation_offsets=(0.0, 60.0))


def test_the_second_front_is_the_view_from_the_opposite_camera_unmirrored(penguin_world):
    """A two-faced penguin seen from behind is the front seen from the opposite camera as it is; the
    evaluator's older Janus template mirrors it, which off the exact back is farther from a real second
    face than the true back is."""
    cams = {"elevation": torch.tensor([15.0, 15.0]), "azimuth": torch.tensor([157.5, 202.5]),
            "distance": torch.tensor([4.0, 4.0])}  # the evaluator's two back views
    plain = get_variant("penguin", "plain")
    two = sm.render_truth(penguin_world, two_faced_object(plain), **cams)["rgb"]
    opposite = sm.render_truth(penguin_world, plain, **dict(cams, azimuth=cams["azimuth"] + 180))["rgb"]
    back = sm.render_truth(penguin_world, plain, **cams)["rgb"]
    err = {name: float((two - x).abs().mean()) for name, x in
           (("opposite", opposite), ("mirrored", opposite.flip(2)), ("back", back))}
    assert err["opposite"] < 0.5 * err["back"] < err["mirrored"], err


def test_diversity_of_views_and_seeds(penguin_world):
    cams = sm.held_out_cameras(penguin_world, "penguin")
    t = sm.render_truth(penguin_world, get_variant("penguin", "plain"), **cams)
    assert sm.view_diversity(t["rgb"], t["alpha"]) > 0.8
    same = sm.render_truth(penguin_world, get_variant("penguin", "plain"), **dict(cams, azimuth=torch.zeros(8)))
    assert sm.view_diversity(same["rgb"], same["alpha"]) == pytest.approx(0.0, abs=1e-6)
    other = sm.render_truth(penguin_world, get_variant("penguin", "african"), **cams)
    assert sm.seed_diversity([t["rgb"], t["rgb"]], [t["alpha"], t["alpha"]]) == 0.0
    assert 0.0 < sm.seed_diversity([t["rgb"], other["rgb"]], [t["alpha"], other["alpha"]]) < 0.5
    with pytest.raises(ValueError, match="at least two"):
        sm.seed_diversity([t["rgb"]], [t["alpha"]])


def test_fraction_of_a_reference():
    assert sm.fraction_of_reference(0.4, 0.8) == pytest.approx(0.5)
    assert sm.fraction_of_reference(0.55, 0.98, floor=-0.02) == pytest.approx(0.57 / 1.0)  # Janus: of a second face
    assert math.isnan(sm.fraction_of_reference(0.4, 0.0)) and math.isnan(sm.fraction_of_reference(float("nan"), 1.0))


def test_score_structure_adds_fractions_of_a_reference(ball_world):
    spotted = get_variant("ball", "spotted")
    reference = sm.score_structure(blurred(ball_world, spotted, 3), ball_world, "ball", parts=("views",))
    out = sm.score_structure(blurred(ball_world, spotted, 5), ball_world, "ball", reference=reference, parts=("views",))
    assert out["sharpness_fraction"] == pytest.approx(out["sharpness"] / reference["sharpness"])
    assert 0.5 < out["sharpness_fraction"] < 1.0 and out["identity_fraction"] < 1.0
    assert out["n_views"] == 8 and "janus" not in out
    with pytest.raises(ValueError, match="unknown"):
        sm.score_structure(truth(ball_world, spotted), ball_world, "ball", parts=("views", "colours"))
