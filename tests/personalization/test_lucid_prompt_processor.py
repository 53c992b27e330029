"""``lucid-stable-diffusion-prompt-processor``: threestudio's options plus the personalisation, a
learned token changes the embeddings, and the cache tells a prompt with a loaded token or LoRA (and its
scale) from the same text without it."""
import dataclasses
import os

import pytest
import torch

from personalization_files import TEXT_TARGETS, add_random_lora, load_models, write_diffusers_lora, write_lucid_dreamer_token
from threestudio_lucid import compat
from threestudio_lucid.errors import ConfigError

PROCESSOR = "lucid-stable-diffusion-prompt-processor"
PROMPT = "a photo of <cube-token>"


def make(model, **cfg):
    return compat.find(PROCESSOR)({"pretrained_model_name_or_path": model, "prompt": PROMPT, "spawn": False, **cfg})


def test_config_is_threestudios_plus_the_personalisation_keys():
    ours = {f.name: f.default for f in dataclasses.fields(compat.find(PROCESSOR).Config)}
    theirs = {f.name: f.default for f in dataclasses.fields(compat.PromptProcessor.Config)}
    assert {k: ours[k] for k in theirs} == theirs
    assert {k: v for k, v in ours.items() if k not in theirs} == {
        "textual_inversion_path": None, "lora_path": None, "lora_scale": 1.0, "base_model": None,
    }
    guidance_fields = {f.name for f in dataclasses.fields(compat.find("lucid-ism-guidance").Config)}
    assert {"textual_inversion_path", "lora_path", "lora_scale", "base_model"} <= guidance_fields


def test_token_changes_the_embeddings_and_the_cache_keeps_them_apart(tiny_sd_path, tmp_path, in_tmp_cwd):
    token_file, _ = write_lucid_dreamer_token(tmp_path / "token.safetensors", "<cube-token>", 32)
    plain, with_token = make(tiny_sd_path), make(tiny_sd_path, textual_inversion_path=token_file)
    assert (with_token.text_embeddings - plain.text_embeddings).abs().max() > 1e-2
    assert with_token.cache_path(PROMPT) != plain.cache_path(PROMPT)
    # threestudio's own key when nothing is loaded (shared with its stable-diffusion-prompt-processor)
    from threestudio_lucid.prompt_processor.stable_diffusion_prompt_processor import hash_prompt

    assert os.path.basename(plain.cache_path(PROMPT)) == f"{hash_prompt(tiny_sd_path, PROMPT)}.pt"
    # a second run with the token reads its own entries back
    again = make(tiny_sd_path, textual_inversion_path=token_file)
    assert again.prompts_computed == []
    torch.testing.assert_close(again.text_embeddings_vd, with_token.text_embeddings_vd, rtol=0, atol=0)
    # another file at the same path is another key: recomputed, not the old embedding
    write_lucid_dreamer_token(tmp_path / "token.safetensors", "<cube-token>", 32, seed=5)
    retrained = make(tiny_sd_path, textual_inversion_path=token_file)
    assert PROMPT in retrained.prompts_computed
    assert (retrained.text_embeddings - with_token.text_embeddings).abs().max() > 1e-2
    # the unconditional (empty) prompt is unchanged by a token it does not name
    torch.testing.assert_close(retrained.uncond_text_embeddings, plain.uncond_text_embeddings, rtol=0, atol=1e-6)


def test_lora_and_its_scale_are_in_the_cache_key(tiny_sd_path, tmp_path, in_tmp_cwd):
    _, text_encoder = load_models(tiny_sd_path)
    add_random_lora(text_encoder, TEXT_TARGETS, rank=2, seed=1)
    folder = write_diffusers_lora(tmp_path / "lora", text_encoder=text_encoder)
    full, half, off = (make(tiny_sd_path, prompt="a small cube", lora_path=folder, lora_scale=s) for s in (1.0, 0.5, 0.0))
    plain = make(tiny_sd_path, prompt="a small cube")
    assert len({p.cache_path("a small cube") for p in (full, half, off, plain)}) == 4
    assert all(p.prompts_computed for p in (full, half, off))
    torch.testing.assert_close(off.text_embeddings, plain.text_embeddings, rtol=0, atol=0)
    for a, b in ((full, half), (half, off)):
        assert (a.text_embeddings - b.text_embeddings).abs().max() > 1e-3


def test_guidance_and_prompt_processor_encode_a_personalised_prompt_alike(tiny_sd_path, tmp_path, in_tmp_cwd):
    """ISM encodes its inversion prompt itself; with the same token file and LoRA it must get the
    processor's embedding of the same text: one loader, one text encoder."""
    token_file, _ = write_lucid_dreamer_token(tmp_path / "token.safetensors", "<cube-token>", 32)
    _, text_encoder = load_models(tiny_sd_path)
    add_random_lora(text_encoder, TEXT_TARGETS, rank=2, seed=2)
    lora = write_diffusers_lora(tmp_path / "lora", text_encoder=text_encoder)
    options = {"textual_inversion_path": [token_file], "lora_path": lora, "lora_scale": 0.7}
    processor = make(tiny_sd_path, **options)
    guidance = compat.find("lucid-ism-guidance")(
        {"pretrained_model_name_or_path": tiny_sd_path, "inverse_text": PROMPT, **options}
    )
    torch.testing.assert_close(guidance.extra_text_embeddings["inverse_text"], processor.text_embeddings, rtol=0, atol=1e-6)


def test_encoding_in_a_spawned_child_as_threestudio_does(tiny_sd_path, tmp_path, in_tmp_cwd):
    """spawn=true (threestudio's default): the child imports the plugin by module name, loads the
    token and writes the cache; the embeddings are the in-process ones."""
    token_file, _ = write_lucid_dreamer_token(tmp_path / "token.safetensors", "<cube-token>", 32)
    spawned = make(tiny_sd_path, textual_inversion_path=token_file, spawn=True)
    assert spawned.prompts_computed
    in_process = make(tiny_sd_path, textual_inversion_path=token_file, use_cache=False)
    torch.testing.assert_close(spawned.text_embeddings_vd, in_process.text_embeddings_vd, rtol=0, atol=0)


def test_an_error_in_the_encoding_child_comes_back_as_its_one_line(tiny_sd_path, tmp_path, personalization):
    from threestudio_lucid.prompt_processor.stable_diffusion_prompt_processor import EncodingJob, _encode_in_child

    wide, _ = write_lucid_dreamer_token(tmp_path / "wide.safetensors", "<wide>", 1024)
    job = EncodingJob(personalization(tiny_sd_path, prefix="system.prompt_processor.", textual_inversion_path=wide),
                      ["a <wide>"], {"system.prompt_processor.prompt": "a <wide>"}, [str(tmp_path / "x.pt")], None)

    class Results(list):
        put = list.append

    results = Results()
    _encode_in_child(job, results)
    assert len(results) == 1 and "\n" not in results[0]
    assert "system.prompt_processor.textual_inversion_path=" in results[0] and "is 1024-wide" in results[0]
    assert not os.path.exists(tmp_path / "x.pt")


def test_prompt_too_long_counts_multi_vector_tokens(tiny_sd_path, tmp_path, in_tmp_cwd):
    from safetensors.torch import save_file

    save_file({"<long>": torch.randn(40, 32)}, str(tmp_path / "long.safetensors"))  # one token, 40 vectors
    prompt = "a <long> " + "cube " * 36  # 38 tokens as text; 1 + 40 + 36 vectors + start and end = 79 > 77
    with pytest.raises(ConfigError) as e:
        make(tiny_sd_path, prompt=prompt, textual_inversion_path=str(tmp_path / "long.safetensors"))
    assert "\n" not in str(e.value) and str(e.value).startswith("system.prompt_processor.prompt ")
