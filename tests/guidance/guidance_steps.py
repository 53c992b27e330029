"""One guidance step with every input fixed, for comparing two guidances that should agree (fp16 vs
fp32 weights, a memory option vs none)."""
import torch

from threestudio_lucid import compat

VIEWS = (torch.tensor([10.0, 30.0]), torch.tensor([20.0, 140.0]), torch.full((2,), 2.5))


def one_step(guidance, prompt_utils, lora_gradients=False):
    """Two 64x64 renders through ``guidance`` at fixed t, noise, cameras and VAE sample. Returns the
    guidance loss, its gradient w.r.t. the renders and, for VSD/ESD, ``loss_lora`` and (with
    ``lora_gradients``) the gradient of ``loss_lora`` w.r.t. the guidance's parameters, flattened."""
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(2, 64, 64, 3, generator=g).requires_grad_(True)
    noise = torch.randn(2, 4, 8, 8, generator=g)
    cameras = torch.randn(2, 4, 4, generator=g)
    if isinstance(guidance, compat.find("lucid-ism-guidance")):
        kwargs = {"noise": noise, "t_index": 400}
    else:
        kwargs = {"noise": noise, "t": torch.tensor([300, 700])}
    trains = hasattr(guidance, "lora_loss")
    if trains:
        kwargs.update(mvp_mtx=cameras, c2w=cameras, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(2)  # the VAE posterior's sample
    out = guidance(rgb, prompt_utils, *VIEWS, **kwargs)
    loss = next(v for k, v in out.items() if k.startswith("loss_") and k != "loss_lora")
    (grad,) = torch.autograd.grad(loss, rgb)
    step = {"loss": loss.detach(), "grad": grad}
    if trains:
        step["loss_lora"] = out["loss_lora"].detach()
        if lora_gradients:
            params = list(guidance.parameters())
            step["lora_grad"] = torch.cat([p.flatten() for p in torch.autograd.grad(out["loss_lora"], params)])
    return step


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """``|value - reference| / |reference|`` (norms)."""
    return ((value.float() - reference.float()).norm() / reference.float().norm().clamp_min(1e-30)).item()


def cosine(value: torch.Tensor, reference: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(value.flatten().float(), reference.flatten().float(), dim=0).item()
