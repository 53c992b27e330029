"""prompt_length: the prompts a threestudio prompt processor encodes, keyed by config key, and the
token-count check (the plugin runs it before threestudio's processor, which would crash)."""
import pytest

from threestudio_lucid import compat
from threestudio_lucid.errors import ConfigError
from threestudio_lucid.prompt_length import check_prompt_lengths, prompt_processor_prompts


@pytest.mark.parametrize(
    "extra",
    [{}, {"view_dependent_prompt_front": True}, {"prompt_back": "the back of a cat", "negative_prompt": "blurry"}],
)
def test_prompts_match_what_the_prompt_processor_encodes(extra, tiny_sd_path, in_tmp_cwd):
    cfg = {"prompt": "a cat", "pretrained_model_name_or_path": str(tiny_sd_path), **extra}
    processor = compat.find("stable-diffusion-prompt-processor")(cfg)
    assert prompt_processor_prompts(cfg) == processor.prompts_by_config_key()


def test_library_prompts_are_left_to_threestudio():
    named = prompt_processor_prompts({"prompt": "lib:corgi_beret", "negative_prompt": "x", "prompt_side": "a side"})
    assert named == {"system.prompt_processor.negative_prompt": "x", "system.prompt_processor.prompt_side": "a side"}


def test_the_first_prompt_over_the_limit_is_named(tiny_sd_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_sd_path), subfolder="tokenizer")
    fits = " ".join(["cat"] * 75)
    check_prompt_lengths(tokenizer, {"a": fits})
    with pytest.raises(ConfigError, match=r"^b 'cat cat.*is 78 tokens long.*at most 75 tokens"):
        check_prompt_lengths(tokenizer, {"a": fits, "b": fits + " cat", "c": fits + " cat cat"})
