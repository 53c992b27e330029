"""Dynamic loss scaling for a trained fp32 adapter on a frozen fp16 network (VSD's LoRA on an fp16 UNet).

Why: the plugin trains under ``trainer.precision: 32-true`` without Lightning's GradScaler (the system
optimises by hand, stops on non-finite gradients, and densifies on screen-space gradients that a
scaler would scale), yet the LoRA's gradient flows back through fp16 UNet activations. The LoRA loss
is a mean over every latent entry (4 views x 4 x 64 x 64 at 512 px), so the gradient entering the
UNet is ~3e-5 per entry, below fp16's smallest normal number (6.1e-5), and much of it is rounded away
further in. Measured on the tiny pipeline at that size (``pytest -m slow -s
tests/guidance/test_lora_loss_scale.py``): fp16 makes 7.5% of the LoRA A and 10.0% of the LoRA B
gradient entries exactly zero (0% in fp32; the query and key LoRAs of the full-resolution
self-attention get no gradient at all), cosine 0.94 to the fp32 gradient; with this scale, 0% and
cosine >= 0.999994 (LoRA and camera embedding).

What (``torch.amp.GradScaler``'s rule and constants, applied to one loss inside the guidance):

- forward values are untouched (the logged loss is the true one); in backward the gradient entering
  the fp16 network is multiplied by S (``scale_gradient`` on the network's fp32 output), and the
  gradients of the trained parameters are divided by S (the network is called through
  ``torch.func.functional_call`` with the parameters behind one autograd node that sees all their
  gradients at once), so only that graph is affected;
- if any unscaled gradient is inf/nan (fp16 overflowed in backward), the step's gradients are dropped
  (the parameters' ``.grad`` stays None after the system's ``zero_grad(set_to_none=True)``, so the
  optimizer skips them, as GradScaler skips ``step()``) and S halves; after ``growth_interval`` clean
  steps S doubles;
- S and the clean-step count are buffers: in the checkpoint when scaling is on, so a resumed run
  continues with the same S. One host-device synchronisation per scaled backward (GradScaler has one
  per step too).
"""
from typing import Any, Callable, Dict, Tuple

import torch
import torch.nn as nn

# torch.amp.GradScaler's defaults (what Lightning's 16-mixed, and so threestudio's VSD, uses)
INIT_SCALE = 2.0**16
GROWTH_FACTOR = 2.0
BACKOFF_FACTOR = 0.5
GROWTH_INTERVAL = 2000


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``scale``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(scale)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (scale,) = ctx.saved_tensors
        return grad * scale.to(grad.dtype), None


class _UnscaleParameters(torch.autograd.Function):
    """Identity on the parameters (views stand in for them); backward gets every parameter's gradient
    at once, divides them by the graph's scale, and drops them all if one is not finite."""

    @staticmethod
    def forward(ctx, owner: "DynamicLossScale", scale: torch.Tensor, *params: torch.Tensor):
        ctx.owner = owner
        ctx.save_for_backward(scale)
        return tuple(p.view_as(p) for p in params)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        (scale,) = ctx.saved_tensors
        unscaled = [g / scale.to(g.dtype) for g in grads]  # S is a power of two: exact
        finite = bool(torch.stack([torch.isfinite(g).all() for g in unscaled]).all())  # the one sync
        ctx.owner.update(finite)
        if not finite:
            return (None, None) + (None,) * len(grads)
        return (None, None) + tuple(unscaled)


def scale_gradient(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x`` unchanged; its gradient times ``scale`` in backward."""
    return _ScaleGradient.apply(x, scale)


class DynamicLossScale(nn.Module):
    """S and its clean-step count (``enabled`` = the network is fp16 and something is trained through it)."""

    def __init__(self, enabled: bool, device=None, init_scale: float = INIT_SCALE,
                 growth_interval: int = GROWTH_INTERVAL) -> None:
        super().__init__()
        self.enabled = bool(enabled)
        self.growth_interval = int(growth_interval)
        # persistent only when on: an fp32 run's checkpoint holds exactly what it trains
        self.register_buffer("scale", torch.tensor(float(init_scale), device=device), persistent=self.enabled)
        self.register_buffer("clean_steps", torch.tensor(0, dtype=torch.long, device=device), persistent=self.enabled)
        self.skipped_steps = 0  # dropped (overflowed) steps in this process, not checkpointed

    def call(
        self,
        module: nn.Module,
        trainables: Dict[str, torch.Tensor],
        args: Tuple[Any, ...],
        kwargs: Dict[str, Any],
        output: Callable[[Any], torch.Tensor],
    ) -> torch.Tensor:
        """``output(module(*args, **kwargs))`` (an fp32 tensor) with the loss scale around ``module``:
        ``trainables`` are its trained parameters by their names in it. Without scaling, or without
        autograd, a plain call."""
        if not (self.enabled and torch.is_grad_enabled()):
            return output(module(*args, **kwargs))
        scale = self.scale.detach().clone()  # this graph's S (the buffer may change before its backward)
        names = list(trainables)
        stand_ins = _UnscaleParameters.apply(self, scale, *(trainables[n] for n in names))
        result = torch.func.functional_call(module, dict(zip(names, stand_ins)), args, kwargs, tie_weights=False)
        return scale_gradient(output(result), scale)

    @torch.no_grad()
    def update(self, finite: bool) -> None:
        """GradScaler's rule: halve S on an overflow, double it after ``growth_interval`` clean steps."""
        if not finite:
            self.scale.mul_(BACKOFF_FACTOR)
            self.clean_steps.zero_()
            self.skipped_steps += 1
            return
        self.clean_steps.add_(1)
        grow = self.clean_steps >= self.growth_interval  # on the device: no second synchronisation
        self.scale.copy_(torch.where(grow, self.scale * GROWTH_FACTOR, self.scale))
        self.clean_steps.copy_(torch.where(grow, torch.zeros_like(self.clean_steps), self.clean_steps))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # a checkpoint from a run with the other precision (fp32 on the CPU, fp16 on a GPU) still loads:
        # a missing S keeps the initial one, a present one is taken only when scaling is on
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        own = {prefix + name for name in ("scale", "clean_steps")}
        missing_keys[:] = [k for k in missing_keys if k not in own]
        unexpected_keys[:] = [k for k in unexpected_keys if k not in own]
