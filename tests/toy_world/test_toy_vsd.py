"""VSD/ESD on the toy world: the world's small diffusers UNet is trained in full in place of a LoRA."""
import pytest
import torch

from threestudio_lucid import compat
from threestudio_lucid.errors import ConfigError


def make(world, **cfg):
    base = {
        "pretrained_model_name_or_path": world,
        "pretrained_model_name_or_path_lora": world,
        "lora_unet_subfolder": "estimator_unet",
        "train_full_estimator": True,
        "lambda_coeff": 0.5,
    }
    return compat.find("lucid-esd-guidance")({**base, **cfg})


def test_estimator_is_trained_in_full_next_to_the_exact_prior(toy_world_path, in_tmp_cwd):
    guidance = make(toy_world_path)
    assert not guidance.single_model
    estimator = guidance.unet_lora
    trainable = {id(p) for p in guidance.parameters()}
    assert {id(p) for p in estimator.parameters()} <= trainable  # every estimator weight trains
    assert {id(p) for p in guidance.camera_embedding.parameters()} <= trainable
    assert all(p.requires_grad for p in guidance.parameters())
    pp = compat.find("stable-diffusion-prompt-processor")(
        {"prompt": "a penguin", "pretrained_model_name_or_path": toy_world_path}
    )()
    b = 2
    c2w = torch.eye(4).repeat(b, 1, 1)
    c2w[:, 0, 3] = 4.0
    out = guidance(
        torch.rand(b, 32, 32, 3), pp, torch.zeros(b), torch.zeros(b), torch.full((b,), 4.0),
        mvp_mtx=torch.eye(4).repeat(b, 1, 1), c2w=c2w,
    )
    assert torch.isfinite(out["loss_vsd"]) and torch.isfinite(out["loss_lora"])
    out["loss_lora"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in estimator.parameters())


def test_training_the_pretrained_unet_in_full_is_refused(toy_world_path):
    with pytest.raises(ConfigError, match="train_full_estimator"):
        make(toy_world_path, lora_unet_subfolder="unet")
