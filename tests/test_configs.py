"""Every shipped config parses and every component section matches its component's Config (typos in
a config would otherwise only show when a run reaches that component)."""
import glob
import os

import pytest

from threestudio_lucid import compat
from threestudio_lucid.host.utils.config import load_config, parse_structured

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
    glob.glob(os.path.join(ROOT, "custom", "threestudio-lucid", "configs", "*.yaml"))
    + glob.glob(os.path.join(ROOT, "configs", "*.yaml"))
)
COMPONENTS = ("geometry", "material", "background", "renderer", "guidance", "prompt_processor")


def test_configs_are_found():
    names = {os.path.basename(p) for p in CONFIGS}
    for method in ("sds", "ism", "vsd", "esd"):
        assert {f"lucid-{method}.yaml", f"lucid-{method}-cpu.yaml", f"lucid-{method}-toy.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_sections_match_component_configs(path, tmp_path):
    cfg = load_config(path, cli_args=["system.prompt_processor.prompt=a penguin", f"exp_root_dir={tmp_path}"])
    registered = compat.threestudio.__modules__
    parse_structured(_data_config(cfg.data_type), cfg.data)
    system_cls = compat.find(cfg.system_type)
    system_cfg = parse_structured(system_cls.Config, cfg.system)
    for name in COMPONENTS:
        type_name = system_cfg[f"{name}_type"]
        if type_name not in registered:
            assert not type_name.startswith("lucid-"), f"{type_name} is not registered"
            continue  # a threestudio built-in (the baseline configs run inside threestudio)
        parse_structured(compat.find(type_name).Config, system_cfg[name])
    for key in system_cfg.loss:
        assert key.startswith("lambda_"), key


def _data_config(data_type):
    from threestudio_lucid.data.progressive_camera import ProgressiveCameraConfig
    from threestudio_lucid.host.data.uncond import RandomCameraDataModuleConfig

    return {"random-camera-datamodule": RandomCameraDataModuleConfig,
            "lucid-progressive-camera-datamodule": ProgressiveCameraConfig}[data_type]


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_config_checkpoints_often_enough_that_a_crash_loses_little(path, tmp_path):
    """A crash or kill -9 loses at most one checkpoint interval: every config checkpoints at least
    four times a run, keeps every checkpoint and a last.ckpt, and the interval divides the run."""
    cfg = load_config(path, cli_args=["system.prompt_processor.prompt=a penguin", f"exp_root_dir={tmp_path}"])
    every, steps = cfg.checkpoint.every_n_train_steps, cfg.trainer.max_steps
    assert 1 <= every <= steps // 4 and steps % every == 0, (every, steps)
    assert cfg.checkpoint.save_last is True and cfg.checkpoint.save_top_k == -1
