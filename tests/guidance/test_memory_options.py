"""The memory options with every guidance (issue 24, item 7): each guidance x option pair gives the step
the guidance gives without it, with the option really in effect, or is refused in one line before any
model loads (VSD/ESD with sequential offload: their LoRA UNet trains).

Sequential CPU offload runs on the CPU here. diffusers' ``enable_sequential_cpu_offload`` always
offloads to ``<type>:<index>`` (``cpu:0`` here, which accelerate's hooks cannot take back), so a
stand-in does what it does, accelerate's ``cpu_offload`` on each model with the CPU as the execution
device: weights on ``meta``, moved in by hooks around each module, exactly the state a CUDA run is in.
"cpu" is added to ``ACCELERATOR_DEVICE_TYPES`` so the guidance takes its accelerator path.
"""
import pytest
import torch
from guidance_steps import one_step, relative_error

from threestudio_lucid import compat
from threestudio_lucid.errors import ConfigError
from threestudio_lucid.guidance import diffusion_base

OPTIONS = (
    "enable_memory_efficient_attention",
    "enable_sequential_cpu_offload",
    "enable_attention_slicing",
    "enable_channels_last_format",
)
# test id: (registered name, two models: the LoRA on a separately loaded UNet)
GUIDANCES = {
    "sds": ("lucid-sds-guidance", False),
    "ism": ("lucid-ism-guidance", False),
    "vsd": ("lucid-vsd-guidance", False),
    "vsd-two-models": ("lucid-vsd-guidance", True),
    "esd": ("lucid-esd-guidance", False),
}


def sequential_offload_stand_in(calls):
    """diffusers' enable_sequential_cpu_offload(gpu_id, device) with the CPU as the execution device."""
    from accelerate import cpu_offload

    def enable_sequential_cpu_offload(self, gpu_id=None, device=None):
        calls.append(device)
        for model in self.components.values():
            if isinstance(model, torch.nn.Module):
                cpu_offload(model, torch.device("cpu"), offload_buffers=len(model._parameters) > 0)

    return enable_sequential_cpu_offload


@pytest.fixture
def accelerator_cpu(monkeypatch):
    """The CPU treated as an accelerator; returns the devices sequential offload was asked for."""
    from diffusers import StableDiffusionPipeline

    calls = []
    monkeypatch.setattr(diffusion_base, "ACCELERATOR_DEVICE_TYPES", ("cuda", "cpu"))
    monkeypatch.setattr(StableDiffusionPipeline, "enable_sequential_cpu_offload", sequential_offload_stand_in(calls))
    return calls


@pytest.fixture
def no_model_loading(monkeypatch):
    """Loading a model fails the test: a refusal must come before it."""

    def load_stable_diffusion(*args, **kwargs):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(diffusion_base, "load_stable_diffusion", load_stable_diffusion)


@pytest.fixture(scope="module")
def prompt_utils(make_prompt_utils):
    return make_prompt_utils(prompt="a cube", negative_prompt="blurry")


@pytest.fixture(scope="module")
def second_model_path(tiny_sd_path, tmp_path_factory):
    """Another tiny pipeline (other weights) as the LoRA's base model."""
    from threestudio_lucid.tiny_pipeline import build_tiny_stable_diffusion

    return build_tiny_stable_diffusion(tmp_path_factory.mktemp("tiny-sd-lora") / "sd", seed=1)


def make(name, two_models, tiny_sd_path, second_model_path, **cfg):
    base = {"pretrained_model_name_or_path": tiny_sd_path, "half_precision_weights": False}
    if name in ("lucid-vsd-guidance", "lucid-esd-guidance"):
        base["pretrained_model_name_or_path_lora"] = second_model_path if two_models else tiny_sd_path
    return compat.find(name)({**base, **cfg})


@pytest.fixture(scope="module")
def plain_steps():
    return {}


def unets(guidance):
    lora = getattr(guidance, "unet_lora", guidance.unet)
    return [guidance.unet] if lora is guidance.unet else [guidance.unet, lora]


def check_in_effect(option, guidance, offload_calls):
    from diffusers.models.attention_processor import AttnProcessor2_0, SlicedAttnProcessor, XFormersAttnProcessor

    for unet in unets(guidance):
        processors = set(type(p) for p in unet.attn_processors.values())
        if option == "enable_sequential_cpu_offload":
            assert offload_calls == [guidance.device]
            assert {p.device.type for p in unet.parameters()} == {"meta"}  # behind accelerate's hooks
            assert {p.device.type for p in guidance.vae.parameters()} == {"meta"}
        elif option == "enable_attention_slicing":
            assert processors == {SlicedAttnProcessor}
        elif option == "enable_channels_last_format":
            assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        else:  # xformers where installed; else torch's SDPA, which is already memory-efficient
            try:
                import xformers  # noqa: F401

                assert processors == {XFormersAttnProcessor}
            except ImportError:
                assert processors == {AttnProcessor2_0}


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("case", list(GUIDANCES))
def test_every_memory_option_gives_the_same_step_or_is_refused_before_loading(
    case, option, tiny_sd_path, second_model_path, prompt_utils, plain_steps, accelerator_cpu, request
):
    name, two_models = GUIDANCES[case]
    if option == "enable_sequential_cpu_offload" and name in ("lucid-vsd-guidance", "lucid-esd-guidance"):
        request.getfixturevalue("no_model_loading")
        with pytest.raises(ConfigError) as error:
            make(name, two_models, tiny_sd_path, second_model_path, **{option: True})
        message = str(error.value)
        assert message.startswith(f"system.guidance.{option}=true is not supported by VSD/ESD") and "\n" not in message
        return
    if case not in plain_steps:
        plain_steps[case] = one_step(make(name, two_models, tiny_sd_path, second_model_path), prompt_utils)
    guidance = make(name, two_models, tiny_sd_path, second_model_path, **{option: True})
    check_in_effect(option, guidance, accelerator_cpu)
    step, plain = one_step(guidance, prompt_utils), plain_steps[case]
    # offload runs the same kernels on the same weights; slicing and channels-last reorder float32 sums
    # (~1e-6 relative), which SDS's CFG scale of 101 amplifies to ~1e-5 of the gradient's norm
    for name_, value in step.items():
        assert torch.isfinite(value).all(), name_
        error = relative_error(value, plain[name_])
        assert error <= 1e-4, (name_, option, error)


def test_ism_encodes_its_inversion_prompt_after_sequential_offload(tiny_sd_path, accelerator_cpu, make_prompt_utils):
    """The fault of item 7: after offload the text encoder's weights are on ``meta``; ISM's inversion
    prompt was moved to ``text_encoder.device`` (meta) and failed at load. In fp16, as on a GPU."""
    cfg = {"pretrained_model_name_or_path": tiny_sd_path, "inverse_text": "a cube"}
    ism = compat.find("lucid-ism-guidance")({**cfg, "enable_sequential_cpu_offload": True})
    plain = compat.find("lucid-ism-guidance")(cfg)
    assert ism.weights_dtype == torch.float16 and {p.device.type for p in ism.unet.parameters()} == {"meta"}
    embedding = ism.extra_text_embeddings["inverse_text"]
    assert embedding.device == ism.device
    torch.testing.assert_close(embedding, plain.extra_text_embeddings["inverse_text"], rtol=0, atol=0)
    utils = make_prompt_utils(prompt="a cube", negative_prompt="blurry")
    offloaded, reference = one_step(ism, utils), one_step(plain, utils)
    for name, value in offloaded.items():
        torch.testing.assert_close(value, reference[name], rtol=0, atol=0, msg=name)


def test_sequential_offload_without_an_accelerator_is_refused_before_loading(tiny_sd_path, no_model_loading):
    for name in ("lucid-sds-guidance", "lucid-ism-guidance"):
        with pytest.raises(ConfigError) as error:
            compat.find(name)({"pretrained_model_name_or_path": tiny_sd_path, "enable_sequential_cpu_offload": True})
        message = str(error.value)
        assert message.startswith("system.guidance.enable_sequential_cpu_offload=true needs a CUDA device")
        assert "set it to false" in message and "\n" not in message


def test_channels_last_holds_under_sequential_offload(tiny_sd_path, second_model_path, prompt_utils, accelerator_cpu, monkeypatch):
    """The layout is set before offloading: the hooks load the weights as they were when offloaded."""
    guidance = make("lucid-sds-guidance", False, tiny_sd_path, second_model_path,
                    enable_sequential_cpu_offload=True, enable_channels_last_format=True)
    layouts = []
    conv2d = torch.nn.functional.conv2d

    def spy(x, weight, *args, **kwargs):
        layouts.append(weight.is_contiguous(memory_format=torch.channels_last))
        return conv2d(x, weight, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "conv2d", spy)
    with torch.no_grad():
        guidance.unet_eps(torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.randn(1, 77, 32))
    assert layouts and all(layouts)
