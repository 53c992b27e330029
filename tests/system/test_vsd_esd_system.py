"""VSD and ESD in lucid-gaussian-system on the tiny pipeline: a training step trains the LoRA and only
the LoRA, command-line knobs reach the guidance, and the CPU configs run end to end."""
import os

import pytest
import torch

from threestudio_lucid import compat
from threestudio_lucid.host import launch

CONFIGS = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "custom", "threestudio-lucid", "configs"))


def config_path(kind, cpu=True):
    return os.path.join(CONFIGS, f"lucid-{kind}{'-cpu' if cpu else ''}.yaml")


def tiny_overrides(tiny_sd_path, steps=2):
    return [
        "system.prompt_processor.prompt=a small cube",
        f"system.prompt_processor.pretrained_model_name_or_path={tiny_sd_path}",
        f"system.guidance.pretrained_model_name_or_path={tiny_sd_path}",
        "data.batch_size=2", "data.width=16", "data.height=16", "data.eval_width=16", "data.eval_height=16",
        "data.n_val_views=1", "data.n_test_views=2",
        "system.geometry.init_num_pts=200",
        f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}", "trainer.log_every_n_steps=1",
        f"checkpoint.every_n_train_steps={steps}",
    ]


def build_system(kind, tiny_sd_path, *extra):
    cfg = compat.load_config(config_path(kind), cli_args=[*tiny_overrides(tiny_sd_path), *extra])
    return cfg, compat.find(cfg.system_type)(cfg.system)


def test_training_steps_change_the_lora_and_leave_the_pretrained_weights(in_tmp_cwd, tiny_sd_path):
    from pytorch_lightning import Trainer

    cfg, system = build_system("vsd", tiny_sd_path)
    guidance = system.guidance
    assert guidance.single_model
    trainable = {id(p) for p in guidance.parameters()}
    lora_before = {k: v.detach().clone() for k, v in guidance.state_dict().items()}
    frozen_before = {
        k: v.detach().clone() for k, v in guidance.unet.named_parameters() if id(v) not in trainable
    }
    vae_before = {k: v.detach().clone() for k, v in guidance.vae.named_parameters()}
    optimizers = system.configure_optimizers()
    assert len(optimizers) == 2  # the geometry's Adam and the guidance's AdamW
    assert {id(p) for group in optimizers[1].param_groups for p in group["params"]} == trainable

    iterations = []
    training_step = system.training_step
    system.training_step = lambda batch, batch_idx=0: iterations.append(batch_idx) or training_step(batch, batch_idx)

    dm = compat.find(cfg.data_type)(cfg.data)
    trainer = Trainer(
        max_steps=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        limit_val_batches=0, num_sanity_val_steps=0, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(system, datamodule=dm)
    assert system.global_step == 2

    lora_after = guidance.state_dict()
    lora_b = [k for k in lora_after if k.endswith("lora_B.weight")]
    assert lora_b and all(lora_before[k].abs().sum() == 0 for k in lora_b)  # peft's init: B = 0
    assert sum(bool(lora_after[k].abs().sum() > 0) for k in lora_b) > len(lora_b) // 2
    camera_weight = "camera_embedding.linear_2.weight"
    assert not torch.equal(lora_after[camera_weight], lora_before[camera_weight])
    frozen_after = {k: v for k, v in guidance.unet.named_parameters() if id(v) not in trainable}
    assert frozen_after.keys() == frozen_before.keys()
    assert all(torch.equal(frozen_after[k], frozen_before[k]) for k in frozen_before)
    assert all(torch.equal(v, vae_before[k]) for k, v in guidance.vae.named_parameters())
    # one global step per training iteration although two optimizers step
    assert len(iterations) == 2


@pytest.mark.parametrize(
    "kind, override, expected",
    [
        ("vsd", "system.guidance.guidance_scale_lora=0.5", {"guidance_scale_lora": 0.5}),
        ("esd", "system.guidance.lambda_coeff=0.25", {"lambda_coeff": 0.25}),
    ],
)
def test_command_line_knobs_reach_the_guidance(in_tmp_cwd, tiny_sd_path, kind, override, expected):
    cfg, system = build_system(kind, tiny_sd_path, override)
    guidance = system.guidance
    assert type(guidance).__name__ == {"vsd": "VSDGuidance", "esd": "ESDGuidance"}[kind]
    for key, value in expected.items():
        assert cfg.system.guidance[key] == value and guidance.cfg[key] == value
    scale = expected.get("guidance_scale_lora", 1 - expected.get("lambda_coeff", 0.0))
    assert guidance.guidance_scale_lora == pytest.approx(scale)


def test_esd_rejects_both_knobs_naming_them(in_tmp_cwd, tiny_sd_path, capsys):
    args = ["--config", config_path("esd"), "--train", *tiny_overrides(tiny_sd_path)]
    args.append("system.guidance.guidance_scale_lora=0.5")  # the config already sets lambda_coeff
    assert launch.main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1
    assert "system.guidance.lambda_coeff" in err[0] and "system.guidance.guidance_scale_lora" in err[0]


@pytest.mark.parametrize("kind", ["vsd", "esd"])
def test_cpu_configs_run_end_to_end_with_finite_losses(in_tmp_cwd, tiny_sd_path, kind):
    assert launch.main(["--config", config_path(kind), "--train", *tiny_overrides(tiny_sd_path, steps=2)]) == 0
    base = os.path.join(in_tmp_cwd, "outputs", f"lucid-{kind}-cpu")
    (trial,) = [os.path.join(base, d) for d in os.listdir(base)]
    assert "point_cloud.ply" in os.listdir(os.path.join(trial, "save"))
    metrics = open(os.path.join(trial, "csv_logs", "version_0", "metrics.csv")).read().splitlines()
    header = metrics[0].split(",")
    rows = [dict(zip(header, line.split(","))) for line in metrics[1:]]
    for key in ("train/loss_vsd", "train/loss_lora", "train/loss", "train/grad_norm"):
        values = [float(r[key]) for r in rows if r.get(key)]
        assert values and all(torch.isfinite(torch.tensor(values))), key
    # the checkpoint holds the LoRA and camera embedding, never the frozen UNet
    state = torch.load(os.path.join(trial, "ckpts", "last.ckpt"), weights_only=False)["state_dict"]
    guidance_keys = [k for k in state if k.startswith("guidance.")]
    trainables = ("guidance.lora_layers.", "guidance.camera_embedding.")
    assert guidance_keys and all(k.startswith(trainables) for k in guidance_keys)


def test_mirroring_renders_is_refused_for_camera_conditioned_guidance(in_tmp_cwd, tiny_sd_path):
    from threestudio_lucid.errors import ConfigError

    with pytest.raises(ConfigError, match="guidance_flip_prob"):
        build_system("esd", tiny_sd_path, "system.guidance_flip_prob=0.5")
