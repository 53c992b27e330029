"""lucid-gaussian-system end to end on the tiny pipeline: outputs, loss weighting, densify + resume,
and the missing-model error of the GPU config."""
import os
import time

import pytorch_lightning as pl
import torch

from threestudio_lucid.host import launch

from small_runs import CPU_CONFIG, small_run_args, trial_dirs

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "custom", "threestudio-lucid", "configs")
GPU_CONFIG = os.path.abspath(os.path.join(CONFIGS, "lucid-sds.yaml"))


def test_cpu_demo_writes_ply_video_checkpoint_and_resumes_after_densification(run_dir, tiny_sd_path):
    # densify at step 2 with a zero threshold: every visible point clones or splits
    densify = [
        "system.geometry.densify_from_iter=1", "system.geometry.densification_interval=2",
        "system.geometry.densify_until_iter=3", "system.geometry.densify_grad_threshold=0.0",
        "system.geometry.prune_from_iter=1000", "system.geometry.max_num=100000",
        "system.loss.lambda_tv=0.1", "system.loss.lambda_scales=[0, 0.0, 1.0, 4]",
    ]
    assert launch.main(small_run_args(tiny_sd_path, 4, *densify)) == 0
    (trial,) = trial_dirs(run_dir)
    save = os.listdir(os.path.join(trial, "save"))
    assert {"point_cloud.ply", "it4-test.mp4", "it4-0.png"} <= set(save)
    ckpt_path = os.path.join(trial, "ckpts", "last.ckpt")
    ckpt = torch.load(ckpt_path, weights_only=False)
    n = ckpt["state_dict"]["geometry._xyz"].shape[0]
    assert n > 300  # densification grew the cloud
    assert ckpt["global_step"] == 4
    metrics = open(os.path.join(trial, "csv_logs", "version_0", "metrics.csv")).read()
    header = metrics.splitlines()[0].split(",")
    for key in ("train/loss_sds", "train/grad_norm", "train/loss_tv", "train/loss_scales", "train_params/lambda_scales"):
        assert key in header, key
    rows = [dict(zip(header, line.split(","))) for line in metrics.splitlines()[1:]]
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert losses and all(torch.isfinite(torch.tensor(losses)))

    from plyfile import PlyData

    assert len(PlyData.read(os.path.join(trial, "save", "point_cloud.ply"))["vertex"]) == n

    # resume: the geometry is rebuilt with the checkpoint's count and training continues
    assert launch.main(small_run_args(tiny_sd_path, 6, *densify[:-2], f"resume={ckpt_path}",
                                      "system.geometry.densify_until_iter=0")) == 0
    resumed = [d for d in trial_dirs(run_dir) if d != trial][0]
    ckpt2 = torch.load(os.path.join(resumed, "ckpts", "last.ckpt"), weights_only=False)
    assert ckpt2["global_step"] == 6
    assert ckpt2["state_dict"]["geometry._xyz"].shape[0] == n
    assert not torch.equal(ckpt2["state_dict"]["geometry._xyz"], ckpt["state_dict"]["geometry._xyz"])


def test_gpu_config_without_model_fails_fast_naming_the_key(run_dir, capsys):
    start = time.time()
    code = launch.main(["--config", GPU_CONFIG, "--train", "system.prompt_processor.prompt=a cat"])
    elapsed = time.time() - start
    stderr = capsys.readouterr().err
    err = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and len(err) == 1 and "Traceback" not in stderr
    assert "pretrained_model_name_or_path" in err[0] and "local diffusers folder" in err[0]
    assert elapsed < 30


def test_missing_loss_weight_is_named(run_dir, tiny_sd_path, capsys):
    text = open(CPU_CONFIG).read()
    assert "    lambda_sds: 0.1\n" in text
    (run_dir / "no_lambda.yaml").write_text(text.replace("    lambda_sds: 0.1\n", ""))
    args = small_run_args(tiny_sd_path, 1)
    args[1] = str(run_dir / "no_lambda.yaml")
    code = launch.main(args)
    err = capsys.readouterr().err
    assert code == 2 and "system.loss.lambda_sds" in err


def test_typecheck_flag_runs_the_pipeline_under_jaxtyping_and_beartype(run_dir, tiny_sd_path):
    import shutil
    import subprocess
    import sys

    exe = shutil.which("lucid-launch") or os.path.join(os.path.dirname(sys.executable), "lucid-launch")
    args = small_run_args(tiny_sd_path, 1)
    proc = subprocess.run([exe, "--typecheck", *args], cwd=run_dir, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (trial,) = trial_dirs(run_dir)
    assert os.path.exists(os.path.join(trial, "save", "point_cloud.ply"))


def _register_object_guidance():
    """A guidance that is a plain ``BaseObject``, not a torch module, as threestudio's own
    stable-diffusion, deepfloyd and zero123 guidances are: no ``parameters()``, no ``state_dict``."""
    from dataclasses import dataclass

    from threestudio_lucid import compat

    name = "test-object-sds-guidance"
    if name not in compat.threestudio.__modules__:

        @compat.register(name)
        class ObjectSDSGuidance(compat.BaseObject):
            @dataclass
            class Config(compat.BaseObject.Config):
                pretrained_model_name_or_path: str = ""
                guidance_scale: float = 100.0
                min_step_percent: float = 0.02
                max_step_percent: float = 0.98

            def configure(self):
                self.sds = compat.find("lucid-sds-guidance")(compat.config_to_primitive(self.cfg))

            def __call__(self, rgb, prompt_utils, elevation, azimuth, camera_distances, **kwargs):
                return self.sds(rgb, prompt_utils, elevation, azimuth, camera_distances)

        assert not isinstance(ObjectSDSGuidance, torch.nn.Module)
    return name


def test_system_accepts_a_guidance_that_is_not_a_torch_module(run_dir, tiny_sd_path):
    name = _register_object_guidance()
    assert launch.main(small_run_args(tiny_sd_path, 2, f"system.guidance_type={name}")) == 0
    (trial,) = trial_dirs(run_dir)
    assert os.path.isfile(os.path.join(trial, "save", "point_cloud.ply"))
    assert "train/loss_sds" in open(os.path.join(trial, "csv_logs", "version_0", "metrics.csv")).readline()


def test_metrics_are_logged_every_log_every_n_steps_in_one_call(run_dir, tiny_sd_path, monkeypatch):
    # Lightning's self.log costs more than a small step's compositing: the system logs only on the steps
    # Lightning writes, all values in one log_dict
    calls = []
    real_log_dict = pl.LightningModule.log_dict
    monkeypatch.setattr(pl.LightningModule, "log_dict",
                        lambda self, values, **kw: calls.append(sorted(values)) or real_log_dict(self, values, **kw))
    assert launch.main(small_run_args(tiny_sd_path, 6, "trainer.log_every_n_steps=3")) == 0
    (trial,) = trial_dirs(run_dir)
    rows = open(os.path.join(trial, "csv_logs", "version_0", "metrics.csv")).read().splitlines()
    header = rows[0].split(",")
    steps = [int(dict(zip(header, r.split(",")))["step"]) for r in rows[1:] if dict(zip(header, r.split(",")))["train/loss"]]
    assert steps == [2, 5]
    assert len(calls) == 4  # two logged steps, each: the values, then the progress-bar pair
    assert calls[1] == calls[3] == ["gauss_num", "train/loss"]
    assert {"train/loss_sds", "train_params/lambda_sds"} <= set(calls[0]) and calls[0] == calls[2]
