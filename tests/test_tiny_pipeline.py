"""The tiny Stable Diffusion pipeline: a real diffusers folder that loads back offline."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from threestudio_lucid.tiny_pipeline import COMMON_WORDS, SD21_BASE_SCHEDULER_CONFIG, build_tiny_stable_diffusion, main

WEIGHT_FILES = (
    "unet/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/model.safetensors",
)


def _weights(path):
    return {name: load_file(os.path.join(path, name)) for name in WEIGHT_FILES}


@pytest.fixture(scope="module")
def pipe(tiny_sd_path):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(tiny_sd_path)


def test_saved_folder_loads_back_offline_as_a_stable_diffusion_pipeline(tiny_sd_path, pipe):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert isinstance(pipe.unet, UNet2DConditionModel)
    assert isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.text_encoder, CLIPTextModel)
    assert isinstance(pipe.tokenizer, CLIPTokenizer)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.safety_checker is None

    for key, value in SD21_BASE_SCHEDULER_CONFIG.items():
        assert pipe.scheduler.config[key] == value, key
    assert pipe.vae_scale_factor == 8
    assert pipe.vae.config.scaling_factor == pytest.approx(0.18215)
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size == 32
    assert pipe.tokenizer.model_max_length == 77
    assert pipe.tokenizer.pad_token == "<|endoftext|>"
    with open(os.path.join(tiny_sd_path, "model_index.json")) as f:
        assert json.load(f)["_class_name"] == "StableDiffusionPipeline"
    # the vocabulary files real SD checkpoints carry (transformers 4's slow tokenizer needs them)
    assert os.path.isfile(os.path.join(tiny_sd_path, "tokenizer", "vocab.json"))
    assert os.path.isfile(os.path.join(tiny_sd_path, "tokenizer", "merges.txt"))


@torch.no_grad()
def test_unet_predicts_noise_shaped_like_the_latents_and_vae_downsamples_by_8(pipe):
    latents = torch.randn(2, 4, 8, 8)
    text = torch.randn(2, 77, 32)
    eps = pipe.unet(latents, torch.tensor([10, 900]), encoder_hidden_states=text).sample
    assert eps.shape == latents.shape
    assert torch.isfinite(eps).all()

    image = torch.rand(1, 3, 64, 64) * 2 - 1
    encoded = pipe.vae.encode(image).latent_dist.mean
    assert encoded.shape == (1, 4, 8, 8)
    assert pipe.vae.decode(encoded).sample.shape == (1, 3, 64, 64)


@torch.no_grad()
def test_any_text_tokenizes_without_unknown_tokens_and_pads_to_77(pipe):
    tok = pipe.tokenizer
    text = "A Hamburger, side view! (42% café) ~ {x}"
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.unk_token_id not in ids[1:-1]
    # whole-word merges exist for view words
    assert "view</w>" in tok.convert_ids_to_tokens(tok("side view").input_ids)

    padded = tok([text, ""], padding="max_length", max_length=tok.model_max_length, return_tensors="pt")
    assert padded.input_ids.shape == (2, 77)
    hidden = pipe.text_encoder(padded.input_ids).last_hidden_state
    assert hidden.shape == (2, 77, 32)


# lucid-ism(-cpu).yaml's negative prompt: 105 characters, about 28 tokens with CLIP ViT-L/14
NEGATIVE_PROMPT = "unrealistic, blurry, low quality, out of focus, ugly, low contrast, dull, low-resolution, oversaturation."


def _text_tokens(tok, text):
    return tok.convert_ids_to_tokens(tok(text, truncation=False).input_ids)[1:-1]


def test_prompts_are_about_as_many_tokens_as_with_clip(pipe):
    tok = pipe.tokenizer
    negative = _text_tokens(tok, NEGATIVE_PROMPT)
    assert len(negative) <= 40, negative
    # a token per word and per punctuation mark, upper case folded as CLIP does
    assert _text_tokens(tok, "a DSLR photo of a corgi wearing a red hat, highly detailed") == [
        f"{w}</w>" for w in "a dslr photo of a corgi wearing a red hat , highly detailed".split()
    ]
    # a rare word falls to a few sub-word pieces, not to single letters
    assert 2 <= len(_text_tokens(tok, "xylophonist")) <= 6


def test_every_common_word_is_one_token_and_the_vocabulary_stays_small(pipe):
    tok = pipe.tokenizer
    split = [w for w in COMMON_WORDS if len(_text_tokens(tok, w)) != 1]
    assert split == []
    for view in ("front", "side", "back", "overhead", "view", "backside"):
        assert view in COMMON_WORDS
    assert len(tok) < 5000  # the text encoder's embedding table is vocab x hidden size


def test_rare_and_unicode_text_has_no_unknown_tokens(pipe):
    tok = pipe.tokenizer
    text = "Zyzzyva quokka naïve Ωmega 日本語のテキスト 🙂 ¿qué? \t\x00 ~~>"
    ids = tok(text, truncation=False).input_ids
    assert tok.unk_token_id not in ids[1:-1]
    assert len(ids) > 10


def test_same_seed_gives_identical_weights_and_another_seed_does_not(tiny_sd_path, tmp_path):
    # the console entry, same seed as the fixture
    assert main([str(tmp_path / "again"), "--seed", "0"]) == 0
    again = _weights(tmp_path / "again")
    original = _weights(tiny_sd_path)
    for name in WEIGHT_FILES:
        assert original[name].keys() == again[name].keys()
        for key in original[name]:
            assert torch.equal(original[name][key], again[name][key]), (name, key)

    other = _weights(build_tiny_stable_diffusion(tmp_path / "seed1", seed=1))
    key = "conv_in.weight"
    assert not torch.equal(original["unet/diffusion_pytorch_model.safetensors"][key],
                           other["unet/diffusion_pytorch_model.safetensors"][key])


def test_sd21_base_architecture_has_the_real_checkpoints_parameter_counts():
    """The random real-size pipeline (scripts/gpu_check.sh) is Stable Diffusion 2.1-base's architecture:
    every model has exactly the parameter count of the published checkpoint (built on the meta device,
    so nothing is allocated)."""
    from threestudio_lucid.tiny_pipeline import SD21_BASE_PARAMETER_COUNTS, build_sd21_base_components

    with torch.device("meta"):
        parts = build_sd21_base_components()
    counts = {name: sum(p.numel() for p in parts[name].parameters()) for name in SD21_BASE_PARAMETER_COUNTS}
    assert counts == {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840}
    assert parts["unet"].config.cross_attention_dim == parts["text_encoder"].config.hidden_size == 1024
    # every token id of the tiny tokenizer is an embedding row of the real-size text encoder
    assert len(parts["tokenizer"]) <= parts["text_encoder"].config.vocab_size


def test_build_stable_diffusion_rejects_an_unknown_architecture_and_saves_in_the_asked_dtype(tmp_path):
    from threestudio_lucid.tiny_pipeline import build_stable_diffusion

    with pytest.raises(ValueError, match="architecture='sd15' is not one of tiny, sd21-base"):
        build_stable_diffusion(tmp_path / "x", "sd15")
    path = build_stable_diffusion(tmp_path / "half", "tiny", dtype=torch.float16)
    for part in ("unet", "vae", "text_encoder"):
        (weights,) = [f for f in os.listdir(os.path.join(path, part)) if f.endswith(".safetensors")]
        stored = load_file(os.path.join(path, part, weights))
        assert {t.dtype for t in stored.values()} == {torch.float16}, part
