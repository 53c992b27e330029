"""parse_optimizer / parse_scheduler build named parameter groups and Lightning scheduler dicts."""
import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from threestudio_lucid.errors import ConfigError
from threestudio_lucid.host.systems.utils import parse_optimizer, parse_scheduler


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.geometry = nn.Linear(2, 2)
        self.background = nn.Linear(2, 1)
        self.scale = nn.Parameter(torch.ones(1))


def test_named_groups_with_overrides():
    cfg = OmegaConf.create(
        {
            "name": "Adam",
            "args": {"lr": 0.01, "betas": [0.9, 0.99], "eps": 1e-15},
            "params": {"geometry": {"lr": 0.1}, "background": {"lr": 0.001}, "scale": {}},
        }
    )
    opt = parse_optimizer(cfg, Model())
    assert isinstance(opt, torch.optim.Adam)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["geometry"]["lr"] == 0.1 and len(groups["geometry"]["params"]) == 2
    assert groups["background"]["lr"] == 0.001
    assert groups["scale"]["lr"] == 0.01 and groups["scale"]["eps"] == 1e-15


def test_all_parameters_without_params():
    opt = parse_optimizer(OmegaConf.create({"name": "SGD", "args": {"lr": 0.5}}), Model())
    assert sum(len(g["params"]) for g in opt.param_groups) == 5


def test_bad_optimizer_inputs_are_named():
    with pytest.raises(ConfigError, match="NotAnOptimizer"):
        parse_optimizer(OmegaConf.create({"name": "NotAnOptimizer", "args": {}}), Model())
    with pytest.raises(ConfigError, match="geometri"):
        parse_optimizer(OmegaConf.create({"name": "Adam", "args": {}, "params": {"geometri": {}}}), Model())


def test_schedulers():
    opt = parse_optimizer(OmegaConf.create({"name": "SGD", "args": {"lr": 1.0}}), Model())
    s = parse_scheduler(OmegaConf.create({"name": "ExponentialLR", "interval": "step", "args": {"gamma": 0.5}}), opt)
    assert s["interval"] == "step" and isinstance(s["scheduler"], torch.optim.lr_scheduler.ExponentialLR)
    seq = parse_scheduler(
        OmegaConf.create(
            {
                "name": "SequentialLR",
                "milestones": [2],
                "schedulers": [
                    {"name": "ConstantLR", "args": {"factor": 0.5, "total_iters": 2}},
                    {"name": "ExponentialLR", "args": {"gamma": 0.9}},
                ],
            }
        ),
        opt,
    )
    assert seq["interval"] == "epoch" and isinstance(seq["scheduler"], torch.optim.lr_scheduler.SequentialLR)
    with pytest.raises(ConfigError, match="interval"):
        parse_scheduler(OmegaConf.create({"name": "ExponentialLR", "interval": "week", "args": {"gamma": 0.5}}), opt)
