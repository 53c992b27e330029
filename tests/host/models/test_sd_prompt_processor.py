"""The bundled ``stable-diffusion-prompt-processor``: view-dependent prompts, the embedding cache and
Perp-Neg, checked against the tiny pipeline's text encoder run directly."""
import hashlib
import json
import math
import os

import pytest
import torch

from threestudio_lucid.errors import ConfigError
from threestudio_lucid.host import find
from threestudio_lucid.host.models.prompt_processors.base import PromptProcessorOutput
from threestudio_lucid.host.models.prompt_processors.stable_diffusion_prompt_processor import (
    StableDiffusionPromptProcessor,
)

PROCESSOR = "stable-diffusion-prompt-processor"
SIDE, FRONT, BACK, OVERHEAD = 0, 1, 2, 3
CACHE_DIR = os.path.join(".threestudio_cache", "text_embeddings")


def make_processor(model_path, **cfg):
    """Built as threestudio systems build it: ``find(type)(cfg)``."""
    cfg = {"prompt": "a cat", "negative_prompt": "blurry", "pretrained_model_name_or_path": model_path, **cfg}
    return find(PROCESSOR)(cfg)


def cameras(*elevation_azimuth):
    elevation = torch.tensor([float(e) for e, _ in elevation_azimuth])
    azimuth = torch.tensor([float(a) for _, a in elevation_azimuth])
    return elevation, azimuth, torch.full_like(elevation, 1.5)


@pytest.fixture(scope="module")
def encode(tiny_sd_path):
    """The tiny checkpoint's tokenizer + CLIP text encoder, run directly (the oracle)."""
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny_sd_path, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(tiny_sd_path, subfolder="text_encoder").eval()

    @torch.no_grad()
    def run(prompts):
        ids = tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids
        return text_encoder(ids).last_hidden_state

    return run


@pytest.fixture(scope="module")
def cat_processor(tiny_sd_path, tmp_path_factory):
    """One processor with the default config, built in its own working directory."""
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    try:
        return make_processor(tiny_sd_path)
    finally:
        os.chdir(previous)


def test_config_defaults_are_threestudios():
    cfg = StableDiffusionPromptProcessor.Config()
    assert cfg.prompt == "a hamburger"
    assert cfg.negative_prompt == ""
    assert cfg.pretrained_model_name_or_path == "runwayml/stable-diffusion-v1-5"
    assert (cfg.overhead_threshold, cfg.front_threshold, cfg.back_threshold) == (60.0, 45.0, 45.0)
    assert cfg.view_dependent_prompt_front is False
    assert cfg.use_cache is True and cfg.spawn is True
    assert cfg.use_perp_neg is False
    assert tuple(cfg.perp_neg_f_sb) == (1, 0.5, -0.606)
    assert tuple(cfg.perp_neg_f_fsb) == (1, 0.5, 0.967)
    assert tuple(cfg.perp_neg_f_fs) == (4, 0.5, -2.426)
    assert tuple(cfg.perp_neg_f_sf) == (4, 0.5, -2.426)
    assert cfg.use_prompt_debiasing is False
    assert cfg.pretrained_model_name_or_path_prompt_debiasing == "bert-base-uncased"
    assert cfg.prompt_debiasing_mask_ids is None


def test_embeddings_are_cond_then_uncond_of_the_view_prompts(cat_processor, encode):
    prompt_utils = cat_processor()
    assert isinstance(prompt_utils, PromptProcessorOutput)
    # front, side, back, overhead
    embeddings = prompt_utils.get_text_embeddings(*cameras((0, 0), (0, 90), (0, 180), (70, 0)))
    assert embeddings.shape == (8, 77, 32)

    expected_cond = encode(["a cat, front view", "a cat, side view", "a cat, back view", "a cat, overhead view"])
    expected_uncond = encode(["blurry"] * 4)
    torch.testing.assert_close(embeddings[:4], expected_cond, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(embeddings[4:], expected_uncond, atol=1e-5, rtol=1e-5)


def test_negative_prompt_is_the_unconditional_embedding_of_every_view(cat_processor, encode):
    prompt_utils = cat_processor()
    blurry = encode(["blurry"])
    assert prompt_utils.uncond_text_embeddings.shape == (1, 77, 32)
    torch.testing.assert_close(prompt_utils.uncond_text_embeddings, blurry, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(prompt_utils.uncond_text_embeddings_vd, blurry.expand(4, -1, -1), atol=1e-5, rtol=1e-5)
    assert cat_processor.negative_prompts_vd == ["blurry"] * 4
    # and an unrelated prompt differs, so the comparisons above mean something
    assert not torch.allclose(encode(["sharp"]), blurry, atol=1e-3)


@pytest.mark.parametrize(
    "elevation, azimuth, expected",
    [
        (0, 0, FRONT),
        (0, 90, SIDE),
        (0, -90, SIDE),
        (0, 180, BACK),
        (0, -180, BACK),
        (70, 0, OVERHEAD),
        (70, 180, OVERHEAD),
        # edges: every threshold comparison is strict
        (60, 0, FRONT),
        (60.01, 0, OVERHEAD),
        (0, 45, SIDE),
        (0, -45, SIDE),
        (0, 44.99, FRONT),
        (0, -44.99, FRONT),
        (0, 135, SIDE),
        (0, -135, SIDE),
        (0, 135.01, BACK),
        (0, -135.01, BACK),
        # azimuths wrap around
        (0, 360, FRONT),
        (0, 400, FRONT),
        (0, -270, SIDE),
        (0, 540, BACK),
    ],
)
def test_direction_follows_default_thresholds(cat_processor, elevation, azimuth, expected):
    prompt_utils = cat_processor()
    cams = cameras((elevation, azimuth))
    assert prompt_utils.get_direction_indices(*cams).tolist() == [expected]
    embeddings = prompt_utils.get_text_embeddings(*cams)
    assert torch.equal(embeddings[0], prompt_utils.text_embeddings_vd[expected])
    assert torch.equal(embeddings[1], prompt_utils.uncond_text_embeddings_vd[expected])


def test_direction_names_and_order_are_threestudios(cat_processor):
    prompt_utils = cat_processor()
    assert [d.name for d in prompt_utils.directions] == ["side", "front", "back", "overhead"]
    assert prompt_utils.direction2idx == {"side": 0, "front": 1, "back": 2, "overhead": 3}


def test_view_dependent_prompt_strings(cat_processor, tiny_sd_path, in_tmp_cwd):
    assert cat_processor.prompts_vd == [
        "a cat, side view",
        "a cat, front view",
        "a cat, back view",
        "a cat, overhead view",
    ]
    front_style = make_processor(tiny_sd_path, view_dependent_prompt_front=True, prompt_back="the cat's tail")
    assert front_style().prompts_vd == [
        "side view of a cat",
        "front view of a cat",
        "the cat's tail",  # a hand-written view prompt is used verbatim
        "overhead view of a cat",
    ]
    assert front_style().prompt == "a cat"


def test_thresholds_come_from_the_config(tiny_sd_path, in_tmp_cwd):
    processor = make_processor(tiny_sd_path, front_threshold=30, back_threshold=30, overhead_threshold=80)
    idx = processor().get_direction_indices(*cameras((0, 40), (0, 20), (0, 140), (0, 160), (70, 0), (85, 0)))
    assert idx.tolist() == [SIDE, FRONT, SIDE, BACK, FRONT, OVERHEAD]


def test_cache_files_appear_and_second_construction_hits_the_cache(tiny_sd_path, in_tmp_cwd, monkeypatch):
    first = make_processor(tiny_sd_path)
    unique_prompts = [
        "a cat", "blurry", "a cat, side view", "a cat, front view", "a cat, back view", "a cat, overhead view",
    ]
    assert first.prompts_computed == unique_prompts

    expected_files = {hashlib.md5(f"{tiny_sd_path}-{p}".encode()).hexdigest() + ".pt" for p in unique_prompts}
    assert set(os.listdir(in_tmp_cwd / CACHE_DIR)) == expected_files
    for name in expected_files:
        cached = torch.load(in_tmp_cwd / CACHE_DIR / name)
        assert cached.shape == (77, 32)
        assert cached.untyped_storage().nbytes() == 77 * 32 * 4  # one row, not the whole batch

    def no_encoder(*args, **kwargs):
        raise AssertionError("the text encoder ran although every embedding was cached")

    with monkeypatch.context() as patch:  # (monkeypatch.undo() would also undo in_tmp_cwd's chdir)
        patch.setattr(StableDiffusionPromptProcessor, "spawn_func", staticmethod(no_encoder))
        second = make_processor(tiny_sd_path)
    assert second.prompts_computed == []
    assert torch.equal(second.text_embeddings_vd, first.text_embeddings_vd)
    assert torch.equal(second.uncond_text_embeddings, first.uncond_text_embeddings)

    # a new prompt encodes only what is missing; use_cache=False encodes everything again
    third = make_processor(tiny_sd_path, negative_prompt="")
    assert third.prompts_computed == [""]
    fourth = make_processor(tiny_sd_path, use_cache=False)
    assert fourth.prompts_computed == unique_prompts


def test_without_view_dependent_prompting_every_view_gets_the_plain_prompt(cat_processor, encode):
    prompt_utils = cat_processor()
    cams = cameras((0, 0), (0, 90), (0, 180), (70, 0))
    embeddings = prompt_utils.get_text_embeddings(*cams, view_dependent_prompting=False)
    assert embeddings.shape == (8, 77, 32)
    torch.testing.assert_close(embeddings[:4], encode(["a cat"]).expand(4, -1, -1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(embeddings[4:], encode(["blurry"]).expand(4, -1, -1), atol=1e-5, rtol=1e-5)


def _perp_neg_oracle(prompt_utils, elevation, azimuth, distances):
    """threestudio's Perp-Neg, camera by camera, written out from its formula."""

    def f(abc, r):
        a, b, c = abc
        return a * math.exp(-b * r) + c

    side, front, back, overhead = prompt_utils.text_embeddings_vd
    directions = prompt_utils.get_direction_indices(elevation, azimuth, distances)
    pos, uncond, neg, weights = [], [], [], []
    for d, az in zip(directions.tolist(), azimuth.tolist()):
        a = abs((az + 180) % 360 - 180)
        uncond.append(prompt_utils.uncond_text_embeddings_vd[d])
        if d == OVERHEAD:
            pos.append(overhead)
            neg += [prompt_utils.uncond_text_embeddings_vd[d]] * 2
            weights.append([0.0, 0.0])
        elif a < 90:
            r = 1 - a / 90
            pos.append(r * front + (1 - r) * side)
            neg += [front, side]
            weights.append([-f(prompt_utils.perp_neg_f_fs, r), -f(prompt_utils.perp_neg_f_sf, 1 - r)])
        else:
            r = 2 - a / 90
            pos.append(r * side + (1 - r) * back)
            neg += [side, front]
            weights.append([-f(prompt_utils.perp_neg_f_sb, r), -f(prompt_utils.perp_neg_f_fsb, r)])
    return torch.stack(pos + uncond + neg), torch.tensor(weights)


def test_perp_neg_matches_threestudios_formula(tiny_sd_path, in_tmp_cwd):
    prompt_utils = make_processor(tiny_sd_path, use_perp_neg=True)()
    assert prompt_utils.use_perp_neg is True
    cams = cameras((0, 0), (0, 30), (0, 90), (0, 120), (0, 180), (0, -60), (70, 30), (10, -150))
    embeddings, weights = prompt_utils.get_text_embeddings_perp_neg(*cams)
    assert embeddings.shape == (4 * 8, 77, 32)
    assert weights.shape == (8, 2)

    expected_embeddings, expected_weights = _perp_neg_oracle(prompt_utils, *cams)
    torch.testing.assert_close(embeddings, expected_embeddings, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(weights, expected_weights.to(weights.dtype), atol=1e-6, rtol=1e-5)

    # the pure views, by hand: front (r_fs = 1), side (|az| = 90 is in the side-back half, r_sb = 1),
    # back (r_sb = 0)
    front_w = [-(4 * math.exp(-0.5) - 2.426), -(4 - 2.426)]
    side_w = [-(math.exp(-0.5) - 0.606), -(math.exp(-0.5) + 0.967)]
    back_w = [-(1 - 0.606), -(1 + 0.967)]
    torch.testing.assert_close(weights[[0, 2, 4]], torch.tensor([front_w, side_w, back_w]), atol=1e-6, rtol=1e-5)
    side, front, back, overhead = prompt_utils.text_embeddings_vd
    torch.testing.assert_close(embeddings[0], front)
    torch.testing.assert_close(embeddings[2], side)
    torch.testing.assert_close(embeddings[4], back)
    torch.testing.assert_close(embeddings[6], overhead)


def test_perp_neg_requires_view_dependent_prompting(cat_processor):
    with pytest.raises(AssertionError):
        cat_processor().get_text_embeddings_perp_neg(*cameras((0, 0)), view_dependent_prompting=False)


def test_missing_model_is_a_config_error_naming_the_key(tmp_path, in_tmp_cwd):
    with pytest.raises(ConfigError, match="pretrained_model_name_or_path.*lucid-build-tiny-sd"):
        make_processor(str(tmp_path / "no-such-model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="pretrained_model_name_or_path") as error:
        make_processor(str(tmp_path / "empty"))
    assert "tokenizer/" in str(error.value) and "\n" not in str(error.value)


def test_lib_prompts_are_looked_up_in_the_prompt_library(tiny_sd_path, in_tmp_cwd):
    with pytest.raises(ConfigError, match="prompt_library.json"):
        make_processor(tiny_sd_path, prompt="lib:blue_motorcycle")

    (in_tmp_cwd / "load").mkdir()
    library = {"dreamfusion": ["a blue motorcycle", "a red motorcycle", "a cat"]}
    (in_tmp_cwd / "load" / "prompt_library.json").write_text(json.dumps(library))
    assert make_processor(tiny_sd_path, prompt="lib:BLUE_motorcycle").prompt == "a blue motorcycle"
    with pytest.raises(ConfigError, match="match 2 prompts"):
        make_processor(tiny_sd_path, prompt="lib:motorcycle")
    with pytest.raises(ConfigError, match="no prompt"):
        make_processor(tiny_sd_path, prompt="lib:green_motorcycle")

    (in_tmp_cwd / "load" / "prompt_library.json").write_text(json.dumps({"other": []}))
    with pytest.raises(ConfigError, match="dreamfusion"):
        make_processor(tiny_sd_path, prompt="lib:cat")


def test_prompt_debiasing_is_refused_clearly(tiny_sd_path, in_tmp_cwd):
    with pytest.raises(ConfigError, match="use_prompt_debiasing"):
        make_processor(tiny_sd_path, use_prompt_debiasing=True)


def test_unknown_config_key_is_rejected(tiny_sd_path, in_tmp_cwd):
    with pytest.raises(TypeError, match="promt"):
        make_processor(tiny_sd_path, promt="typo")


def _token_count(model_path, text):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(model_path, subfolder="tokenizer")
    return len(tokenizer(text, truncation=False).input_ids)


def test_prompt_over_77_tokens_is_a_config_error_naming_the_key_before_encoding(tiny_sd_path, in_tmp_cwd):
    long_prompt = "a cat " * 60
    assert _token_count(tiny_sd_path, long_prompt) == 122
    with pytest.raises(ConfigError) as error:
        make_processor(tiny_sd_path, prompt=long_prompt)
    message = str(error.value)
    assert message.startswith("system.prompt_processor.prompt 'a cat a cat")
    assert "122 tokens" in message and "limit of 77" in message and "shorten it" in message
    assert "\n" not in message
    assert not os.path.exists(in_tmp_cwd / CACHE_DIR)  # failed before encoding anything


def test_long_negative_or_hand_written_view_prompt_names_its_own_key(tiny_sd_path, in_tmp_cwd):
    with pytest.raises(ConfigError, match=r"^system\.prompt_processor\.negative_prompt 'blurry, .* is 82 tokens"):
        make_processor(tiny_sd_path, negative_prompt="blurry, " * 40)
    with pytest.raises(ConfigError, match=r"^system\.prompt_processor\.prompt_back 'cat cat"):
        make_processor(tiny_sd_path, prompt_back="cat " * 80)


def test_prompt_whose_view_prompt_is_too_long_names_the_prompt(tiny_sd_path, in_tmp_cwd):
    prompt = "cat " * 74  # 76 tokens; "<prompt>, side view" is 79
    with pytest.raises(ConfigError, match=r"^system\.prompt_processor\.prompt \(its side view prompt\) .* 79 tokens"):
        make_processor(tiny_sd_path, prompt=prompt)


def test_prompts_of_exactly_77_tokens_are_encoded_untruncated(tiny_sd_path, in_tmp_cwd, encode):
    prompt, negative_prompt = "cat " * 75, "blurry " * 75
    assert _token_count(tiny_sd_path, prompt) == _token_count(tiny_sd_path, negative_prompt) == 77
    views = {f"prompt_{v}": f"a cat, {v} view" for v in ("side", "front", "back", "overhead")}
    processor = make_processor(tiny_sd_path, prompt=prompt, negative_prompt=negative_prompt, **views)
    torch.testing.assert_close(processor.text_embeddings, encode([prompt]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(processor.uncond_text_embeddings, encode([negative_prompt]), atol=1e-5, rtol=1e-5)
    # and the last text token matters: the embedding is not that of a prompt cut one token short
    assert not torch.allclose(processor.text_embeddings, encode(["cat " * 74]), atol=1e-3)


@pytest.mark.parametrize("text, named", [("", "is empty"), ("{not json", "is not valid JSON"), ("[]", "holds a JSON list")])
def test_an_empty_or_broken_prompt_library_is_one_line_naming_the_file(tiny_sd_path, in_tmp_cwd, text, named):
    """threestudio json.load()s load/prompt_library.json for every prompt, so a broken file stops any run."""
    (in_tmp_cwd / "load").mkdir()
    (in_tmp_cwd / "load" / "prompt_library.json").write_text(text)
    with pytest.raises(ConfigError) as error:
        make_processor(tiny_sd_path, prompt="a cat")
    assert f"prompt_library.json' {named}" in str(error.value) and "\n" not in str(error.value)
