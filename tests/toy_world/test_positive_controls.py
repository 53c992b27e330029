"""Positive controls (``toy_world/positive_controls.py``): the structure scores separate a two-faced
penguin from the true back, a blend and blurs from one variant, flat discs from any variant or face, and
score a brightness change as the truth; the colour-based scores of ``evaluate`` do not, and
``separation`` says so."""
import pytest
import torch

from threestudio_lucid.toy_world.evaluate import score_renders
from threestudio_lucid.toy_world.objects import get_variant
from threestudio_lucid.toy_world.positive_controls import (
    GREYS,
    METRICS,
    binomial_blur,
    separations,
    two_faced_object,
)
from threestudio_lucid.toy_world.structure_metrics import held_out_cameras

FLAT = ["mean-colour disc"] + [f"grey {g} disc" for g in GREYS]


@pytest.fixture(scope="module")
def seps():
    return separations()  # every metric's controls at the benchmark's 64 px, scored once per control set


@pytest.mark.parametrize("metric", list(METRICS))
def test_each_structure_metric_separates_its_controls(seps, metric):
    assert seps[metric].sees, seps[metric].summary()


def test_a_two_faced_penguin_is_far_from_the_true_back_and_flat_discs_are_no_face(seps):
    s = {name: scores["janus"] for name, scores in seps["janus"].scores.items()}
    assert s["two-faced"] > 0.9 and abs(s["truth"]) < 0.05 and s["two-faced"] - s["truth"] > 0.9
    assert s["shifted"] == pytest.approx(s["truth"], abs=1e-4)
    assert all(s[n] == 0.0 for n in FLAT)  # no structure, no face: grey levels are not ordered
    back = {name: scores["back_match"] for name, scores in seps["janus"].scores.items()}
    assert back["truth"] == pytest.approx(1.0) and back["two-faced"] < 0.1
    assert seps["janus"].scores["truth"]["n_back_views"] == 12


def test_blends_blurs_and_flat_discs_on_identity_sharpness_and_consistency(seps):
    s = seps["identity"].scores
    assert s["truth"]["variant"] == "spotted" and s["truth"]["identity"] == pytest.approx(1.0)
    assert max(s["blend"]["identity_by_variant"].values()) < 0.75  # about 1/sqrt(3) of every variant
    assert s["blur 3x3"]["variant"] == "spotted" and s["blur 3x3"]["identity"] > 0.9
    assert s["truth"]["sharpness"] - s["blur 3x3"]["sharpness"] > 0.15 > 0.0
    assert s["blur 3x3"]["sharpness"] - s["blur 5x5"]["sharpness"] > 0.05
    assert s["truth"]["sharpness"] - s["blend"]["sharpness"] > 0.3
    for n in FLAT:  # the flat disc in the spotted variant's mean colour "committed" to it
        assert s[n]["variant"] is None and s[n]["identity"] == 0.0 and s[n]["consistency"] == 0.0
        assert s[n]["view_variants"] == [None] * 8 and s[n]["sharpness"] == 0.0
    for score in ("identity", "sharpness", "consistency"):
        assert s["shifted"][score] == pytest.approx(s["truth"][score], abs=1e-4)
    v = seps["view_diversity"].scores
    assert v["truth"]["view_diversity"] - v["collapsed"]["view_diversity"] > 0.9


def test_the_two_faced_object_copies_the_front_parts_onto_the_back():
    plain = get_variant("penguin", "plain")
    two = two_faced_object(plain)
    assert len(two.primitives) == len(plain.primitives) + 6  # belly, two eyes, beak, two feet
    assert sorted(round(float(p.center[0]), 2) for p in two.primitives[len(plain.primitives):]) == [
        -0.22, -0.16, -0.16, -0.1, -0.1, -0.08]
    assert len(plain.primitives) == 8  # the catalogue's penguin is untouched
    with pytest.raises(ValueError, match="no ellipsoid in front"):
        two_faced_object(get_variant("ball", "plain"))


def test_binomial_blur_keeps_a_flat_image_and_the_mean():
    x = torch.rand(2, 9, 9, 3, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(binomial_blur(torch.full_like(x, 0.4), 5), torch.full_like(x, 0.4))
    assert float(binomial_blur(x, 3)[:, 2:-2, 2:-2].std()) < float(x.std())
    with pytest.raises(ValueError, match="3 or 5"):
        binomial_blur(x, 4)


def colour_scores(render, settings, key):
    """``evaluate.score_renders`` (PSNR-nearest variant, Laplacian-energy sharpness, squared-error Janus) on
    the held-out views, as a scorer for ``separation``."""
    cams = held_out_cameras(settings, key)
    rgb, alpha = render(cams["elevation"], cams["azimuth"], cams["distance"])
    out = score_renders(settings, key, rgb, alpha, cams["elevation"], cams["azimuth"], cams["distance"])
    out.setdefault("variant", None)
    return out


def test_the_colour_scores_of_the_evaluator_do_not_separate_the_controls(seps):
    old = separations(["sharpness", "consistency", "janus"], scorer=colour_scores)
    for metric, fails in (("sharpness", "brightness"), ("consistency", "flat discs"), ("janus", "flat discs")):
        assert not old[metric].sees, old[metric].summary()
        assert fails in " ".join(r.text for r in old[metric].requirements if not r.passed), old[metric].summary()
        assert seps[metric].sees  # the structure scores, on the same controls, do
