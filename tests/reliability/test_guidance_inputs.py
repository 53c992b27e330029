"""Bad guidance inputs end in one clear error (or are repaired), never in a crash mid-run:

1. every guidance option with a range defined by its method is checked at configure time, before
   the model is loaded;
2. a text encoder whose width differs from the UNet's cross-attention width is named at load;
3. a truncated text-embedding cache file, or one computed by another model at the same path, is
   recomputed (with a one-line warning) instead of crashing or being reused;
4. the CPU rasterizer kernel's build name follows its source text and flags.
"""
import glob
import os
import shutil

import pytest
import torch

from threestudio_lucid import compat
from threestudio_lucid.errors import ConfigError
from threestudio_lucid.guidance import diffusion_base
from threestudio_lucid.host.models.prompt_processors import base as prompt_base
from threestudio_lucid.host.models.prompt_processors.base import FINGERPRINT_ATTRIBUTE
from threestudio_lucid.renderer import cpu_backend
from threestudio_lucid.tiny_pipeline import build_tiny_stable_diffusion

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(
    glob.glob(os.path.join(ROOT, "custom", "threestudio-lucid", "configs", "*.yaml"))
    + glob.glob(os.path.join(ROOT, "configs", "*.yaml"))
)
PROCESSOR = "stable-diffusion-prompt-processor"
CACHE_DIR = os.path.join(".threestudio_cache", "text_embeddings")


class ModelLoadReached(Exception):
    """Raised in place of loading the model: every configure-time check has passed."""


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise ModelLoadReached()

    monkeypatch.setattr(diffusion_base, "load_stable_diffusion", refuse)


def make_guidance(name, model, **cfg):
    return compat.find(name)({"pretrained_model_name_or_path": model, **cfg})


# ---------------------------------------------------------------------------------------------
# 1. option ranges
# ---------------------------------------------------------------------------------------------
BAD_OPTIONS = [
    # guidance, option, bad value, how the value is shown in the message
    ("lucid-esd-guidance", "lambda_coeff", 2, "=2"),
    ("lucid-esd-guidance", "lambda_coeff", -1, "=-1"),
    ("lucid-esd-guidance", "guidance_scale_lora", 1.5, "=1.5"),
    ("lucid-vsd-guidance", "guidance_scale_lora", -1, "=-1"),
    ("lucid-esd-guidance", "guidance_scale_lora", -1, "=-1"),
    ("lucid-vsd-guidance", "lora_rank", 0, "=0"),
    ("lucid-vsd-guidance", "lora_alpha", -4.0, "=-4"),
    ("lucid-vsd-guidance", "lora_n_timestamp_samples", 0, "=0"),
    ("lucid-ism-guidance", "delta_t", 5000, "=5000"),
    ("lucid-ism-guidance", "delta_t", 0, "=0"),
    ("lucid-ism-guidance", "delta_t_start", 5000, "=5000"),
    ("lucid-ism-guidance", "xs_delta_t", 1000, "=1000"),
    ("lucid-ism-guidance", "xs_delta_t", -200, "=-200"),
    ("lucid-ism-guidance", "xs_inv_steps", -1, "=-1"),
    ("lucid-ism-guidance", "xs_eta", 1.5, "=1.5"),
    ("lucid-ism-guidance", "xs_eta", -0.1, "=-0.1"),
    ("lucid-ism-guidance", "denoise_guidance_scale", -1.0, "=-1"),
    ("lucid-ism-guidance", "lambda_guidance", -0.1, "=-0.1"),
    ("lucid-ism-guidance", "lambda_guidance", 0.0, "=0"),
    ("lucid-ism-guidance", "offset_noise_scale", -0.1, "=-0.1"),
    ("lucid-ism-guidance", "warmup_iter", -1, "=-1"),
    ("lucid-ism-guidance", "max_t_range", 1.5, "=1.5"),
    ("lucid-ism-guidance", "max_t_range", 0.3, "=0.3"),  # below max_step_percent (0.5)
    ("lucid-ism-guidance", "guidance_scale", -7.5, "=-7.5"),
    ("lucid-sds-guidance", "guidance_scale", -1.0, "=-1"),
    ("lucid-vsd-guidance", "guidance_scale", -1.0, "=-1"),
    ("lucid-sds-guidance", "guidance_scale", 1e6, "=1000000.0"),  # trained with a loss of 3e11, silently
    ("lucid-sds-guidance", "grad_clip", -1.0, "=-1"),
    ("lucid-sds-guidance", "grad_clip", [0, 0.5, -2.0, 1000], "=[0, 0.5, -2.0, 1000]"),
    ("lucid-sds-guidance", "min_step_percent", -0.02, "=-0.02"),
    ("lucid-sds-guidance", "max_step_percent", 1.0, "=1.0"),  # t = 1000 is past SD's schedule
    ("lucid-vsd-guidance", "max_step_percent", [1000, 0.98, 1.5, 1001], "=[1000, 0.98, 1.5, 1001]"),
    ("lucid-sds-guidance", "max_step_percent", [1000, 0.98, 0.5, 1000], "=[1000, 0.98, 0.5, 1000]"),
    ("lucid-sds-guidance", "max_step_percent", [0.98, 0.5], "=[0.98, 0.5]"),
    ("lucid-sds-guidance", "max_step_percent", "high", "='high'"),
    ("lucid-ism-guidance", "min_step_percent", 0.6, "=0.6"),  # above ISM's max_step_percent 0.5
]


@pytest.mark.parametrize("guidance, option, value, shown", BAD_OPTIONS,
                         ids=[f"{g[6:9]}-{o}={v}" for g, o, v, _ in BAD_OPTIONS])
def test_out_of_range_option_is_one_config_error_before_the_model_loads(guidance, option, value, shown,
                                                                        tiny_sd_path, no_model_load):
    with pytest.raises(ConfigError) as error:
        make_guidance(guidance, tiny_sd_path, **{option: value})
    message = str(error.value)
    assert f"system.guidance.{option}{shown}" in message
    assert "\n" not in message
    # and how to fix it: an example in range, which one to move, or the shape of a schedule
    assert any(fix in message for fix in (" e.g. system.guidance.", "; lower system.guidance.", "C() schedule ["))


def test_min_step_above_max_step_at_some_step_is_named(tiny_sd_path, no_model_load):
    # the two schedules cross at step 1000 (0.6 > 0.5); the message says where
    with pytest.raises(ConfigError) as error:
        make_guidance("lucid-sds-guidance", tiny_sd_path, min_step_percent=0.6, max_step_percent=[0, 0.98, 0.5, 1000])
    message = str(error.value)
    assert message.startswith("system.guidance.min_step_percent=0.6 exceeds system.guidance.max_step_percent=[0, 0.98, 0.5, 1000] at step 1000")
    # schedules that never cross are fine, even though min's largest value exceeds max's smallest
    with pytest.raises(ModelLoadReached):
        make_guidance("lucid-sds-guidance", tiny_sd_path, min_step_percent=[0, 0.6, 0.02, 1000],
                      max_step_percent=[0, 0.98, 0.5, 1000])


@pytest.mark.parametrize("guidance, cfg", [
    ("lucid-esd-guidance", {"lambda_coeff": 0.0}),
    ("lucid-esd-guidance", {"lambda_coeff": 1.0}),
    ("lucid-esd-guidance", {"guidance_scale_lora": 0.0}),
    ("lucid-vsd-guidance", {"guidance_scale_lora": 2.0, "lora_alpha": 8.0}),
    ("lucid-ism-guidance", {"delta_t": 1, "delta_t_start": 999, "xs_delta_t": 999, "xs_inv_steps": 0,
                            "xs_eta": 1.0, "denoise_guidance_scale": 0.0, "warmup_iter": 0, "max_t_range": 0.5}),
    ("lucid-sds-guidance", {"guidance_scale": 0.0, "grad_clip": [0, 0.5, 2.0, 1000], "min_step_percent": 0.0,
                            "max_step_percent": [1000, 0.98, 0.5, 1001]}),
])
def test_values_at_the_edges_of_the_ranges_pass(guidance, cfg, tiny_sd_path, no_model_load):
    with pytest.raises(ModelLoadReached):
        make_guidance(guidance, tiny_sd_path, **cfg)


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_shipped_config_passes_the_checks(path, tmp_path, no_model_load):
    from threestudio_lucid.host.utils.config import load_config

    cfg = load_config(path, cli_args=["system.prompt_processor.prompt=a penguin", f"exp_root_dir={tmp_path}"])
    if not cfg.system.guidance_type.startswith("lucid-"):
        pytest.skip(f"{cfg.system.guidance_type} is threestudio's")
    if not issubclass(compat.find(cfg.system.guidance_type), diffusion_base.StableDiffusionGuidanceBase):
        pytest.skip(f"{cfg.system.guidance_type} loads no diffusion model (the oracle: tests/toy_world/test_oracle.py)")
    with pytest.raises(ModelLoadReached):
        compat.find(cfg.system.guidance_type)(cfg.system.guidance)


# ---------------------------------------------------------------------------------------------
# 2. text encoder width vs the UNet's cross-attention width
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def wide_text_models(tiny_sd_path, tmp_path_factory):
    """``(wide, mixed)``: a consistent tiny pipeline with 64-d text embeddings, and a copy whose
    unet/ is the 32-d tiny pipeline's (a folder mixing two models)."""
    root = tmp_path_factory.mktemp("widths")
    wide = build_tiny_stable_diffusion(root / "wide", seed=0, text_hidden_size=64)
    mixed = str(root / "mixed")
    shutil.copytree(wide, mixed)
    shutil.rmtree(os.path.join(mixed, "unet"))
    shutil.copytree(os.path.join(tiny_sd_path, "unet"), os.path.join(mixed, "unet"))
    return wide, mixed


def test_text_encoder_width_that_the_unet_cannot_take_is_one_config_error(wide_text_models, tiny_sd_path,
                                                                          in_tmp_cwd):
    wide, mixed = wide_text_models
    # the guidance, when it loads the folder
    with pytest.raises(ConfigError) as error:
        make_guidance("lucid-sds-guidance", mixed)
    message = str(error.value)
    assert message.startswith(f"system.guidance.pretrained_model_name_or_path='{mixed}'")
    assert f"{mixed}/text_encoder gives 64-d" in message and f"{mixed}/unet cross-attends to 32-d" in message
    assert "hidden_size=64" in message and "cross_attention_dim=32" in message and "\n" not in message

    # the prompt processor, on the same folder, before it encodes anything
    with pytest.raises(ConfigError) as error:
        compat.find(PROCESSOR)({"prompt": "a cat", "pretrained_model_name_or_path": mixed})
    message = str(error.value)
    assert message.startswith(f"system.prompt_processor.pretrained_model_name_or_path='{mixed}'")
    assert "64-d" in message and "32-d" in message and "\n" not in message
    assert not glob.glob(str(in_tmp_cwd / CACHE_DIR / "*.pt"))

    # each folder is consistent, but the prompt processor's model is not the guidance's
    prompt_utils = compat.find(PROCESSOR)({"prompt": "a cat", "pretrained_model_name_or_path": wide})()
    guidance = make_guidance("lucid-sds-guidance", tiny_sd_path)
    elevation, azimuth, distance = torch.zeros(1), torch.zeros(1), torch.full((1,), 2.0)
    with pytest.raises(ConfigError) as error:
        guidance(torch.rand(1, 16, 16, 3), prompt_utils, elevation, azimuth, distance)
    message = str(error.value)
    assert message.startswith("system.prompt_processor.pretrained_model_name_or_path gives 64-d text embeddings")
    assert f"system.guidance.pretrained_model_name_or_path='{tiny_sd_path}' cross-attends to 32-d" in message


# ---------------------------------------------------------------------------------------------
# 3. the text-embedding cache
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def warnings_seen(monkeypatch):
    seen = []
    monkeypatch.setattr(prompt_base, "warn", lambda msg, *a, **k: seen.append(msg))
    return seen


def make_processor(model, **cfg):
    return compat.find(PROCESSOR)({"prompt": "a cat", "negative_prompt": "blurry",
                                   "pretrained_model_name_or_path": model, **cfg})


def assert_same_embeddings(a, b):
    for name in ("text_embeddings", "uncond_text_embeddings", "text_embeddings_vd", "uncond_text_embeddings_vd"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_truncated_cache_file_is_detected_and_recomputed(tiny_sd_path, in_tmp_cwd, warnings_seen):
    first = make_processor(tiny_sd_path)
    assert warnings_seen == []
    path = first.cache_path("a cat")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:  # what a full disk or an interrupted copy leaves
        f.write(data[: len(data) // 2])

    second = make_processor(tiny_sd_path)
    assert second.prompts_computed == ["a cat"]  # only the damaged entry
    assert len(warnings_seen) == 1
    assert warnings_seen[0].startswith(f"Text embedding cache file {path} (prompt [a cat]) is truncated or unreadable (")
    assert warnings_seen[0].endswith("): recomputing it.") and "\n" not in warnings_seen[0]
    fresh = make_processor(tiny_sd_path, use_cache=False)
    assert_same_embeddings(second, fresh)
    assert torch.equal(torch.load(path), fresh.text_embeddings[0])  # the file is whole again


def test_cache_entry_of_a_rebuilt_model_at_the_same_path_is_recomputed(in_tmp_cwd, warnings_seen):
    model = os.path.join("load", "tiny-sd")
    build_tiny_stable_diffusion(model, seed=0)
    seed0 = make_processor(model)
    files = sorted(glob.glob(str(in_tmp_cwd / CACHE_DIR / "*.pt")))
    assert len(files) == 6 and all(getattr(torch.load(f), FINGERPRINT_ATTRIBUTE) for f in files)

    build_tiny_stable_diffusion(model, seed=0)  # rebuilt identically: the cache still holds
    assert make_processor(model).prompts_computed == []
    assert warnings_seen == []

    shutil.rmtree(model)
    build_tiny_stable_diffusion(model, seed=1)  # another text encoder at the same path
    seed1 = make_processor(model)
    assert sorted(seed1.prompts_computed) == sorted(seed0.prompts_computed)  # every entry
    assert len(warnings_seen) == 6
    assert all(f"was computed by other files at {model} (model fingerprint " in w for w in warnings_seen)
    fresh = make_processor(model, use_cache=False)
    assert_same_embeddings(seed1, fresh)
    assert not torch.equal(seed1.text_embeddings, seed0.text_embeddings)

    # an entry threestudio wrote (a plain tensor, no fingerprint) is recomputed once, then reused
    path = seed1.cache_path("a cat")
    torch.save(fresh.text_embeddings[0].clone(), path)
    assert make_processor(model).prompts_computed == ["a cat"]
    assert make_processor(model).prompts_computed == []
    assert len(warnings_seen) == 6  # an info line, not a warning


# ---------------------------------------------------------------------------------------------
# 4. the CPU kernel's build name
# ---------------------------------------------------------------------------------------------
def test_kernel_build_name_is_keyed_by_source_and_flags(monkeypatch, tmp_path):
    flags = (["-O3", "-fopenmp"], ["-fopenmp"])
    source = open(cpu_backend.KERNEL_SOURCE, "rb").read()
    name = cpu_backend.kernel_build_name(source, *flags)
    assert name == cpu_backend.kernel_build_name(bytes(source), *flags)  # same text, same build
    assert name.startswith(cpu_backend.KERNEL_NAME + "_") and name.isidentifier()
    assert cpu_backend.kernel_build_name(source + b"\n// edited\n", *flags) != name
    assert cpu_backend.kernel_build_name(source, ["-O2", "-fopenmp"], ["-fopenmp"]) != name

    # _build_and_load builds under that name (cpp_extension.load recorded, nothing compiled)
    from torch.utils import cpp_extension

    calls = []
    monkeypatch.setattr(cpp_extension, "load", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(cpu_backend, "info", lambda *a, **k: None)
    cpu_backend._build_and_load()
    cflags, ldflags = cpu_backend._compiler_flags()
    assert calls[0]["name"] == cpu_backend.kernel_build_name(source, cflags, ldflags)
    assert calls[0]["sources"] == [cpu_backend.KERNEL_SOURCE]

    # an edited copy of the source (another checkout) gets its own name
    copy = tmp_path / "gaussian_rasterizer_cpu.cpp"
    copy.write_bytes(source.replace(b"TORCH_LIBRARY", b"// another checkout\nTORCH_LIBRARY", 1))
    monkeypatch.setattr(cpu_backend, "KERNEL_SOURCE", str(copy))
    cpu_backend._build_and_load()
    assert calls[1]["name"] != calls[0]["name"]
