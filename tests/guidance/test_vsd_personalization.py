"""VSD/ESD on a personalised model: the estimator starts from the personalised UNet. Single model: the
pretrained score (adapters off) is the personalised UNet, and VSD's own LoRA sits on top of it. Separate
model: the personal LoRA is fused into the estimator's base UNet too."""
import pytest
import torch

from threestudio_lucid import compat


def unet_output(unet, cross_width=32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g)
    context = torch.randn(1, 77, cross_width, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([300]), encoder_hidden_states=context).sample


@pytest.fixture(scope="module")
def lora_file(tiny_sd_path, tmp_path_factory):
    """A diffusers-format UNet LoRA (written by ``save_lora_weights`` from a random peft adapter) and the
    adapter's (down, up) of one layer."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    unet = UNet2DConditionModel.from_pretrained(tiny_sd_path, subfolder="unet")
    inject_adapter_in_model(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_v"]), unet, adapter_name="w")
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    folder = tmp_path_factory.mktemp("vsd-lora")
    StableDiffusionPipeline.save_lora_weights(str(folder), unet_lora_layers=get_peft_model_state_dict(unet, adapter_name="w"))
    layer = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    return str(folder), (layer.lora_A["w"].weight.detach().clone(), layer.lora_B["w"].weight.detach().clone())


def personalised_unet(tiny_sd_path, lora):
    from threestudio_lucid.guidance.diffusion_base import load_stable_diffusion
    from threestudio_lucid.personalization import Personalization

    p = Personalization(tiny_sd_path, None, (), lora, 0.5, "system.guidance.")
    return load_stable_diffusion(tiny_sd_path, torch.float32, personalization=p).unet


@pytest.mark.parametrize("name", ["lucid-vsd-guidance", "lucid-esd-guidance"])
def test_single_model_pretrained_score_is_the_personalised_unet(tiny_sd_path, lora_file, name):
    lora, _ = lora_file
    guidance = compat.find(name)({"pretrained_model_name_or_path": tiny_sd_path,
                                  "pretrained_model_name_or_path_lora": tiny_sd_path,
                                  "lora_path": lora, "lora_scale": 0.5})
    assert guidance.single_model
    reference = personalised_unet(tiny_sd_path, lora)
    from diffusers import UNet2DConditionModel

    base = UNet2DConditionModel.from_pretrained(tiny_sd_path, subfolder="unet")
    assert (unet_output(reference) - unet_output(base)).abs().max() > 1e-3  # the LoRA is in it
    with guidance.pretrained_unet() as unet:
        torch.testing.assert_close(unet_output(unet), unet_output(reference), rtol=0, atol=1e-6)
    # VSD's own adapter is on that UNet and is what the guidance trains
    assert guidance.lora_layers and all(p.requires_grad for p in guidance.parameters())


def test_separate_estimator_gets_the_personal_lora_fused_too(tiny_sd_path, v_prediction_sd_path, lora_file):
    from diffusers import UNet2DConditionModel

    lora, (down, up) = lora_file
    guidance = compat.find("lucid-vsd-guidance")({"pretrained_model_name_or_path": tiny_sd_path,
                                                  "pretrained_model_name_or_path_lora": v_prediction_sd_path,
                                                  "lora_path": lora, "lora_scale": 0.5})
    assert not guidance.single_model
    base = UNet2DConditionModel.from_pretrained(v_prediction_sd_path, subfolder="unet")
    expected = base.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.weight + 0.5 * up @ down
    fused = guidance.unet_lora.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.base_layer.weight
    torch.testing.assert_close(fused, expected, rtol=0, atol=1e-6)
    with guidance.pretrained_unet() as unet:
        torch.testing.assert_close(unet_output(unet), unet_output(personalised_unet(tiny_sd_path, lora)), rtol=0, atol=1e-6)
