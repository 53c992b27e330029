"""The numerical guard: a run whose loss, gradients or Gaussians stop being finite (or run away) stops at
that step with one `error:` line naming the step, what went bad, the last good checkpoint and a hint;
nothing non-finite is saved; cleaned guidance-gradient entries are counted, not hidden."""
import glob
import math
import os
import re

import pytest
import torch

from cpu_runs import cpu_run_args
from threestudio_lucid.guidance.diffusion_base import StableDiffusionGuidanceBase
from threestudio_lucid.guidance.sds_guidance import SDSGuidance
from threestudio_lucid.host import launch


def run_args(tiny_sd_path, *extra):
    return cpu_run_args("lucid-sds-cpu.yaml", tiny_sd_path, 8, "trainer.val_check_interval=8",
                        "checkpoint.every_n_train_steps=2", *extra)


def error_lines(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error:")]


def only_trial(root):
    (trial,) = glob.glob(os.path.join(root, "outputs", "*", "*"))
    return trial


def assert_checkpoints_finite(trial):
    ckpts = sorted(glob.glob(os.path.join(trial, "ckpts", "*.ckpt")))
    for path in ckpts:
        state = torch.load(path, weights_only=False, map_location="cpu")["state_dict"]
        for key, value in state.items():
            if key.startswith("geometry._") and torch.is_tensor(value):
                assert torch.isfinite(value).all(), (path, key)
    return [os.path.basename(p) for p in ckpts]


def test_runaway_positions_stop_the_run_at_that_step_keeping_the_last_good_checkpoint(tmp_path, monkeypatch,
                                                                                       tiny_sd_path, capsys):
    monkeypatch.chdir(tmp_path)
    # the position learning rate jumps to 1e6 after step 4: Adam moves every Gaussian ~1e6 at once
    code = launch.main(run_args(tiny_sd_path, "system.geometry.position_lr=[4, 0.0001, 1000000.0, 5]"))
    errors = error_lines(capsys)
    assert code == 2 and len(errors) == 1, errors
    match = re.match(r"error: training diverged at step (\d+): the Gaussians ran away: one is (\S+) from the origin, "
                     r"beyond system.divergence_bound=1000; the last good checkpoint is (\S+) \(nothing later is "
                     r"saved\); lower the learning rates \(system.geometry.position_lr", errors[0])
    assert match, errors[0]
    step, distance, named = int(match.group(1)), float(match.group(2)), match.group(3)
    assert step in (5, 6) and distance > 1000
    trial = only_trial(tmp_path)
    names = assert_checkpoints_finite(trial)
    steps = sorted(int(n.split("step=")[1].split(".")[0]) for n in names if "step=" in n)
    assert os.path.basename(named) == f"epoch=0-step={steps[-1]}.ckpt" and steps[-1] <= step
    assert not glob.glob(os.path.join(trial, "save", "*.ply"))  # no test stage, no PLY of a diverged run


def test_a_nan_loss_term_stops_before_the_optimizer_step_and_names_the_term(tmp_path, monkeypatch, tiny_sd_path,
                                                                            capsys):
    monkeypatch.chdir(tmp_path)
    forward = SDSGuidance.forward

    seen = {"step": 0}

    def counting(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        seen["step"] += 1
        if seen["step"] >= 4:  # the 4th call is step 3
            out["loss_sds"] = out["loss_sds"] * math.nan
        return out

    monkeypatch.setattr(SDSGuidance, "forward", counting)
    code = launch.main(run_args(tiny_sd_path))
    errors = error_lines(capsys)
    assert code == 2 and len(errors) == 1, errors
    assert "training diverged at step 3: the loss is not finite (loss_sds=nan)" in errors[0]
    assert "epoch=0-step=2.ckpt" in errors[0] and "grad_clip" in errors[0]
    names = assert_checkpoints_finite(only_trial(tmp_path))
    assert "epoch=0-step=2.ckpt" in names and not any("step=4" in n for n in names)


def test_non_finite_guidance_gradient_entries_are_counted_and_logged(tmp_path, monkeypatch, tiny_sd_path):
    class Stub:
        grad_clip_val = None

    stub = Stub()
    grad = torch.tensor([[1.0, math.nan], [math.inf, -2.0]])
    cleaned = StableDiffusionGuidanceBase.clean_gradient(stub, grad)
    assert int(stub.nonfinite_grad_entries) == 2 and torch.isfinite(cleaned).all()
    assert cleaned[0, 0] == 1.0 and cleaned[1, 1] == -2.0

    monkeypatch.chdir(tmp_path)
    assert launch.main(run_args(tiny_sd_path, "trainer.max_steps=2", "checkpoint.every_n_train_steps=2",
                                "trainer.val_check_interval=2")) == 0
    metrics = open(os.path.join(only_trial(tmp_path), "csv_logs", "version_0", "metrics.csv")).read().splitlines()
    header = metrics[0].split(",")
    column = header.index("train/nonfinite_grad_entries")
    values = [float(row.split(",")[column]) for row in metrics[1:] if row.split(",")[column]]
    assert values == [0.0, 0.0]


def test_the_guard_finds_one_bad_entry_among_many_and_lets_huge_finite_values_through():
    """The guard reduces all tensors to one norm per step; a single NaN/inf entry must still stop the
    run, and a norm that merely overflows (finite entries above 1e19) must not."""
    from threestudio_lucid.errors import NonFiniteError
    from threestudio_lucid.geometry import GaussianSplatting
    from threestudio_lucid.system.gaussian_system import GaussianSplattingSystem as System

    class Stub:  # what the guard reads of the system
        _finite_sum = staticmethod(System._finite_sum)
        true_global_step = 7
        _step_settings = {"divergence_bound": 1000.0}

        def last_checkpoint(self):
            return None

        stop_diverged = System.stop_diverged

    stub = Stub()
    stub.geometry = GaussianSplatting({"init_num_pts": 5000, "init_type": "ball"})
    params = stub.geometry.gaussian_parameters()
    for p in params.values():
        p.grad = torch.randn_like(p)
    System.check_loss_and_gradients(stub, torch.tensor(1.0), {})
    System.check_parameters(stub)

    params["xyz"].grad[0, 0] = 3e30  # finite, but its square overflows float32
    System.check_loss_and_gradients(stub, torch.tensor(1.0), {})
    params["scaling"].grad[4321, 2] = math.nan
    with pytest.raises(NonFiniteError, match=r"step 7: non-finite gradients of the Gaussians' scaling \(1 entries\)"):
        System.check_loss_and_gradients(stub, torch.tensor(1.0), {})
    with torch.no_grad():
        params["opacity"][17, 0] = math.inf
    with pytest.raises(NonFiniteError, match=r"made Gaussian parameters non-finite: opacity \(1 entries\)"):
        System.check_parameters(stub)
