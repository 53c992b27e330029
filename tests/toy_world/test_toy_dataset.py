"""The captioned render set: view captions follow the prompt processor's direction rule, caption
membership, held-out views off the training grid, and the on-disk render cache."""
from types import SimpleNamespace

import pytest
import torch

from threestudio_lucid.host.models.prompt_processors.base import PromptProcessorOutput, make_view_directions
from threestudio_lucid.toy_world import dataset as toy_dataset
from threestudio_lucid.toy_world.dataset import (
    DIRECTION_NAMES,
    ToyWorldSettings,
    caption_table,
    load_render_sets,
    view_captions,
    view_direction_index,
)


def host_direction_index(elevation, azimuth, front=45.0, back=45.0, overhead=60.0):
    cfg = SimpleNamespace(
        front_threshold=front, back_threshold=back, overhead_threshold=overhead, view_dependent_prompt_front=False
    )
    directions = make_view_directions(cfg)
    holder = SimpleNamespace(directions=directions, direction2idx={d.name: i for i, d in enumerate(directions)})
    return PromptProcessorOutput.get_direction_indices(holder, elevation, azimuth, torch.ones_like(elevation))


@pytest.mark.parametrize("thresholds", [(45.0, 45.0, 60.0), (30.0, 60.0, 40.0)])
def test_view_directions_agree_with_the_host_prompt_processor(thresholds):
    front, back, overhead = thresholds
    g = torch.Generator().manual_seed(0)
    elevation = torch.rand(4000, generator=g) * 110 - 20
    azimuth = torch.rand(4000, generator=g) * 1080 - 540  # several turns, negative too
    # and the exact thresholds, where the strict comparisons decide
    edges = torch.tensor([front, -front, 180 - back, back - 180, 180.0, -180.0, 0.0, 360.0])
    elevation = torch.cat([elevation, torch.full((8,), 10.0), torch.full((8,), overhead)])
    azimuth = torch.cat([azimuth, edges, edges])
    ours = view_direction_index(elevation, azimuth, front, back, overhead)
    assert DIRECTION_NAMES == tuple(d.name for d in make_view_directions(SimpleNamespace(
        front_threshold=front, back_threshold=back, overhead_threshold=overhead, view_dependent_prompt_front=False)))
    assert torch.equal(ours, host_direction_index(elevation, azimuth, front, back, overhead))
    assert set(ours.tolist()) == {0, 1, 2, 3}


def test_renders_are_captioned_with_their_object_and_view(toy_pipe):
    train = toy_pipe.unet.train_set
    expected = {(0.0, 0.0): "front", (0.0, 180.0): "back", (30.0, 90.0): "side", (70.0, 0.0): "overhead"}
    for (el, az), direction in expected.items():
        i = int(((train.elevation == el) & (train.azimuth == az) & (train.object_index == 1)).nonzero()[0])
        assert train.captions_of(i) == ("a penguin", f"a penguin, {direction} view", view_captions("a penguin", direction)[1])
    assert view_captions("a red cube", "back") == ("a red cube, back view", "backside view of a red cube")


def test_caption_table_selects_renders_by_caption(toy_pipe):
    train = toy_pipe.unet.train_set
    captions, members = caption_table(train)
    assert captions[0] == "" and bool(members[0].all())
    assert len(captions) == len(set(captions)) == 1 + 2 * (1 + 2 * 4)
    cube = members[captions.index("a red cube")]
    assert torch.equal(cube, train.object_index == 0) and int(cube.sum()) == 8 * 3
    back = members[captions.index("a penguin, back view")]
    assert torch.equal(back, members[captions.index("backside view of a penguin")])
    assert torch.equal(back, (train.object_index == 1) & (train.direction_index == 2))
    # grid: 8 azimuths (0, 45, ...): front 0 (45 is a side view: strict threshold), back 180 -> 1 each
    # at the two non-overhead elevations; overhead: all 8 at 70 deg
    assert int(back.sum()) == 2 and int(members[captions.index("a penguin, front view")].sum()) == 2
    assert int(members[captions.index("a penguin, overhead view")].sum()) == 8
    assert int(members[captions.index("a penguin, side view")].sum()) == 12


def test_a_view_caption_without_renders_falls_back_to_the_whole_object(toy_cache_dir):
    settings = ToyWorldSettings(objects=["ball"], image_size=8, n_azimuths=4, elevations_deg=[0.0], n_eval_views=1)
    train, _ = load_render_sets(settings, toy_cache_dir)
    captions, members = caption_table(train)
    assert torch.equal(members[captions.index("a blue ball, overhead view")], members[captions.index("a blue ball")])


def test_held_out_views_are_off_the_training_azimuths_and_have_masks(toy_pipe):
    train, held_out = toy_pipe.unet.train_set, toy_pipe.unet.eval_set
    assert len(held_out) == 2 * 4
    assert not set(held_out.azimuth.tolist()) & set(train.azimuth.tolist())
    assert torch.all(held_out.elevation == 15.0)
    coverage = held_out.alpha_float().mean(dim=(1, 2, 3))
    assert torch.all(coverage > 0.02) and torch.all(coverage < 0.5)
    assert held_out.rgb.dtype == torch.uint8 and held_out.depth.dtype == torch.float16
    on = held_out.alpha[..., 0] == 255
    assert torch.all(held_out.depth[..., 0][on] > 3.0) and torch.all(held_out.depth[..., 0][held_out.alpha[..., 0] == 0] == 0)


def test_renders_are_cached_on_disk_by_a_hash_of_the_render_settings(tmp_path, monkeypatch):
    settings = ToyWorldSettings(objects=["cone"], image_size=16, n_azimuths=3, elevations_deg=[10.0], n_eval_views=2)
    train, held_out = load_render_sets(settings, str(tmp_path))
    assert (tmp_path / f"{settings.render_key()}.pt").exists()

    def no_rendering(_settings):
        raise AssertionError("rendered again instead of reading the cache")

    monkeypatch.setattr(toy_dataset, "render_sets", no_rendering)
    train2, held_out2 = load_render_sets(settings, str(tmp_path))
    for a, b in ((train, train2), (held_out, held_out2)):
        for name, tensor in a.tensors().items():
            assert torch.equal(tensor, b.tensors()[name]), name
    # the prior's settings share the renders; a camera setting does not
    same = ToyWorldSettings(**{**settings.to_dict(), "bandwidth": 0.05, "downsample": 4, "seed": 3})
    assert same.render_key() == settings.render_key()
    assert ToyWorldSettings(**{**settings.to_dict(), "fovy_deg": 40.0}).render_key() != settings.render_key()


def test_settings_validate_and_round_trip():
    s = ToyWorldSettings(objects=["a penguin", "cube"])
    assert s.objects == ["penguin", "cube"] and s.object_names == ["a penguin", "a red cube"]
    assert ToyWorldSettings.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match="downsample"):
        ToyWorldSettings(downsample=3)
    with pytest.raises(KeyError):
        ToyWorldSettings(objects=["teapot"])


@pytest.mark.parametrize("n_azimuths,n_eval", [(24, 8), (8, 4), (4, 8), (36, 5), (1, 3)])
def test_held_out_azimuths_never_fall_on_the_training_grid(n_azimuths, n_eval):
    settings = ToyWorldSettings(n_azimuths=n_azimuths, n_eval_views=n_eval)
    held_out = toy_dataset.eval_azimuths(settings)
    grid = toy_dataset.training_cameras(settings)["azimuth"]
    assert held_out.shape == (n_eval,) and len(set(held_out.tolist())) == n_eval
    assert torch.cdist(held_out[:, None], grid[:, None]).min() > 0.5
