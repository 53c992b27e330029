"""``trainer.precision``: bf16-mixed trains with the renderer in float32 inside Lightning's autocast;
16-mixed (threestudio's ProlificDreamer setting) and the "-true" half precisions are refused in one line,
by the launcher before anything loads and by the system when fit starts (the check that runs inside
threestudio, whose launch.py builds the Trainer after the system)."""
import os

import pytest
import pytorch_lightning as pl
import torch

from threestudio_lucid.host import launch, preflight
from threestudio_lucid.renderer.gaussian_rasterizer import GaussianRasterizer
from threestudio_lucid.trainer_precision import precision_rule

CPU_CONFIG = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "custom", "threestudio-lucid",
                                          "configs", "lucid-sds-cpu.yaml"))


def run_args(tiny_sd_path, precision, steps=2):
    return [
        "--config", CPU_CONFIG, "--train", "system.prompt_processor.prompt=a small cube",
        f"system.prompt_processor.pretrained_model_name_or_path={tiny_sd_path}",
        f"system.guidance.pretrained_model_name_or_path={tiny_sd_path}",
        "data.width=16", "data.height=16", "data.eval_width=16", "data.eval_height=16", "data.n_val_views=1",
        "data.n_test_views=2", "system.geometry.init_num_pts=200", f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={steps}", f"trainer.precision={precision}",
    ]


@pytest.mark.parametrize("precision", ["32", "32-true", "bf16-mixed", "bf16"])
def test_supported_precisions_pass(precision):
    assert precision_rule(precision) == ""


@pytest.mark.parametrize("precision, why", [("16-mixed", "GradScaler"), (16, "GradScaler"),
                                            ("16-true", "16-bit floats"), ("bf16-true", "bf16-bit floats"),
                                            ("64-true", "64-bit floats"), ("8-mixed", "not one of")])
def test_other_precisions_get_the_reason_and_the_fix(precision, why):
    rule = precision_rule(precision)
    assert why in rule and "use trainer.precision=32-true" in rule and "bf16-mixed" in rule


def test_16_mixed_is_refused_before_anything_loads(tmp_path, monkeypatch, tiny_sd_path, capsys):
    monkeypatch.chdir(tmp_path)
    assert launch.main(run_args(tiny_sd_path, "16-mixed")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: trainer.precision='16-mixed' on the command line: cannot train")
    assert not (tmp_path / "outputs").exists()


def test_the_system_refuses_16_mixed_when_fit_starts(tmp_path, monkeypatch, tiny_sd_path, capsys):
    # as inside threestudio: no launcher check before the system sees the Trainer; and as on a GPU:
    # Lightning on the CPU turns 16-mixed into bf16-mixed, so the Trainer here reports what a GPU's would
    monkeypatch.setattr(preflight, "precision_rule", lambda precision: "")
    monkeypatch.setattr(pl.Trainer, "precision", property(lambda trainer: "16-mixed"))
    monkeypatch.chdir(tmp_path)
    assert launch.main(run_args(tiny_sd_path, "32-true")) == 2
    err = capsys.readouterr().err
    assert "error: trainer.precision='16-mixed' cannot train lucid-gaussian-system" in err
    assert "Traceback" not in err


def test_bf16_mixed_trains_with_the_renderer_in_float32(tmp_path, monkeypatch, tiny_sd_path):
    """Lightning's bf16 autocast is on around the training step; the renderer's outputs are float32
    and the run ends with finite Gaussians."""
    seen = []
    forward = GaussianRasterizer.forward

    def spy(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        if self.training:
            seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), out["comp_rgb"].dtype,
                         out["comp_depth"].dtype, out["comp_mask"].dtype))
        return out

    monkeypatch.setattr(GaussianRasterizer, "forward", spy)
    monkeypatch.chdir(tmp_path)
    assert launch.main(run_args(tiny_sd_path, "bf16-mixed")) == 0
    assert len(seen) == 2 and all(s == (True, torch.bfloat16) + (torch.float32,) * 3 for s in seen), seen
    (ckpt,) = tmp_path.glob("outputs/*/*/ckpts/last.ckpt")
    state = torch.load(ckpt, weights_only=False, map_location="cpu")["state_dict"]
    assert state["geometry._xyz"].dtype == torch.float32 and torch.isfinite(state["geometry._xyz"]).all()
