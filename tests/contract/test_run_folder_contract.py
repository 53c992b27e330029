"""Launches started together never share a run folder, on either host (run_folder.py): threestudio
names folders to the second and creates them with exist_ok=True; the plugin claims them."""
import glob
import os

import pytest
import torch
from omegaconf import OmegaConf

CONFIG = "custom/threestudio-lucid/configs/lucid-sds-cpu.yaml"
TINY_RUN = (
    "system.prompt_processor.prompt=a cat",
    "system.prompt_processor.pretrained_model_name_or_path=load/tiny-sd",
    "system.guidance.pretrained_model_name_or_path=load/tiny-sd",
    "data.width=16", "data.height=16", "data.eval_width=16", "data.eval_height=16",
    "data.n_val_views=1", "data.n_test_views=2", "system.geometry.init_num_pts=200",
    "trainer.max_steps=2", "trainer.log_every_n_steps=1", "trainer.val_check_interval=1000",
)


def assert_a_complete_run_of_its_own(run):
    """The folder holds exactly one run: its checkpoint at the last step, its test outputs, one CSV
    log, and a parsed.yaml that names this folder (a relaunch from it lands here)."""
    run.check()
    ckpt = torch.load(run.path("ckpts", "last.ckpt"), map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2
    assert os.path.isfile(run.path("save", "point_cloud.ply")) and os.path.isfile(run.path("save", "it2-test.mp4"))
    assert os.listdir(run.path("csv_logs")) == ["version_0"]
    assert len(run.logged("train/loss")) == 2
    parsed = OmegaConf.load(run.path("configs", "parsed.yaml"))
    assert os.path.abspath(parsed.trial_dir) == os.path.abspath(run.trial_dir)
    assert os.path.basename(run.trial_dir).endswith(parsed.timestamp)


@pytest.mark.slow
def test_eight_launches_started_together_train_in_eight_folders(host, tmp_path):
    runs = host.launch_together(8, CONFIG, "train", *TINY_RUN, exp_root=str(tmp_path / "outputs"))
    for run in runs:
        assert_a_complete_run_of_its_own(run)
    assert len({run.trial_dir for run in runs}) == 8
    assert len(glob.glob(str(tmp_path / "outputs" / "*" / "*"))) == 8


@pytest.mark.slow
def test_launches_given_the_same_folder_never_share_it(host, tmp_path):
    """Three launches told the same timestamp (as a relaunch from one parsed.yaml is): under threestudio
    every one trains, the later ones in the next free folders, each saying which; lucid-launch refuses
    a --train into an existing folder, so there a launch may instead end with its one error line."""
    runs = host.launch_together(3, CONFIG, "train", *TINY_RUN, "timestamp='@20261207-120000'",
                                exp_root=str(tmp_path / "outputs"))
    trained = [run for run in runs if run.returncode == 0]
    for run in trained:
        assert_a_complete_run_of_its_own(run)
    assert len({run.trial_dir for run in trained}) == len(trained) >= 1
    moved = [run for run in trained if "this run writes into" in run.output]
    assert len(moved) == len(trained) - 1
    for run in runs:
        assert "Traceback" not in run.output, run.output[-3000:]
        if run.returncode != 0:
            errors = [line for line in run.output.splitlines() if line.startswith("error:")]
            assert len(errors) == 1 and "already exists" in errors[0], run.output[-2000:]
    if host.name == "threestudio":
        assert len(trained) == 3
