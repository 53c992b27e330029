"""solid-color-background: constant colour, learned or buffer, random colours only in training."""
import random

import pytest
import torch

from threestudio_lucid.host import find
from threestudio_lucid.host.models.background.solid_color_background import SolidColorBackground


def _dirs(batch=2, h=4, w=5):
    return torch.randn(batch, h, w, 3)


def test_registered_name_finds_the_class():
    assert find("solid-color-background") is SolidColorBackground


def test_default_is_white_with_the_input_shape():
    bg = SolidColorBackground({})
    out = bg(_dirs())
    assert out.shape == (2, 4, 5, 3)
    assert torch.equal(out, torch.ones(2, 4, 5, 3))


def test_configured_colour_and_channel_count():
    bg = SolidColorBackground({"color": [0.2, 0.4, 0.6, 0.8], "n_output_dims": 4})
    out = bg(_dirs(batch=3))
    assert out.shape == (3, 4, 5, 4)
    assert torch.allclose(out, torch.tensor([0.2, 0.4, 0.6, 0.8]).expand_as(out))


def test_output_follows_the_input_dtype():
    out = SolidColorBackground({})(_dirs().double())
    assert out.dtype == torch.float64


def test_fixed_colour_is_a_buffer_learned_colour_a_parameter():
    fixed = SolidColorBackground({"color": [0.1, 0.2, 0.3]})
    assert list(fixed.parameters()) == []
    assert "env_color" in fixed.state_dict()

    learned = SolidColorBackground({"color": [0.1, 0.2, 0.3], "learned": True})
    assert isinstance(learned.env_color, torch.nn.Parameter)
    learned(_dirs()).sum().backward()
    assert torch.allclose(learned.env_color.grad, torch.full((3,), 2 * 4 * 5.0))


def test_unknown_config_key_is_rejected():
    with pytest.raises(TypeError):
        SolidColorBackground({"colour": [1, 1, 1]})


def _randomised_fraction(bg, calls=2000):
    base = bg.env_color.detach()
    changed = 0
    for _ in range(calls):
        out = bg(_dirs(batch=1, h=2, w=2))
        changed += int(not torch.allclose(out, base.expand_as(out)))
    return changed / calls


def test_random_aug_applies_with_its_probability_in_training_only():
    random.seed(0)
    torch.manual_seed(0)
    bg = SolidColorBackground({"color": [0.0, 0.0, 0.0], "random_aug": True, "random_aug_prob": 0.3})
    bg.train()
    assert abs(_randomised_fraction(bg) - 0.3) < 0.05
    bg.eval()
    assert _randomised_fraction(bg, calls=200) == 0.0

    off = SolidColorBackground({"color": [0.0, 0.0, 0.0], "random_aug": False})
    off.train()
    assert _randomised_fraction(off, calls=200) == 0.0


def test_random_colour_is_per_image_and_constant_within_one():
    torch.manual_seed(0)
    bg = SolidColorBackground({"random_aug": True, "random_aug_prob": 1.0})
    bg.train()
    out = bg(_dirs(batch=4))
    per_image = out[:, :1, :1, :]
    assert torch.equal(out, per_image.expand_as(out))  # one colour per image
    assert len({tuple(c.tolist()) for c in per_image.reshape(4, 3)}) == 4  # different images differ
    assert ((out >= 0) & (out <= 1)).all()
