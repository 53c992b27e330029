"""fp16 guidance on the CPU (issue 24): the dtypes every user runs on a GPU (``half_precision_weights:
true`` loads the UNet, VAE and text encoder in fp16; VSD/ESD's LoRA and camera embedding stay fp32 on
top), checked without a GPU by treating the CPU as an accelerator (``ACCELERATOR_DEVICE_TYPES``).
torch's CPU build runs fp16 convolution, group norm and attention forward and backward.

One step of SDS, ISM (Perp-Neg), VSD and ESD (single model and a separate LoRA base model) in fp16 is
finite and within fp16's tolerance of the same step in fp32 (same weights, t, noise, renders, VAE
sample, LoRA): fp16's machine epsilon is 2^-10 = 9.8e-4. Measured on the tiny pipeline: the loss
within 4.3e-3 relative (about 4 eps: a few roundings through ~20 fp16 layers); the gradient w.r.t. the
renders within 3.7e-2 relative with cosine >= 0.9993 (it adds the fp16 VAE encoder's backward, and CFG
multiplies the rounding of eps_cond - eps_uncond by the scale, 7.5 to 101); the LoRA loss within 9.3e-5
and its parameters' gradient within 4.7e-3 (cosine 0.99999). The bounds are two to three times those,
and tight enough to see a wrong path: with the camera embedding's output dropped in fp16 the renders'
gradient is off by 13% and the LoRA's by 50%; with the LoRA dropped, by 9.3% and 57%.
"""

import pytest
import torch
from guidance_steps import cosine, one_step, relative_error

from threestudio_lucid import compat
from threestudio_lucid.guidance import diffusion_base

LOSS_RTOL = 1e-2  # ~10 eps
RENDER_GRAD_RTOL, RENDER_GRAD_COSINE = 7.5e-2, 0.998
LORA_LOSS_RTOL = 2e-4
LORA_GRAD_RTOL, LORA_GRAD_COSINE = 1e-2, 0.9999


@pytest.fixture(scope="module")
def prompt_utils(make_prompt_utils):
    return {
        "plain": make_prompt_utils(prompt="a cube", negative_prompt="blurry"),
        "perp_neg": make_prompt_utils(prompt="a cube", use_perp_neg=True),
    }


def make(name, cfg, accelerator_cpu):
    """The guidance as it is built on a GPU (``accelerator_cpu``) or on the CPU."""
    with pytest.MonkeyPatch.context() as patch:
        if accelerator_cpu:
            patch.setattr(diffusion_base, "ACCELERATOR_DEVICE_TYPES", ("cuda", "cpu"))
        return compat.find(name)(cfg)


def dtypes(module):
    return {p.dtype for p in module.parameters()}


def test_half_precision_weights_decides_the_dtype_on_an_accelerator_and_the_cpu_stays_fp32(tiny_sd_path):
    cfg = {"pretrained_model_name_or_path": tiny_sd_path}
    half = make("lucid-sds-guidance", cfg, accelerator_cpu=True)
    assert half.weights_dtype == torch.float16
    assert dtypes(half.unet) == dtypes(half.vae) == {torch.float16}
    full = make("lucid-sds-guidance", {**cfg, "half_precision_weights": False}, accelerator_cpu=True)
    assert full.weights_dtype == torch.float32 and dtypes(full.unet) == dtypes(full.vae) == {torch.float32}
    cpu = make("lucid-sds-guidance", {**cfg, "half_precision_weights": True}, accelerator_cpu=False)
    assert cpu.weights_dtype == torch.float32 and dtypes(cpu.unet) == {torch.float32}  # production CPU runs


CASES = {
    "sds": ("lucid-sds-guidance", "plain", None),
    "ism-perp-neg": ("lucid-ism-guidance", "perp_neg", None),
    "vsd": ("lucid-vsd-guidance", "plain", "same"),
    "vsd-lora-base-model": ("lucid-vsd-guidance", "perp_neg", "v_prediction"),
    "esd-perp-neg": ("lucid-esd-guidance", "perp_neg", "same"),
    "esd-lora-base-model": ("lucid-esd-guidance", "plain", "v_prediction"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fp16_step_is_finite_and_within_fp16_tolerance_of_the_fp32_step(
    case, tiny_sd_path, v_prediction_sd_path, prompt_utils
):
    name, prompts, lora_model = CASES[case]
    cfg = {"pretrained_model_name_or_path": tiny_sd_path}
    if lora_model is not None:
        cfg["pretrained_model_name_or_path_lora"] = tiny_sd_path if lora_model == "same" else v_prediction_sd_path
    fp32, fp16 = make(name, cfg, accelerator_cpu=False), make(name, cfg, accelerator_cpu=True)
    trained = {id(p) for p in fp16.parameters()}
    assert {p.dtype for p in fp16.unet.parameters() if id(p) not in trained} == dtypes(fp16.vae) == {torch.float16}
    if lora_model is not None:
        # fp32 LoRA and camera embedding on an fp16 UNet (the pretrained one, or the LoRA's own base)
        assert fp16.single_model == (lora_model == "same")
        assert dtypes(fp16.lora_layers) == dtypes(fp16.camera_embedding) == {torch.float32}
        assert {p.dtype for p in fp16.unet_lora.parameters() if id(p) not in trained} == {torch.float16}
        assert fp16.unet_lora.class_embedding is fp16.camera_embedding
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():  # non-zero B matrices: the LoRA changes the score and A gets a gradient
            for p in fp32.parameters():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        fp16.load_state_dict(fp32.state_dict())

    utils = prompt_utils[prompts]
    reference, step = one_step(fp32, utils, lora_gradients=True), one_step(fp16, utils, lora_gradients=True)
    for key, value in step.items():
        assert torch.isfinite(value).all(), key
    # the fp16 VAE encoder's backward reaches the fp32 renders
    assert step["grad"].dtype == torch.float32 and step["grad"].abs().sum() > 0
    assert relative_error(step["loss"], reference["loss"]) <= LOSS_RTOL
    assert relative_error(step["grad"], reference["grad"]) <= RENDER_GRAD_RTOL
    assert cosine(step["grad"], reference["grad"]) >= RENDER_GRAD_COSINE
    if lora_model is not None:
        assert relative_error(step["loss_lora"], reference["loss_lora"]) <= LORA_LOSS_RTOL
        assert step["lora_grad"].dtype == torch.float32 and (step["lora_grad"] != 0).any()
        assert relative_error(step["lora_grad"], reference["lora_grad"]) <= LORA_GRAD_RTOL
        assert cosine(step["lora_grad"], reference["lora_grad"]) >= LORA_GRAD_COSINE
