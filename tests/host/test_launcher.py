"""The launcher: launch.py's flags, output layout, resume, and one-line errors."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

from threestudio_lucid.host import launch

HERE = os.path.dirname(os.path.abspath(__file__))

CONFIG = """
name: toy
tag: "${rmspace:${system.prompt},_}"
exp_root_dir: outputs
seed: 0
data_type: random-camera-datamodule
data:
  batch_size: 2
  width: 8
  height: 8
  eval_width: 8
  eval_height: 8
  n_val_views: 2
  n_test_views: 4
system_type: test-toy-system
system:
  prompt: a toy cube
  target: 0.25
  loss:
    lambda_fit: [0, 1.0, 2.0, 4]
  optimizer:
    name: Adam
    args:
      lr: 0.1
trainer:
  max_steps: 6
  log_every_n_steps: 1
  num_sanity_val_steps: 0
  val_check_interval: 3
  enable_progress_bar: true
checkpoint:
  save_last: true
  save_top_k: -1
  every_n_train_steps: 6
"""


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A run folder with the config and a custom/ extension that registers the toy system."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "toy.yaml").write_text(CONFIG)
    os.makedirs(tmp_path / "custom")
    shutil.copyfile(os.path.join(HERE, "toy_system_module.py"), tmp_path / "custom" / "toy_system.py")
    return tmp_path


@pytest.fixture
def toy_registered():
    # In-process runs: register the toy system once (a custom/ loading would register it again).
    import importlib.util

    from threestudio_lucid.host import __modules__

    if "test-toy-system" not in __modules__:
        spec = importlib.util.spec_from_file_location("lucid_test_toy_system", os.path.join(HERE, "toy_system_module.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


def run_inprocess(args, workdir):
    os.rename(workdir / "custom", workdir / "custom_off")  # registered already in this process
    try:
        return launch.main(args)
    finally:
        os.rename(workdir / "custom_off", workdir / "custom")


def only_trial_dir(root):
    trials = os.listdir(root)
    assert len(trials) == 1, trials
    return os.path.join(root, trials[0])


def test_train_writes_threestudio_layout_then_tests_and_resumes(workdir, toy_registered, capsys):
    assert run_inprocess(["--config", "toy.yaml", "--train", "--gpu", "0"], workdir) == 0
    trial = only_trial_dir(workdir / "outputs" / "toy")
    assert os.path.basename(trial).startswith("a_toy_cube@")
    for rel in ["cmd.txt", "configs/parsed.yaml", "configs/raw.yaml", "ckpts/last.ckpt", "csv_logs"]:
        assert os.path.exists(os.path.join(trial, rel)), rel
    with open(os.path.join(trial, "cmd.txt")) as f:
        lines = f.read().splitlines()
    assert lines[0].startswith("python ") and lines[1].startswith("Namespace(")
    metrics = open(os.path.join(trial, "csv_logs", "version_0", "metrics.csv")).read()
    assert "train/loss_fit" in metrics
    save = os.listdir(os.path.join(trial, "save"))
    assert "it3-0.png" in save and "it6-1.png" in save  # validation every 3 steps, 2 views
    assert "it6-test.mp4" in save  # the test stage ran after fit
    assert sorted(os.listdir(os.path.join(trial, "save", "it6-test"))) == [f"{i}.png" for i in range(4)]
    ckpt = torch.load(os.path.join(trial, "ckpts", "last.ckpt"), weights_only=False)
    assert ckpt["global_step"] == 6
    # the lambda schedule was applied and the colour moved towards the target
    assert 0.0 < ckpt["state_dict"]["color"].mean().item() < 0.6

    # --test from the checkpoint restores the step for file names
    last = os.path.join(trial, "ckpts", "last.ckpt")
    assert run_inprocess(["--config", "toy.yaml", "--test", f"resume={last}"], workdir) == 0
    trials = sorted(os.listdir(workdir / "outputs" / "toy"))
    assert len(trials) == 2  # every run gets its own folder, even within the same second
    assert torch.load(os.path.join(trial, "ckpts", "last.ckpt"), weights_only=False)["global_step"] == 6

    # resume training to 8 steps
    assert run_inprocess(["--config", "toy.yaml", "--train", f"resume={last}", "trainer.max_steps=8",
                          "checkpoint.every_n_train_steps=8"], workdir) == 0
    steps = []
    for t in os.listdir(workdir / "outputs" / "toy"):
        p = os.path.join(workdir, "outputs", "toy", t, "ckpts", "last.ckpt")
        if os.path.exists(p):
            steps.append(torch.load(p, weights_only=False)["global_step"])
    assert 8 in steps


def test_unknown_system_key_is_one_error_line(workdir, toy_registered, capsys):
    code = run_inprocess(["--config", "toy.yaml", "--train", "system.nonexistent=1"], workdir)
    stderr = capsys.readouterr().err
    err = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code != 0 and "Traceback" not in stderr
    assert len(err) == 1
    assert "system.nonexistent" in err[0] and "command line" in err[0]


def test_unknown_component_and_bad_resume_are_named(workdir, toy_registered, capsys):
    assert run_inprocess(["--config", "toy.yaml", "--train", "system_type=no-such-system"], workdir) == 2
    err = capsys.readouterr().err
    assert "system_type='no-such-system'" in err and "test-toy-system" in err
    assert run_inprocess(["--config", "toy.yaml", "--test", "resume=missing.ckpt"], workdir) == 2
    assert "missing.ckpt" in capsys.readouterr().err


def test_console_script_loads_custom_modules_and_reports_unknown_key(workdir):
    exe = shutil.which("lucid-launch") or os.path.join(os.path.dirname(sys.executable), "lucid-launch")
    proc = subprocess.run(
        [exe, "--config", "toy.yaml", "--train", "system.nonexistent=1"],
        cwd=workdir, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    err_lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(err_lines) == 1 and "system.nonexistent" in err_lines[0]
    assert "Traceback" not in proc.stderr


def test_launch_flags_are_those_of_launch_py():
    p = launch.build_parser()
    args, extras = p.parse_known_args(["--config", "x.yaml", "--export", "--verbose", "a.b=1"])
    assert args.export and args.verbose and not args.typecheck and args.gpu == "0"
    assert extras == ["a.b=1"]
    with pytest.raises(SystemExit):
        p.parse_known_args(["--config", "x.yaml", "--train", "--test"])
    with pytest.raises(SystemExit):
        p.parse_known_args(["--config", "x.yaml"])
