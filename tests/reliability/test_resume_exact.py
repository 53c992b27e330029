"""A run resumed from step k ends with the same Gaussians as the uninterrupted run (same seed), with
densification and pruning inside the window and a validation in between: the checkpoint carries the
random states, the camera stream and the densification statistics."""
import glob
import os

import pytest
import torch

from cpu_runs import cpu_run_args
from threestudio_lucid.host import launch


def run_args(config, tiny_sd_path, steps, *extra):
    return cpu_run_args(
        config, tiny_sd_path, steps,
        # a validation right after the checkpoint the resume starts from (steps 2, 4, ...)
        "trainer.val_check_interval=2", "checkpoint.every_n_train_steps=4",
        # densify and prune every 2 steps up to step 9, with thresholds that make both happen
        "system.geometry.densify_from_iter=1", "system.geometry.densification_interval=2",
        "system.geometry.densify_until_iter=9", "system.geometry.densify_grad_threshold=0.0",
        "system.geometry.prune_from_iter=1", "system.geometry.prune_interval=2",
        "system.geometry.prune_until_iter=9", "system.geometry.min_opac_prune=0.05",
        "system.geometry.max_num=100000",
        *extra, gaussians=300,
    )


def final_state(trial):
    ckpt = torch.load(os.path.join(trial, "ckpts", "last.ckpt"), weights_only=False, map_location="cpu")
    return ckpt


@pytest.mark.parametrize("config", ["lucid-ism-cpu.yaml", "lucid-sds-cpu.yaml"])  # progressive / random cameras
def test_resumed_run_ends_with_the_uninterrupted_runs_gaussians(tmp_path, monkeypatch, tiny_sd_path, config):
    monkeypatch.chdir(tmp_path)
    steps = 12
    assert launch.main(run_args(config, tiny_sd_path, steps, "tag=full", "use_timestamp=false")) == 0
    (full,) = glob.glob(str(tmp_path / "outputs" / "*" / "full"))
    middle = os.path.join(full, "ckpts", "epoch=0-step=4.ckpt")
    assert os.path.isfile(middle)
    assert launch.main(run_args(config, tiny_sd_path, steps, "tag=resumed", "use_timestamp=false",
                                f"resume={middle}")) == 0
    (resumed,) = glob.glob(str(tmp_path / "outputs" / "*" / "resumed"))

    a, b = final_state(full), final_state(resumed)
    assert a["global_step"] == b["global_step"] == steps
    sa, sb = a["state_dict"], b["state_dict"]
    n_start = torch.load(middle, weights_only=False)["state_dict"]["geometry._xyz"].shape[0]
    assert sa["geometry._xyz"].shape[0] != n_start  # the Gaussians changed in number after the resume point
    for key in ("_xyz", "_features_dc", "_opacity", "_scaling", "_rotation"):
        torch.testing.assert_close(sb[f"geometry.{key}"], sa[f"geometry.{key}"], rtol=1e-5, atol=1e-6, msg=key)
    stats_a, stats_b = sa["geometry._extra_state"], sb["geometry._extra_state"]
    for name in ("grad_accum", "denom", "max_radii2D"):
        torch.testing.assert_close(stats_b["densification_stats"][name], stats_a["densification_stats"][name],
                                   rtol=1e-5, atol=1e-7)
