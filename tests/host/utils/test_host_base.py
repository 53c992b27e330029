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
