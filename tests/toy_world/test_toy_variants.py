"""Appearance variants of the toy objects and the settings of the multi-modal, biased and
view-word-free worlds: variants differ, carry high-frequency detail and keep the objects' symmetry;
every new setting validates with one clear error; a plain world keeps its render key and renders."""
import math

import pytest
import torch

from threestudio_lucid.toy_world import dataset as toy_dataset
from threestudio_lucid.toy_world import objects as toy
from threestudio_lucid.toy_world.dataset import ToyWorldSettings, caption_table, load_render_sets, render_sets
from threestudio_lucid.toy_world.evaluate import high_frequency_energy, interior
from threestudio_lucid.toy_world.objects import VARIANTS, get_variant, orbit_c2w, render_object, variant_names

ALL_VARIANTS = [(key, name) for key, variants in VARIANTS.items() for name in variants]
TEXTURED = [("cube", "striped"), ("cube", "spotted"), ("cube", "checkered"), ("ball", "striped"), ("ball", "spotted"),
            ("ball", "checkered"), ("cone", "striped"), ("cone", "spotted"), ("cone", "checkered"),
            ("donut", "sprinkled"), ("penguin", "african")]


def render(obj, elevations, azimuths, size=32, distance=4.0):
    el, az = torch.tensor(elevations, dtype=torch.float32), torch.tensor(azimuths, dtype=torch.float32)
    c2w = orbit_c2w(el, az, torch.full_like(el, distance))
    return render_object(obj, c2w, torch.full_like(el, math.radians(35.0)), size, size)


# ------------------------------------------------------------------------------------------------
# the catalogue
# ------------------------------------------------------------------------------------------------
def test_every_object_has_plain_first_and_several_variants_under_its_caption():
    for key, variants in VARIANTS.items():
        names = variant_names(key)
        assert names[0] == "plain" and len(names) >= 3, (key, names)
        assert get_variant(key) is toy.OBJECTS[key] and get_variant(toy.OBJECTS[key].name, names[1]) is variants[names[1]]
        for name, obj in variants.items():
            assert (obj.key, obj.name, obj.variant) == (key, toy.OBJECTS[key].name, name) and obj.description
    with pytest.raises(KeyError, match="no variant 'polka'.*plain, striped"):
        get_variant("cube", "polka")


@pytest.mark.parametrize("key", list(VARIANTS))
def test_variants_of_an_object_render_differently_and_deterministically(key):
    views = ([10.0, 20.0, 40.0], [30.0, 200.0, 300.0])
    images = {name: render(obj, *views)["rgb"] for name, obj in VARIANTS[key].items()}
    names = list(images)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert (images[a] - images[b]).abs().max() > 0.3, (key, a, b)  # not a shade apart: a marking
    for name, obj in VARIANTS[key].items():
        again = render(obj, *views)
        assert torch.equal(again["rgb"], images[name])
        chunked = render_object(obj, orbit_c2w(torch.tensor([10.0]), torch.tensor([30.0]), torch.tensor([4.0])),
                                torch.tensor([math.radians(35.0)]), 32, 32, chunk_rays=101)
        assert torch.equal(chunked["rgb"][0], images[name][0])


@pytest.mark.parametrize("key,name", TEXTURED)
def test_textured_variants_carry_high_frequency_detail(key, name):
    plain, marked = render(get_variant(key), [15.0] * 4, [0.0, 90.0, 180.0, 270.0], 64), render(
        get_variant(key, name), [15.0] * 4, [0.0, 90.0, 180.0, 270.0], 64)
    region = interior(marked["alpha"][..., 0] > 0.5)
    assert torch.equal(plain["alpha"], marked["alpha"])  # markings change colours, not the shape
    detail = high_frequency_energy(marked["rgb"], region)
    assert detail > 1.5 * high_frequency_energy(plain["rgb"], region), (key, name)


@pytest.mark.parametrize("key,name", ALL_VARIANTS)
def test_variants_are_mirror_symmetric_and_fit_their_bounding_radius(key, name):
    obj = get_variant(key, name)
    a, b = render(obj, [20.0], [35.0]), render(obj, [20.0], [-35.0])
    assert torch.allclose(a["rgb"][0].flip(1), b["rgb"][0], atol=1e-5) and torch.equal(a["alpha"][0].flip(1), b["alpha"][0])
    el, az = [-40.0, 0.0, 30.0, 80.0], [0.0, 100.0, 200.0, 300.0]
    tight = render(obj, el, az, 48, distance=2.0)
    loose = render(toy.ToyObject(obj.key, obj.name, obj.primitives, bounding_radius=5.0), el, az, 48, distance=2.0)
    assert torch.equal(tight["alpha"], loose["alpha"]) and obj.bounding_radius <= 0.6


def test_patterns_paint_where_their_formula_says():
    points = torch.tensor([[0.0, 0.05, 0.05], [0.0, -0.05, 0.15], [0.0, 0.0, -0.05], [0.2, 0.2, 0.2], [0.0, 0.27, 0.0]])
    base = torch.zeros(5, 3)
    white = (1.0, 1.0, 1.0)
    on = lambda pattern: pattern.paint(points, base)[:, 0] == 1.0  # noqa: E731
    # stripes: frac(z / 0.2) < 0.5 -> z = 0.05 yes, 0.15 no, -0.05 (frac 0.75) no, 0.2 (frac 0) yes, 0 yes
    assert on(toy.Stripes(white, 0.2)).tolist() == [True, False, False, True, True]
    # checks of 0.2 centred on the origin (y folded): cell index sums 0, 1, 0, 3, 1
    assert on(toy.Checker(white, 0.2)).tolist() == [False, True, False, True, True]
    # spots: within 0.06 of the lattice of 0.2 (y folded); distances 0.071, 0.071, 0.05, 0, 0.07
    assert on(toy.Spots(white, 0.2, 0.06)).tolist() == [False, False, True, True, False]
    assert on(toy.Band(white, 0.0, 0.1)).tolist() == [True, False, False, False, True]
    with pytest.raises(ValueError, match="axis"):
        toy.Stripes(white, 0.2, axis="w")


# ------------------------------------------------------------------------------------------------
# settings
# ------------------------------------------------------------------------------------------------
def test_a_plain_world_keeps_its_render_key():
    # the keys before variants, view distributions and caption modes existed (RENDERER_VERSION 1): the
    # caches of plain worlds stay valid; update only with a deliberate RENDERER_VERSION bump
    assert toy_dataset.RENDERER_VERSION == 1
    assert ToyWorldSettings().render_key() == "25f76eacccffdd19"
    small = ToyWorldSettings(objects=["cube", "penguin"], image_size=32, n_azimuths=8, elevations_deg=[0.0, 30.0, 70.0],
                             n_eval_views=4)
    assert small.render_key() == "f162a1ae3d6d4cd6"
    # the same renders under other spellings or another caption mode share the key
    for same in (dict(variants=["plain"]), dict(variants=["1"]), dict(caption_views=False), dict(front_repeats=3)):
        assert ToyWorldSettings(**same).render_key() == ToyWorldSettings().render_key(), same
    for other in (dict(variants=2), dict(variants=["cube:striped"]), dict(view_distribution="front_heavy")):
        assert ToyWorldSettings(**other).render_key() != ToyWorldSettings().render_key(), other
    assert ToyWorldSettings(view_distribution="front_heavy", front_repeats=4).render_key() != ToyWorldSettings(
        view_distribution="front_heavy").render_key()


def test_variants_select_by_count_all_or_name():
    objects = ["cube", "penguin"]
    assert ToyWorldSettings(objects=objects).variant_table == {"cube": ["plain"], "penguin": ["plain"]}
    assert ToyWorldSettings(objects=objects, variants=2).variant_table == {"cube": ["plain", "striped"],
                                                                           "penguin": ["plain", "african"]}
    assert ToyWorldSettings(objects=objects, variants="all").variant_table == {o: list(variant_names(o)) for o in objects}
    named = ToyWorldSettings(objects=objects, variants=["plain", "cube:checkered", "penguin:emperor", "cube:striped"])
    assert named.variant_table == {"cube": ["plain", "striped", "checkered"], "penguin": ["plain", "emperor"]}
    # an object no name covers stays plain; catalogue order, whatever the order given
    assert ToyWorldSettings(objects=objects, variants=["cube:spotted"]).variant_table == {"cube": ["spotted"],
                                                                                         "penguin": ["plain"]}
    assert ToyWorldSettings(objects=["cube", "ball"], variants=["checkered", "striped"]).variants_of("ball") == [
        "striped", "checkered"]
    # the command line's spellings
    assert ToyWorldSettings(variants=["3"]).variants == 3 and ToyWorldSettings(variants=["all"]).variants == "all"
    assert ToyWorldSettings(variants="2").variants == 2
    assert not ToyWorldSettings().is_multimodal and ToyWorldSettings(variants=2).is_multimodal
    s = ToyWorldSettings(objects=objects, variants=["cube:striped"], view_distribution="front_heavy", front_repeats=5,
                         caption_views=False)
    assert ToyWorldSettings.from_dict(s.to_dict()) == s


@pytest.mark.parametrize(
    "settings,message",
    [
        (dict(variants=0), r"variants: got 0; use a count 1\.\.3, 'all', or variant names"),
        (dict(variants=4), r"variants: got 4, but donut has fewer; use a count 1\.\.3"),
        (dict(variants=5), r"variants: got 5, but ball, cone, donut, penguin have fewer; use a count 1\.\.3"),
        (dict(variants="many"), r"variants: got 'many'; use a count"),
        (dict(variants=True), r"variants: got True; use a count"),
        (dict(variants=[]), r"variants: got \[\]; use a count"),
        (dict(variants=["striped"]), r"variants: 'striped' is not a variant of donut, penguin; .*penguin: plain, african"),
        (dict(variants=["cube:polka"]), r"variants: 'cube:polka' is not a variant of cube;"),
        (dict(variants=["teapot:plain"]), r"variants: 'teapot:plain' names 'teapot', which is not in this world;"),
        (dict(objects=["cube"], variants=["penguin:african"]), r"'penguin:african' names 'penguin', which is not in"),
        (dict(variants=["plain", "plain"]), r"variants: got \['plain', 'plain'\], which repeats a name"),
        (dict(view_distribution="front"), r"view_distribution: got 'front'; use one of uniform, front_heavy"),
        (dict(front_repeats=0), r"front_repeats: got 0; use an integer >= 1"),
        (dict(front_repeats=2.5), r"front_repeats: got 2\.5; use an integer >= 1"),
        (dict(caption_views="no"), r"caption_views: got 'no'; use true or false"),
    ],
)
def test_bad_world_settings_are_one_clear_error(settings, message):
    with pytest.raises(ValueError, match=message):
        ToyWorldSettings(**settings)


# ------------------------------------------------------------------------------------------------
# render sets
# ------------------------------------------------------------------------------------------------
def small(**kw):
    return ToyWorldSettings(**{**dict(objects=["ball", "cube"], image_size=8, n_azimuths=8, elevations_deg=[0.0, 30.0, 70.0],
                                      n_eval_views=2), **kw})


def test_a_multimodal_world_renders_every_variant_of_every_view_and_keeps_the_plain_renders(toy_cache_dir):
    plain_train, plain_eval = load_render_sets(small(), toy_cache_dir)
    train, held_out = load_render_sets(small(variants=3), toy_cache_dir)
    assert len(train) == 3 * len(plain_train) and len(held_out) == 3 * len(plain_eval)
    for rs, plain in ((train, plain_train), (held_out, plain_eval)):
        assert torch.equal(rs.subset(rs.variant_index == 0).rgb, plain.rgb)  # plain first, unchanged
        for k in range(2):
            for v in range(3):
                part = rs.subset((rs.object_index == k) & (rs.variant_index == v))
                assert torch.equal(part.azimuth, plain.subset(plain.object_index == k).azimuth)
        assert not torch.equal(rs.subset(rs.variant_index == 1).rgb, plain.rgb)
    assert train.variant_name(int((train.variant_index == 2).nonzero()[0])) == "spotted"
    assert torch.equal(train.of_variant("cube", "striped").rgb, train.subset((train.object_index == 1) & (train.variant_index == 1)).rgb)
    # same captions for every variant: the caption's renders hold several appearances
    captions, members = caption_table(train)
    cube = members[captions.index("a red cube, front view")]
    assert set(train.variant_index[cube].tolist()) == {0, 1, 2}
    assert len(captions) == 1 + 2 * (1 + 2 * 4)


def test_caches_written_before_variants_load_as_plain(tmp_path):
    settings = ToyWorldSettings(objects=["cone"], image_size=8, n_azimuths=3, elevations_deg=[10.0], n_eval_views=2)
    train, held_out = render_sets(settings)
    old = {f: t for f, t in train.tensors().items() if f != "variant_index"}
    old_eval = {f: t for f, t in held_out.tensors().items() if f != "variant_index"}
    torch.save({"version": toy_dataset.RENDERER_VERSION, "settings": settings.to_dict(), "train": old, "eval": old_eval},
               tmp_path / f"{settings.render_key()}.pt")
    loaded, _ = load_render_sets(settings, str(tmp_path))
    assert torch.equal(loaded.variant_index, torch.zeros(3, dtype=torch.long)) and torch.equal(loaded.rgb, train.rgb)
