"""A LoRA file, in each format, moves the UNet and the text encoder exactly as the adapter it was
saved from: the reference is the peft model that wrote the weights (and, for the UNet, diffusers' own
loader reading the same file). ``lora_scale`` scales the LoRA: 0 is the base model, the output moves
linearly at small scales, 1 is the adapter as trained."""
import pytest
import torch

from personalization_files import (
    TEXT_TARGETS,
    UNET_TARGETS,
    add_random_lora,
    load_models,
    lora_diffusion_module_names,
    peft_pairs,
    write_diffusers_lora,
    write_kohya_lora,
    write_lora_diffusion,
    write_lora_diffusion_pt,
)
from threestudio_lucid.errors import ConfigError
from threestudio_lucid.guidance.diffusion_base import load_stable_diffusion
from threestudio_lucid.personalization import load_text_encoder, read_lora


def unet_output(unet):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g)
    context = torch.randn(1, 77, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([500]), encoder_hidden_states=context).sample


def text_output(text_encoder):
    ids = torch.arange(3, 80).reshape(1, 77)
    with torch.no_grad():
        return text_encoder(ids)[0]


def personalised(model_path, personalization, **options):
    """The guidance's loader (the prompt processor's text side is the same personalize())."""
    return load_stable_diffusion(model_path, torch.float32, personalization=personalization(model_path, **options))


@pytest.fixture
def base_outputs(tiny_sd_path):
    unet, text_encoder = load_models(tiny_sd_path)
    return unet_output(unet), text_output(text_encoder)


def test_diffusers_format_is_the_adapter_it_was_saved_from(tiny_sd_path, personalization, tmp_path, base_outputs):
    unet, text_encoder = load_models(tiny_sd_path)
    add_random_lora(unet, UNET_TARGETS, rank=2, alpha=4, seed=1)  # alpha / r = 2, written as metadata
    add_random_lora(text_encoder, TEXT_TARGETS, rank=2, seed=2)
    folder = write_diffusers_lora(tmp_path / "lora", unet, text_encoder, unet_alpha=4)
    pipe = personalised(tiny_sd_path, personalization, lora_path=folder)
    torch.testing.assert_close(unet_output(pipe.unet), unet_output(unet), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(text_output(pipe.text_encoder), text_output(text_encoder), rtol=1e-4, atol=1e-5)
    assert (unet_output(pipe.unet) - base_outputs[0]).abs().max() > 1e-2
    assert (text_output(pipe.text_encoder) - base_outputs[1]).abs().max() > 1e-2
    # nothing of the adapter is left: plain layers with the LoRA in their weights
    assert not any("lora" in name for name, _ in pipe.unet.named_modules())
    # the prompt processor's text side is the same text encoder
    text = load_text_encoder(personalization(tiny_sd_path, lora_path=folder))
    torch.testing.assert_close(text_output(text.text_encoder), text_output(pipe.text_encoder), rtol=0, atol=0)


def test_older_diffusers_lora_layout_reads_the_same(tiny_sd_path, personalization, tmp_path):
    """diffusers <= 0.20 wrote ``<module>.lora.down.weight`` (UNet) and ``lora_linear_layer`` (text
    encoder) names; diffusers' own converters turn them into peft's."""
    from safetensors.torch import save_file

    from personalization_files import peft_state_dict

    unet, text_encoder = load_models(tiny_sd_path)
    add_random_lora(unet, ["to_q", "to_k", "to_v", "to_out.0"], rank=2, seed=14)
    add_random_lora(text_encoder, TEXT_TARGETS, rank=2, seed=15)
    old = {}
    for prefix, model, down, up in (("unet.", unet, ".lora.down.weight", ".lora.up.weight"),
                                    ("text_encoder.text_model.", text_encoder, ".lora_linear_layer.down.weight",
                                     ".lora_linear_layer.up.weight")):
        for key, value in peft_state_dict(model).items():
            old[prefix + key.replace(".lora_A.weight", down).replace(".lora_B.weight", up)] = value.contiguous()
    save_file(old, str(tmp_path / "old.safetensors"))
    pipe = personalised(tiny_sd_path, personalization, lora_path=str(tmp_path / "old.safetensors"))
    torch.testing.assert_close(unet_output(pipe.unet), unet_output(unet), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(text_output(pipe.text_encoder), text_output(text_encoder), rtol=1e-4, atol=1e-5)


def test_lora_scale_zero_is_the_base_model_and_small_scales_move_the_output_linearly(
    tiny_sd_path, personalization, tmp_path, base_outputs
):
    unet, text_encoder = load_models(tiny_sd_path)
    add_random_lora(unet, UNET_TARGETS, rank=2, seed=3)
    add_random_lora(text_encoder, TEXT_TARGETS, rank=2, seed=4)
    folder = write_diffusers_lora(tmp_path / "lora", unet, text_encoder)
    base_unet, base_text = base_outputs
    off = personalised(tiny_sd_path, personalization, lora_path=folder, lora_scale=0.0)
    assert torch.equal(unet_output(off.unet), base_unet) and torch.equal(text_output(off.text_encoder), base_text)
    eps = 1e-3
    small, double = (unet_output(personalised(tiny_sd_path, personalization, lora_path=folder, lora_scale=s).unet)
                     for s in (eps, 2 * eps))
    move = small - base_unet
    assert move.norm() > 1e-4 * base_unet.norm()
    # first order in the scale: doubling it doubles the move, up to the second-order term (measured: 0.7%
    # of the move at 1e-3, 7% at 1e-2, i.e. proportional to the scale, as a second-order term is)
    assert (double - base_unet - 2 * move).norm() < 0.02 * (2 * move).norm()
    # and a scale between matches the adapter scaled the same way (peft's own layer scaling)
    from peft.tuners.lora import LoraLayer

    for module in unet.modules():
        if isinstance(module, LoraLayer):
            module.scale_layer(0.5)
    half = personalised(tiny_sd_path, personalization, lora_path=folder, lora_scale=0.5)
    torch.testing.assert_close(unet_output(half.unet), unet_output(unet), rtol=1e-4, atol=1e-5)


def test_kohya_format_with_conv_layers_reads_as_diffusers_reads_it(tiny_sd_path, personalization, tmp_path):
    unet, text_encoder = load_models(tiny_sd_path)
    add_random_lora(unet, UNET_TARGETS, rank=2, alpha=1, seed=5)  # kohya's alpha: scale alpha / r = 0.5
    add_random_lora(text_encoder, TEXT_TARGETS, rank=2, alpha=1, seed=6)
    assert any("conv1" in name for name in peft_pairs(unet))
    path = write_kohya_lora(tmp_path / "kohya.safetensors", unet, text_encoder, alpha=1)
    assert read_lora(path, "k").format == "kohya"
    pipe = personalised(tiny_sd_path, personalization, lora_path=path)
    torch.testing.assert_close(unet_output(pipe.unet), unet_output(unet), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(text_output(pipe.text_encoder), text_output(text_encoder), rtol=1e-4, atol=1e-5)
    # diffusers' own reader of kohya files, into a UNet adapter, agrees (the file is what diffusers loads)
    from diffusers import StableDiffusionPipeline

    state_dict, alphas = StableDiffusionPipeline.lora_state_dict(path)
    reference, _ = load_models(tiny_sd_path)
    StableDiffusionPipeline.load_lora_into_unet(state_dict, alphas, reference, adapter_name="diffusers")
    torch.testing.assert_close(unet_output(pipe.unet), unet_output(reference), rtol=1e-4, atol=1e-5)


def test_lora_diffusion_safetensors_with_its_token_in_either_layer_order(tiny_sd_path, personalization, tmp_path):
    """cloneofsimo's format as LucidDreamer loads it (patch_pipe with patch_unet, patch_text, patch_ti,
    then tune_lora_scale 1.0): the UNet's and the text encoder's LoRA by layer order, the token marked <embed>."""
    unet, text_encoder = load_models(tiny_sd_path)
    add_random_lora(unet, lora_diffusion_module_names(unet, "unet"), rank=2, seed=7)
    add_random_lora(text_encoder, lora_diffusion_module_names(text_encoder, "text_encoder"), rank=2, seed=8)
    token = torch.randn(32, generator=torch.Generator().manual_seed(9))
    path = write_lora_diffusion(tmp_path / "lora.safetensors", unet, text_encoder, {"<sks>": token})
    pipe = personalised(tiny_sd_path, personalization, lora_path=path)
    torch.testing.assert_close(unet_output(pipe.unet), unet_output(unet), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(text_output(pipe.text_encoder), text_output(text_encoder), rtol=1e-4, atol=1e-5)
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer.convert_tokens_to_ids("<sks>")], token)
    # a file written when diffusers registered each block's ff before its attn2 (lora_diffusion's days)
    legacy = write_lora_diffusion(tmp_path / "legacy.safetensors", unet, text_encoder, {"<sks>": token}, legacy=True)
    torch.testing.assert_close(unet_output(personalised(tiny_sd_path, personalization, lora_path=legacy).unet),
                               unet_output(pipe.unet), rtol=0, atol=0)
    # its torch format: X.pt, X.text_encoder.pt, X.ti.pt
    pt = write_lora_diffusion_pt(tmp_path / "lora.pt", unet, text_encoder, {"<sks>": token})
    from_pt = personalised(tiny_sd_path, personalization, lora_path=pt)
    torch.testing.assert_close(unet_output(from_pt.unet), unet_output(pipe.unet), rtol=0, atol=0)
    torch.testing.assert_close(text_output(from_pt.text_encoder), text_output(pipe.text_encoder), rtol=0, atol=0)


def test_lora_of_another_model_or_format_is_one_line(tiny_sd_path, sd21_width_path, personalization, tmp_path):
    unet, text_encoder = load_models(sd21_width_path)  # cross-attention and text width 1024, not 32
    add_random_lora(unet, ["to_k"], rank=2, seed=10)
    path = write_kohya_lora(tmp_path / "other.safetensors", unet)
    with pytest.raises(ConfigError) as e:
        personalised(tiny_sd_path, personalization, lora_path=path)
    message = str(e.value)
    assert "\n" not in message and "system.guidance.lora_path=" in message and "does not fit" in message, message

    from safetensors.torch import save_file

    save_file({"lora_unet_not_a_layer.lora_down.weight": torch.zeros(2, 4),
               "lora_unet_not_a_layer.lora_up.weight": torch.zeros(4, 2)}, str(tmp_path / "missing.safetensors"))
    with pytest.raises(ConfigError) as e:
        personalised(tiny_sd_path, personalization, lora_path=str(tmp_path / "missing.safetensors"))
    assert "patches 'not_a_layer', which system.guidance.pretrained_model_name_or_path's unet does not have" in str(e.value)

    save_file({"model.weight": torch.zeros(2, 2)}, str(tmp_path / "unknown.safetensors"))
    with pytest.raises(ConfigError) as e:
        personalised(tiny_sd_path, personalization, lora_path=str(tmp_path / "unknown.safetensors"))
    message = str(e.value)
    assert "\n" not in message and "is not a LoRA file this plugin reads" in message and "kohya" in message

    small, _ = load_models(tiny_sd_path)
    add_random_lora(small, lora_diffusion_module_names(small, "unet")[:5], rank=2, seed=11)
    partial = write_lora_diffusion(tmp_path / "partial.safetensors", small)
    with pytest.raises(ConfigError) as e:
        personalised(tiny_sd_path, personalization, lora_path=partial)
    assert "lora_diffusion unet LoRA has 5 layers that do not match the 63 Linear/Conv2d layers" in str(e.value)


def test_half_precision_weights_get_the_same_tokens_and_lora(tiny_sd_path, personalization, tmp_path):
    """The GPU's fp16 load (half_precision_weights): the token row is the file's in fp16 and the fused
    layers are the fp32 fusion rounded to fp16 (the sum is computed in fp32, then added)."""
    from personalization_files import write_lucid_dreamer_token

    unet, text_encoder = load_models(tiny_sd_path)
    add_random_lora(unet, UNET_TARGETS, rank=2, seed=12)
    add_random_lora(text_encoder, TEXT_TARGETS, rank=2, seed=13)
    folder = write_diffusers_lora(tmp_path / "lora", unet, text_encoder)
    token_file, token = write_lucid_dreamer_token(tmp_path / "token.safetensors", "<cube-token>", 32)
    p = personalization(tiny_sd_path, lora_path=folder, textual_inversion_path=token_file, lora_scale=0.8)
    half = load_stable_diffusion(tiny_sd_path, torch.float16, personalization=p)
    full = load_stable_diffusion(tiny_sd_path, torch.float32, personalization=p)
    assert half.unet.dtype == torch.float16 and half.text_encoder.dtype == torch.float16
    token_id = half.tokenizer.convert_tokens_to_ids("<cube-token>")
    assert torch.equal(half.text_encoder.get_input_embeddings().weight[token_id], token.half())
    for a, b in ((half.unet, full.unet), (half.text_encoder, full.text_encoder)):
        weights_a, weights_b = a.state_dict(), b.state_dict()
        for key in weights_b:
            torch.testing.assert_close(weights_a[key].float(), weights_b[key], rtol=2e-3, atol=2e-3)
