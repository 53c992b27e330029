"""lucid-launch on empty and foreign inputs (issue 26, parts 4-6): an empty config file, a checkpoint of
another guidance given to resume=, and an evaluation of an untrained system each get one console line;
system.weights= takes another run's Gaussians the threestudio way."""
import glob
import os

import pytest
import pytorch_lightning as pl
import torch

from cpu_runs import CONFIGS, cpu_run_args, the_error
from threestudio_lucid import compat
from threestudio_lucid.host import launch

ISM_CPU = os.path.join(CONFIGS, "lucid-ism-cpu.yaml")
PROMPT = "system.prompt_processor.prompt=a cat"


@pytest.mark.parametrize("text, named", [
    ("", "is empty"), ("# a comment\n\n", "is empty"), ("{}\n", "is empty"), ("null\n", "is empty"),
    ("- name: x\n- seed: 0\n", "holds a YAML list"), ("lucid-ism-cpu.yaml\n", "holds a single value"),
    ("42\n", "holds a single value"),
])
def test_an_empty_or_non_mapping_config_file_is_named(tmp_path, monkeypatch, capsys, text, named):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    monkeypatch.chdir(tmp_path)
    line = the_error(launch.main(["--config", str(config), "--train"]), capsys.readouterr().err)
    assert f"Config file '{config}' {named}" in line and "lucid-ism-cpu.yaml" in line
    assert sorted(os.listdir(tmp_path)) == ["run.yaml"]


def test_evaluating_without_resume_says_so_once(tmp_path, monkeypatch, capsys, tiny_sd_path):
    monkeypatch.chdir(tmp_path)
    args = cpu_run_args("lucid-ism-cpu.yaml", tiny_sd_path, 1, "data.n_val_views=1")
    args[args.index("--train")] = "--validate"
    assert launch.main(args) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "without resume=" in line]
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith("WARNING --validate without resume= or system.weights=")
    assert "untrained initial Gaussians (system.geometry.init_type=sphere_solid)" in lines[0]
    assert "resume=<trial>/ckpts/last.ckpt" in lines[0]


def test_resume_of_a_vsd_checkpoint_into_an_ism_config_is_one_line(tmp_path, monkeypatch, capsys, tiny_sd_path):
    monkeypatch.chdir(tmp_path)
    vsd_cfg = compat.load_config(os.path.join(CONFIGS, "lucid-vsd-cpu.yaml"), cli_args=cpu_run_args(
        "lucid-vsd-cpu.yaml", tiny_sd_path, 1, "exp_root_dir=vsd-runs")[3:])
    vsd = compat.find(vsd_cfg.system_type)(vsd_cfg.system)
    checkpoint = {"state_dict": vsd.state_dict(), "epoch": 0, "global_step": 1,
                  "pytorch-lightning_version": pl.__version__}
    vsd.on_save_checkpoint(checkpoint)
    path = str(tmp_path / "vsd.ckpt")
    torch.save(checkpoint, path)
    args = cpu_run_args("lucid-ism-cpu.yaml", tiny_sd_path, 1, f"resume={path}", "exp_root_dir=outputs")
    args[args.index("--train")] = "--test"
    line = the_error(launch.main(args), capsys.readouterr().err)
    assert f"resume='{path}' does not fit this config" in line
    assert "lucid-vsd-guidance with a trained LoRA" in line and "expects lucid-ism-guidance" in line
    assert f"system.weights={path} system.weights_ignore_modules=[guidance]" in line
    assert not os.path.exists(tmp_path / "outputs")  # the failed launch left no run folder


@pytest.mark.slow
def test_an_ism_run_starts_from_the_gaussians_of_a_vsd_run(tmp_path, monkeypatch, capsys, tiny_sd_path):
    """The way the resume error gives, end to end: VSD trains; ISM with system.weights= and
    system.weights_ignore_modules=[guidance] trains from its Gaussians (number and values)."""
    monkeypatch.chdir(tmp_path)
    assert launch.main(cpu_run_args("lucid-vsd-cpu.yaml", tiny_sd_path, 2, "tag=vsd", "use_timestamp=false",
                                    gaussians=150)) == 0
    vsd_ckpt = os.path.join("outputs", "lucid-vsd-cpu", "vsd", "ckpts", "last.ckpt")
    vsd = torch.load(vsd_ckpt, map_location="cpu")["state_dict"]
    capsys.readouterr()
    # the ISM run's own init has 200; no position or densification change in its one step
    assert launch.main(cpu_run_args(
        "lucid-ism-cpu.yaml", tiny_sd_path, 1, "tag=ism", "use_timestamp=false", f"system.weights={vsd_ckpt}",
        "system.weights_ignore_modules=[guidance]", "system.geometry.position_lr=0")) == 0
    err = capsys.readouterr().err
    assert "Loaded Gaussians (150 of them, sh_degree 0), background, renderer from system.weights=" in err
    assert "without resume=" not in err  # the test stage after training is not an untrained evaluation
    (ism_ckpt,) = glob.glob(os.path.join("outputs", "lucid-ism-cpu", "ism", "ckpts", "last.ckpt"))
    ism = torch.load(ism_ckpt, map_location="cpu")["state_dict"]
    assert ism["geometry._xyz"].shape == vsd["geometry._xyz"].shape == (150, 3)
    assert torch.equal(ism["geometry._xyz"], vsd["geometry._xyz"])
    assert not any(k.startswith("guidance.") for k in ism)


def test_a_folder_given_as_the_config_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = the_error(launch.main(["--config", str(tmp_path), "--train"]), capsys.readouterr().err)
    assert f"Config file '{tmp_path}' is a folder" in line


def test_a_missing_weights_file_is_named_before_anything_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = launch.main(["--config", ISM_CPU, "--train", PROMPT, f"system.weights={tmp_path}/none.ckpt"])
    line = the_error(code, capsys.readouterr().err)
    assert f"system.weights='{tmp_path}/none.ckpt' does not exist" in line
    assert not os.path.exists(tmp_path / "outputs")
