"""C(): the three list shapes, int vs float end step, linear vs exp interpolation."""
import math

import pytest
from omegaconf import OmegaConf

from threestudio_lucid.host.utils.config import C_max
from threestudio_lucid.host.utils.misc import C


def L(*v):
    return OmegaConf.create(list(v))


def test_numbers_pass_through():
    assert C(0.3, 0, 1000) == 0.3 and C(5, 0, 0) == 5


def test_three_entries_start_at_zero():
    s = L(1.0, 0.0, 100)
    assert C(s, 0, 0) == 1.0 and C(s, 0, 50) == pytest.approx(0.5) and C(s, 0, 100) == 0.0
    assert C(s, 0, 1000) == 0.0  # clamped after the end


def test_four_entries_with_start_step():
    s = L(100, 0.0, 10.0, 200)
    assert C(s, 0, 0) == 0.0 and C(s, 0, 100) == 0.0
    assert C(s, 0, 150) == pytest.approx(5.0) and C(s, 0, 250) == 10.0


def test_step_change_with_adjacent_steps():
    # prolificdreamer's max_step_percent: 0.98 until 5000, then 0.5
    s = L(5000, 0.98, 0.5, 5001)
    assert C(s, 0, 4999) == pytest.approx(0.98) and C(s, 0, 5001) == pytest.approx(0.5)


def test_float_end_step_interpolates_on_epoch():
    s = L(0, 1.0, 3.0, 2.0)
    assert C(s, 1, 999999) == pytest.approx(2.0)
    assert C(s, 0, 999999) == pytest.approx(1.0)


def test_piecewise_segments():
    # 0 -> 1 over [0, 100], then 1 -> 3 over [100, 300], then 3 -> 0 over [300, 400]
    s = L(0, 0.0, 1.0, 100, 3.0, 300, 0.0, 400)
    assert C(s, 0, 50) == pytest.approx(0.5)
    assert C(s, 0, 100) == pytest.approx(1.0)
    assert C(s, 0, 200) == pytest.approx(2.0)
    assert C(s, 0, 350) == pytest.approx(1.5)
    assert C(s, 0, 1000) == pytest.approx(0.0)


def test_exp_interpolation_is_log_linear():
    s = L(0, 1e-2, 1e-4, 100)
    assert C(s, 0, 50, interpolation="exp") == pytest.approx(1e-3)
    assert C(s, 0, 25, interpolation="exp") == pytest.approx(math.exp(math.log(1e-2) * 0.75 + math.log(1e-4) * 0.25))
    with pytest.raises(ValueError):
        C(s, 0, 1, interpolation="cubic")


def test_c_max():
    assert C_max(3.0) == 3.0
    assert C_max(L(0, 1.0, 100)) == 1.0
    assert C_max(L(0, 0.0, 1.0, 100, 3.0, 300, 0.0, 400)) == 3.0


def test_a_plain_list_is_refused_as_threestudio_refuses_it():
    # threestudio's C() runs config_to_primitive on every non-number, which refuses a plain list; a
    # component that passed one worked on this host and failed inside threestudio (found by the
    # conformance suite: the geometry's cached learning-rate schedules)
    with pytest.raises(ValueError, match="ListConfig"):
        C([1.0, 0.0, 100], 0, 50)
