"""A whole fine-tuned SD in one original-layout file (LucidDreamer's ``is_safe_tensor`` +
``base_model_key``): the guidance and the prompt processor load it through ``from_single_file`` with
``base_model``, and get exactly the folder it was written from."""
import os

import pytest
import torch

from original_sd_layout import save_single_file
from threestudio_lucid import compat
from threestudio_lucid.errors import ConfigError


@pytest.fixture(scope="module")
def single_files(tiny_sd_path, tmp_path_factory):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_path, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)
    folder = tmp_path_factory.mktemp("single-file")
    return {suffix: save_single_file(pipe, folder / f"fine-tuned{suffix}") for suffix in (".safetensors", ".ckpt")}


def guidance(model, **options):
    return compat.find("lucid-sds-guidance")({"pretrained_model_name_or_path": model, **options})


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_single_file_guidance_equals_the_folder_it_was_saved_from(tiny_sd_path, single_files, suffix):
    from_file, from_folder = guidance(single_files[suffix], base_model=tiny_sd_path), guidance(tiny_sd_path)
    for part in ("unet", "vae"):
        a, b = getattr(from_file, part).state_dict(), getattr(from_folder, part).state_dict()
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (part, key)
    assert dict(from_file.scheduler.config) == dict(from_folder.scheduler.config)
    assert torch.equal(from_file.alphas_cumprod, from_folder.alphas_cumprod)


def test_single_file_prompt_processor_embeddings_equal_the_folders(tiny_sd_path, single_files, in_tmp_cwd):
    processor = compat.find("lucid-stable-diffusion-prompt-processor")
    common = {"prompt": "a small cube", "negative_prompt": "blurry", "spawn": False}
    from_file = processor({"pretrained_model_name_or_path": single_files[".safetensors"], "base_model": tiny_sd_path,
                           **common})
    from_folder = processor({"pretrained_model_name_or_path": tiny_sd_path, **common})
    assert from_file.cache_path("a small cube") != from_folder.cache_path("a small cube")  # the key names the file
    torch.testing.assert_close(from_file.text_embeddings_vd, from_folder.text_embeddings_vd, rtol=0, atol=0)
    torch.testing.assert_close(from_file.uncond_text_embeddings, from_folder.uncond_text_embeddings, rtol=0, atol=0)


def test_single_file_without_base_model_says_to_set_it(single_files, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # diffusers would otherwise fetch the configs of the family it guesses
    with pytest.raises(ConfigError) as e:
        guidance(single_files[".safetensors"])
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"system.guidance.pretrained_model_name_or_path='{single_files['.safetensors']}' is a "
                              "single-file checkpoint")
    assert "set system.guidance.base_model to the diffusers folder or hub id it was fine-tuned from" in message


def test_base_model_that_is_not_a_folder_is_named(single_files, tmp_path):
    with pytest.raises(ConfigError) as e:
        guidance(single_files[".safetensors"], base_model=os.path.join(str(tmp_path), "missing"))
    assert "system.guidance.base_model=" in str(e.value) and "is not a folder" in str(e.value)


def test_base_model_not_on_this_machine_is_named(single_files, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as e:
        guidance(single_files[".safetensors"], base_model="load/no-such-model")
    assert str(e.value).startswith("system.guidance.base_model='load/no-such-model' is not a local folder nor in the "
                                   "Hugging Face cache")
