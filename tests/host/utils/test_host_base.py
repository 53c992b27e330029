"""Updateable traversal, BaseObject / BaseModule construction and ``weights`` loading."""
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn

from threestudio_lucid.errors import UnknownConfigKeyError
from threestudio_lucid.host.utils.base import BaseModule, BaseObject, Updateable, update_if_possible


class Counter(Updateable):
    def __init__(self):
        self.steps, self.ends = [], []

    def update_step(self, epoch, global_step, on_load_weights=False):
        self.steps.append((epoch, global_step, on_load_weights))

    def update_step_end(self, epoch, global_step):
        self.ends.append(global_step)


class Holder(Updateable):
    def __init__(self, child):
        self.child = child
        self._hidden = Counter()

    @property
    def alias(self):  # reached a second time through the property, as system.renderer.geometry
        return self.child

    @property
    def broken(self):
        raise RuntimeError("not ready")


def test_do_update_step_recurses_through_attributes_and_properties():
    c = Counter()
    h = Holder(c)
    h.do_update_step(1, 10)
    assert c.steps == [(1, 10, False), (1, 10, False)]  # via .alias and .child
    assert h._hidden.steps == []  # underscore attributes are skipped
    h.do_update_step_end(1, 11)
    assert c.ends == [11, 11]
    update_if_possible(c, 2, 20)
    update_if_possible(object(), 2, 20)  # not Updateable: ignored
    assert c.steps[-1] == (2, 20, False)


class Expensive(Updateable):
    """Properties evaluated by the walk: one cheap Updateable alias, one costly tensor, one that
    becomes evaluable later."""

    def __init__(self, child):
        self.child = None
        self.evaluations = 0
        self.ready = False
        self.late = child

    @property
    def activations(self):  # like a geometry's get_xyz: a tensor, costly to evaluate
        self.evaluations += 1
        return torch.zeros(3)

    @property
    def later(self):  # raises until configured, then gives a component
        if not self.ready:
            raise RuntimeError("not configured yet")
        return self.late


def test_the_walk_evaluates_other_properties_once_and_still_sees_new_components():
    c, d = Counter(), Counter()
    e = Expensive(d)
    e.late = None  # the component behind `later` comes in with `ready`
    for step in range(3):
        e.do_update_step(0, step)
    assert e.evaluations == 1  # first walk only, not per step
    assert c.steps == [] and d.steps == []
    e.child = c  # an attribute assigned later is walked
    e.ready, e.late = True, d  # a property that raised is tried again
    e.do_update_step(0, 3)
    assert c.steps == [(0, 3, False)]
    assert d.steps == [(0, 3, False), (0, 3, False)]  # via .later and .late
    assert e.evaluations == 1


class Thing(BaseObject):
    @dataclass
    class Config:
        scale: float = 2.0

    def configure(self, offset):
        self.value = self.cfg.scale + offset


def test_base_object_parses_config_and_calls_configure():
    t = Thing({"scale": 3.0}, 1.0)
    assert t.value == 4.0 and t.device.type in ("cpu", "cuda")
    with pytest.raises(UnknownConfigKeyError, match="scal"):
        Thing({"scal": 3.0}, 1.0)


class Net(BaseModule):
    @dataclass
    class Config(BaseModule.Config):
        width: int = 3

    def configure(self):
        self.lin = nn.Linear(self.cfg.width, 1)
        self.loaded_at = None

    def update_step(self, epoch, global_step, on_load_weights=False):
        if on_load_weights:
            self.loaded_at = (epoch, global_step)


def test_base_module_loads_module_weights_from_a_checkpoint(tmp_path):
    src = Net({"width": 3})
    ckpt = {
        "state_dict": {f"geometry.{k}": v for k, v in src.state_dict().items()} | {"other.x": torch.ones(1)},
        "epoch": 2,
        "global_step": 345,
    }
    path = tmp_path / "last.ckpt"
    torch.save(ckpt, path)
    dst = Net({"width": 3, "weights": f"{path}:geometry"})
    assert torch.equal(dst.lin.weight, src.lin.weight)
    assert dst.loaded_at == (2, 345)
    assert "_dummy" not in dst.state_dict()
