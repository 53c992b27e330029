"""VSD/ESD's LoRA on an fp16 UNet under ``trainer.precision: 32-true`` (issue 24, item 8): the LoRA loss's
gradient flows back through fp16 UNet activations, and without a loss scale much of it underflows.

The LoRA loss is a mean over every latent entry, so the gradient entering the UNet is ``2 (pred -
target) / N`` per entry: ~3e-5 at the real size (4 views of 64x64 latents, N = 65536), below fp16's
smallest normal number 6.1e-5. Measured on the tiny pipeline (LoRA B ~ N(0, 0.01^2), as after some
training; ``pytest -m slow tests/guidance/test_lora_loss_scale.py -s`` prints it):

========================  ===============  ===============  ==========================
4 views x 64x64 latents   zero entries: A  zero entries: B  cosine to fp32: A, B, cam
========================  ===============  ===============  ==========================
fp32                      0%               0%               1, 1, 1
fp16, no loss scale       7.5%             10.0%            0.943, 0.940, 0.994
fp16, loss scale          0%               0%               0.999999, 1.000000, 0.999994
========================  ===============  ===============  ==========================

Without the scale the query and key LoRAs of every full-resolution self-attention get an all-zero
gradient (they never train) and 94% of the gradient entering the UNet is subnormal in fp16 (0% with
it). The camera embedding loses no entry but its gradient is 6% off.
The fast tests here use one 32x32 latent with the loss weighted by 1/16, so the same per-entry
gradient enters the UNet (the full-resolution attention is over 1024 tokens instead of 4096, so less
is lost than at the real size, but measurably).
"""
import pytest
import torch

from threestudio_lucid import compat
from threestudio_lucid.guidance import diffusion_base
from threestudio_lucid.guidance.loss_scale import INIT_SCALE

FP16_SMALLEST_NORMAL = torch.finfo(torch.float16).tiny  # 6.1e-5


def make(tiny_sd_path, half, lora_base=None, **cfg):
    with pytest.MonkeyPatch.context() as patch:
        if half:  # the GPU's dtypes on the CPU
            patch.setattr(diffusion_base, "ACCELERATOR_DEVICE_TYPES", ("cuda", "cpu"))
        return compat.find("lucid-vsd-guidance")(
            {"pretrained_model_name_or_path": tiny_sd_path,
             "pretrained_model_name_or_path_lora": lora_base or tiny_sd_path, **cfg}
        )


def trained_lora(guidance, seed=1):
    """B ~ N(0, 0.01^2) (peft starts B at zero, which makes A's gradient exactly zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in guidance.named_parameters():
            if "lora_B" in name:
                p.copy_(0.01 * torch.randn(p.shape, generator=g))
    return guidance


@pytest.fixture(scope="module")
def guidances(tiny_sd_path):
    fp32 = trained_lora(make(tiny_sd_path, half=False))
    fp16 = make(tiny_sd_path, half=True)
    fp16.load_state_dict(fp32.state_dict())
    assert not fp32.lora_loss_scale.enabled and fp16.lora_loss_scale.enabled
    return fp32, fp16


@pytest.fixture(scope="module")
def text(make_prompt_utils):
    utils = make_prompt_utils(prompt="a cube")
    return utils.get_text_embeddings(torch.zeros(4), torch.zeros(4), torch.full((4,), 2.5), False)[:4]


def lora_backward(guidance, latents, text, weight=1.0, seed=2):
    """``weight * loss_lora`` backward. Returns the loss, the parameters' gradients by name (None where
    the step was dropped) and the gradient at the UNet's (fp16) output, as the UNet's backward gets it."""
    for p in guidance.parameters():
        p.grad = None
    seen = {}

    def keep_output_gradient(module, args, output):
        output.sample.register_hook(lambda g: seen.setdefault("unet_output", g))

    handle = guidance.unet_lora.register_forward_hook(keep_output_gradient)
    try:
        b = latents.shape[0]
        camera = torch.randn(b, 16, generator=torch.Generator().manual_seed(seed))
        loss = guidance.lora_loss(latents, text[:b], camera, torch.Generator().manual_seed(seed))
        (weight * loss).backward()
    finally:
        handle.remove()
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in guidance.named_parameters()}
    return loss.detach(), grads, seen["unet_output"]


def group(grads, part):
    return torch.cat([g.flatten() for n, g in grads.items() if part in n])


def zero_fraction(grads, part):
    return (group(grads, part) == 0).float().mean().item()


def cosine(grads, reference, part):
    return torch.nn.functional.cosine_similarity(group(grads, part), group(reference, part), dim=0).item()


def subnormal_fraction(g):
    return ((g != 0) & (g.abs() < FP16_SMALLEST_NORMAL)).float().mean().item()


def compare(guidances, latents, text, weight, monkeypatch):
    fp32, fp16 = guidances
    loss32, reference, _ = lora_backward(fp32, latents, text, weight)
    with monkeypatch.context() as patch:
        patch.setattr(fp16.lora_loss_scale, "enabled", False)
        loss_plain, plain, plain_output = lora_backward(fp16, latents, text, weight)
    loss_scaled, scaled, scaled_output = lora_backward(fp16, latents, text, weight)
    assert plain_output.dtype == scaled_output.dtype == torch.float16
    return loss32, (loss_plain, plain, plain_output), (loss_scaled, scaled, scaled_output), reference


def test_fp16_lora_gradient_underflows_without_the_loss_scale_and_matches_fp32_with_it(guidances, text, monkeypatch):
    latents = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    weight = (1 * 32 * 32) / (4 * 64 * 64)  # the real size's per-entry gradient at the UNet's output
    loss32, (loss_plain, plain, plain_output), (loss_scaled, scaled, scaled_output), reference = compare(
        guidances, latents, text, weight, monkeypatch
    )
    # the loss (what is logged) is the true one: the scale only acts in backward
    assert torch.equal(loss_scaled, loss_plain) and loss_plain.item() == pytest.approx(loss32.item(), rel=1e-3)
    # without the scale: most of the gradient entering the fp16 UNet is subnormal, and entries are lost
    # (measured: 94% subnormal; 2.7% of B's entries zero, 0 in fp32; cosine 0.965 for A, 0.960 for B)
    assert subnormal_fraction(plain_output) > 0.5
    assert zero_fraction(reference, "lora_B") == 0 and zero_fraction(plain, "lora_B") > 0.01
    assert cosine(plain, reference, "lora_A") < 0.99 and cosine(plain, reference, "lora_B") < 0.99
    # with it: nothing subnormal there, no more zeros than fp32, and fp32's gradient (measured cosine 0.999994+)
    assert subnormal_fraction(scaled_output) < 1e-3
    for part in ("lora_A", "lora_B", "camera_embedding"):
        assert zero_fraction(scaled, part) <= zero_fraction(reference, part), part
        assert cosine(scaled, reference, part) > 0.9999, part


@pytest.mark.slow
def test_at_the_real_size_fp16_without_the_scale_never_trains_the_full_resolution_query_and_key_loras(
    guidances, text, monkeypatch
):
    """4 views of 64x64 latents (512 px renders), lambda_lora 1: the table in the module docstring."""
    latents = torch.randn(4, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    loss32, (_, plain, plain_output), (_, scaled, scaled_output), reference = compare(guidances, latents, text, 1.0, monkeypatch)
    print(f"\nsubnormal at the UNet output: {subnormal_fraction(plain_output):.3f} without the scale, "
          f"{subnormal_fraction(scaled_output):.3f} with it")
    for part in ("lora_A", "lora_B", "camera_embedding"):
        print(f"{part}: zero {zero_fraction(reference, part):.4f} fp32, {zero_fraction(plain, part):.4f} fp16, "
              f"{zero_fraction(scaled, part):.4f} fp16+scale; cosine {cosine(plain, reference, part):.6f} fp16, "
              f"{cosine(scaled, reference, part):.6f} fp16+scale")
    assert zero_fraction(plain, "lora_A") > 0.05 and zero_fraction(plain, "lora_B") > 0.05
    full_resolution_qk = [n for n in plain if "down_blocks__0" in n and "attn1" in n and ("to_q" in n or "to_k" in n)]
    assert full_resolution_qk and all(not plain[n].any() for n in full_resolution_qk)
    for part in ("lora_A", "lora_B", "camera_embedding"):
        assert zero_fraction(scaled, part) <= zero_fraction(reference, part), part
        assert cosine(scaled, reference, part) > 0.9999, part


def test_an_overflow_drops_the_steps_lora_gradient_and_halves_the_scale_and_clean_steps_grow_it(tiny_sd_path, text):
    guidance = trained_lora(make(tiny_sd_path, half=True))
    scaler = guidance.lora_loss_scale
    scaler.growth_interval = 2
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(guidance.parameters(), lr=1e-3)
    before = {n: p.detach().clone() for n, p in guidance.named_parameters()}

    scaler.scale.fill_(2.0**40)  # the gradient entering the fp16 UNet overflows to inf
    loss, grads, _ = lora_backward(guidance, latents, text)
    assert torch.isfinite(loss)
    assert all(g is None for g in grads.values())  # dropped: the optimizer skips the step, as GradScaler does
    assert scaler.scale.item() == 2.0**39 and scaler.clean_steps.item() == 0 and scaler.skipped_steps == 1
    optimizer.step()
    assert all(torch.equal(p, before[n]) for n, p in guidance.named_parameters()) and not optimizer.state

    scaler.scale.fill_(2.0**10)
    for clean in (1, 2):
        _, grads, _ = lora_backward(guidance, latents, text)
        assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    # growth_interval clean steps double S and restart the count
    assert scaler.scale.item() == 2.0**11 and scaler.clean_steps.item() == 0 and scaler.skipped_steps == 1


def test_the_scale_is_in_fp16_checkpoints_only_and_each_precision_loads_the_others(tiny_sd_path, make_prompt_utils):
    fp16, fp32 = make(tiny_sd_path, half=True), make(tiny_sd_path, half=False)
    keys = {"lora_loss_scale.scale", "lora_loss_scale.clean_steps"}
    assert keys <= set(fp16.state_dict()) and not keys & set(fp32.state_dict())
    assert fp16.lora_loss_scale.scale.item() == INIT_SCALE
    fp16.lora_loss_scale.scale.fill_(2.0**9)
    fp16.lora_loss_scale.clean_steps.fill_(17)
    resumed = make(tiny_sd_path, half=True)
    resumed.load_state_dict(fp16.state_dict())  # strict
    assert resumed.lora_loss_scale.scale.item() == 2.0**9 and resumed.lora_loss_scale.clean_steps.item() == 17
    # a CPU (fp32) run's checkpoint resumes on a GPU (fp16) with the initial scale, and the other way
    other = make(tiny_sd_path, half=True)
    other.load_state_dict(fp32.state_dict())
    assert other.lora_loss_scale.scale.item() == INIT_SCALE
    fp32.load_state_dict(fp16.state_dict())
    # S is logged (before the step's backward) when it is in use
    utils = make_prompt_utils(prompt="a cube")
    cameras = torch.eye(4).expand(1, 4, 4)
    args = (torch.rand(1, 8, 8, 4), utils, torch.zeros(1), torch.zeros(1), torch.full((1,), 2.5), cameras, cameras)
    assert fp16(*args, rgb_as_latents=True)["lora_loss_scale"].item() == 2.0**9
    assert "lora_loss_scale" not in fp32(*args, rgb_as_latents=True)


def test_the_scaled_parameters_are_exactly_the_trained_ones(tiny_sd_path, tmp_path_factory):
    from threestudio_lucid.tiny_pipeline import build_tiny_stable_diffusion

    other = build_tiny_stable_diffusion(tmp_path_factory.mktemp("tiny-sd-lora-base") / "sd", seed=1)
    for lora_base in (None, other):
        guidance = make(tiny_sd_path, half=True, lora_base=lora_base)
        assert guidance.single_model == (lora_base is None)
        scaled = {id(p) for p in guidance.lora_trainables.values()}
        assert scaled == {id(p) for p in guidance.parameters()} and len(scaled) == len(guidance.lora_trainables)
