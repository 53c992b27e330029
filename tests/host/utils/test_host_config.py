"""load_config / parse_structured: threestudio's fields, resolvers, overrides and strictness."""
import os
import re
from dataclasses import dataclass, field
from typing import Optional

import pytest
from omegaconf import ListConfig, OmegaConf

from threestudio_lucid.errors import ConfigError, UnknownConfigKeyError
from threestudio_lucid.host.utils.config import dump_config, load_config, parse_structured


@pytest.fixture
def cfg_file(tmp_path):
    def write(text, name="exp.yaml"):
        p = tmp_path / name
        p.write_text(text)
        return str(p)

    return write


def test_defaults_and_trial_dir_naming(tmp_path, cfg_file):
    path = cfg_file(f"exp_root_dir: {tmp_path}/out\nname: demo\ntag: cat\n")
    cfg = load_config(path)
    assert cfg.seed == 0 and cfg.use_timestamp is True and cfg.resume is None
    assert cfg.data == {} and cfg.system == {} and cfg.trainer == {} and cfg.checkpoint == {}
    assert cfg.n_gpus == 1
    assert re.fullmatch(r"cat@\d{8}-\d{6}", cfg.trial_name)
    assert cfg.trial_dir == os.path.join(str(tmp_path), "out", "demo", cfg.trial_name)
    assert os.path.isdir(cfg.trial_dir)  # created at parse time, as threestudio


def test_no_timestamp_and_kept_timestamp(tmp_path, cfg_file):
    path = cfg_file(f"exp_root_dir: {tmp_path}\ntag: t\nuse_timestamp: false\n")
    assert load_config(path).trial_name == "t"
    path = cfg_file(f"exp_root_dir: {tmp_path}\ntag: t\ntimestamp: '@20240101-000000'\n")
    assert load_config(path).trial_name == "t@20240101-000000"
    with pytest.raises(ConfigError, match="tag"):
        load_config(cfg_file(f"exp_root_dir: {tmp_path}\nuse_timestamp: false\n"))


def test_multi_gpu_disables_timestamp(tmp_path, cfg_file):
    cfg = load_config(cfg_file(f"exp_root_dir: {tmp_path}\ntag: t\n"), n_gpus=2)
    assert cfg.trial_name == "t" and cfg.n_gpus == 2


def test_cli_dotlist_overrides_with_yaml_typing(tmp_path, cfg_file):
    path = cfg_file(f"exp_root_dir: {tmp_path}\nsystem:\n  prompt_processor:\n    prompt: ???\n  lr: 0.1\n")
    cfg = load_config(
        path,
        cli_args=["system.prompt_processor.prompt=a cat", "system.lr=0.5", "seed=7", "trainer.max_steps=100"],
    )
    assert cfg.system.prompt_processor.prompt == "a cat"
    assert cfg.system.lr == 0.5 and cfg.seed == 7 and cfg.trainer.max_steps == 100


def test_missing_mandatory_value_names_the_key(tmp_path, cfg_file):
    path = cfg_file(f"exp_root_dir: {tmp_path}\nsystem:\n  prompt_processor:\n    prompt: ???\n")
    with pytest.raises(ConfigError, match=r"system\.prompt_processor\.prompt"):
        load_config(path)


def test_unknown_top_level_key_names_key_and_file(tmp_path, cfg_file):
    path = cfg_file(f"exp_root_dir: {tmp_path}\nnmae: typo\n")
    with pytest.raises(UnknownConfigKeyError) as exc:
        load_config(path)
    assert isinstance(exc.value, TypeError)  # threestudio raises TypeError for unknown keys
    assert "'nmae'" in str(exc.value) and path in str(exc.value)


def test_unknown_nested_key_names_full_path_and_command_line(tmp_path, cfg_file):
    @dataclass
    class SystemConfig:
        lr: float = 0.1

    cfg = load_config(cfg_file(f"exp_root_dir: {tmp_path}\n"), cli_args=["system.nonexistent=1"])
    with pytest.raises(UnknownConfigKeyError) as exc:
        parse_structured(SystemConfig, cfg.system)
    msg = str(exc.value)
    assert "'system.nonexistent'" in msg and "command line" in msg and "lr" in msg
    assert "\n" not in msg


def test_wrong_type_names_the_key(tmp_path, cfg_file):
    with pytest.raises(ConfigError, match="seed"):
        load_config(cfg_file(f"exp_root_dir: {tmp_path}\nseed: abc\n"))


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(str(tmp_path / "nope.yaml"))


def test_resolvers(tmp_path, cfg_file):
    text = f"""
exp_root_dir: {tmp_path}
system:
  prompt: a red car
  a: ${{calc_exp_lr_decay_rate:0.01,100}}
  b: ${{add:1,2}}
  c: ${{sub:5,2}}
  d: ${{mul:2,3}}
  e: ${{div:3,2}}
  f: ${{idiv:7,2}}
  g: ${{basename:/x/y/model.ckpt}}
  h: ${{rmspace:${{system.prompt}},_}}
  j: ${{gt0:1}}
  k: ${{not:true}}
  l: ${{cmaxgt0:${{system.sched}}}}
  m: ${{cmaxgt0orcmaxgt0:0,${{system.sched}}}}
  sched: [0, 0.0, 2.0, 100]
tag: ${{rmspace:${{system.prompt}},_}}
"""
    s = load_config(cfg_file(text)).system
    assert s.a == pytest.approx(0.01 ** (1 / 100))
    assert (s.b, s.c, s.d, s.e, s.f) == (3, 3, 6, 1.5, 3)
    assert s.g == "model.ckpt" and s.h == "a_red_car"
    assert s.j is True and s.k is False
    assert s.l is True and s.m is True


def test_tuple2_resolver_as_threestudio_on_each_omegaconf(tmp_path, cfg_file):
    """``${tuple2:x}`` returns a plain list, as threestudio's does: omegaconf >= 2.4 stores it, older
    releases (threestudio pins 2.3.0) reject it in ``OmegaConf.resolve``, for threestudio too."""
    import omegaconf
    from packaging.version import Version

    path = cfg_file(f"exp_root_dir: {tmp_path}\ntag: t\nsystem:\n  i: ${{tuple2:0.5}}\n")
    if Version(omegaconf.__version__) >= Version("2.4"):
        assert list(load_config(path).system.i) == [0.5, 0.5]
    else:
        with pytest.raises(Exception, match="supported primitive type"):
            load_config(path)


def test_list_on_float_field_stays_a_schedule():
    @dataclass
    class GuidanceConfig:
        max_step_percent: float = 0.98
        name: Optional[str] = None
        extra: dict = field(default_factory=dict)

    cfg = parse_structured(GuidanceConfig, OmegaConf.create({"max_step_percent": [5000, 0.98, 0.5, 5001]}))
    assert isinstance(cfg.max_step_percent, ListConfig)
    assert list(cfg.max_step_percent) == [5000, 0.98, 0.5, 5001]
    # struct mode: unknown attribute access fails, dict fields stay open
    cfg.extra.anything = 1
    with pytest.raises(Exception):
        cfg.nope = 1


def test_parsed_config_round_trips_through_dump(tmp_path, cfg_file):
    cfg = load_config(cfg_file(f"exp_root_dir: {tmp_path}\ntag: x\nsystem:\n  a: 1\n"))
    out = tmp_path / "parsed.yaml"
    dump_config(str(out), cfg)
    again = load_config(str(out))
    assert again.trial_name == cfg.trial_name  # the timestamp is kept on relaunch
    assert again.system.a == 1


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path, cfg_file):
    path = cfg_file(f"exp_root_dir: {tmp_path}\ntag: same\n")
    dirs = {load_config(path).trial_dir for _ in range(3)}
    assert len(dirs) == 3
