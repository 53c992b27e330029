"""A depth ControlNet on the guidance's prompted UNet call, as LucidDreamer's ``use_control_net``.

LucidDreamer loads ``ControlNetModel.from_pretrained(controlnet_model_key)`` next to its UNet and, from
iteration ``use_control_net_iter`` on, with probability ``controlnet_ratio`` per iteration, adds the
ControlNet's residuals (conditioned on the rendered depth, repeated to 3 channels at 512x512) to the
UNet call that predicts the guided noise at x_t; the DDIM inversion calls stay plain. Here the same
is ``system.guidance.controlnet_model_name_or_path`` with ``controlnet_ratio`` a ``C()`` schedule (a
probability per step: LucidDreamer's switch at iteration K is ``[K, 0.0, ratio, K + 1]``) and
``controlnet_conditioning_scale`` (diffusers' name; LucidDreamer: 1). The depth map is the system's
``depth_image`` (``system.depth_map``: ``disparity``, near = bright, is what depth ControlNets are
trained on).

This module holds what does not depend on a guidance: loading, the conditioning image and the
residuals for a UNet batch.
"""
from typing import Any, Dict

import torch
import torch.nn.functional as F

from ..errors import ConfigError

CONTROLNET_KEY = "system.guidance.controlnet_model_name_or_path"


def load_depth_controlnet(name_or_path: str, dtype: torch.dtype, device: torch.device, cross_attention_dim=None):
    """``ControlNetModel.from_pretrained`` (a diffusers folder or hub id), frozen, on ``device``; a
    model that cannot be found or loaded, or that conditions on another text width than the UNet, is
    one line naming the key."""
    from diffusers import ControlNetModel

    from .diffusion_base import check_model_reachable, dtype_argument

    check_model_reachable(name_or_path, CONTROLNET_KEY, marker="config.json")
    try:
        controlnet = ControlNetModel.from_pretrained(name_or_path, **dtype_argument(dtype))
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"{CONTROLNET_KEY}='{name_or_path}' is not a loadable diffusers ControlNetModel "
            f"({' '.join(str(e).split())[:200]}): point it at a ControlNet folder or hub id, e.g. a depth "
            "ControlNet trained for the same Stable Diffusion version as the guidance's model."
        ) from None
    width = getattr(controlnet.config, "cross_attention_dim", None)
    if cross_attention_dim is not None and width is not None and int(width) != int(cross_attention_dim):
        raise ConfigError(
            f"{CONTROLNET_KEY}='{name_or_path}' cross-attends to {width}-d text embeddings but the guidance's "
            f"UNet to {cross_attention_dim}-d ones: use a ControlNet made for the same Stable Diffusion version "
            "(e.g. an SD 2.x depth ControlNet for stable-diffusion-2-1-base)."
        )
    return controlnet.to(device).eval().requires_grad_(False)


def control_image(depth: torch.Tensor, size: int, dtype: torch.dtype) -> torch.Tensor:
    """A [B, H, W, 1] depth map in [0, 1] as the ControlNet's conditioning image: [B, 3, size, size]
    (the map repeated over RGB at the UNet's image size, as LucidDreamer passes it)."""
    if depth.dim() != 4 or depth.shape[-1] != 1:
        raise ValueError(f"the control depth must be [B, H, W, 1], got {tuple(depth.shape)}")
    image = depth.permute(0, 3, 1, 2).detach().float().clamp(0.0, 1.0)
    image = F.interpolate(image, (size, size), mode="bilinear", align_corners=False)
    return image.repeat(1, 3, 1, 1).to(dtype)


def controlnet_residuals(controlnet, latents: torch.Tensor, t: torch.Tensor, text_embeddings: torch.Tensor,
                         image: torch.Tensor, conditioning_scale: float) -> Dict[str, Any]:
    """The UNet keyword arguments that apply ``controlnet`` to one UNet batch (``latents`` [N, 4, h, w],
    ``image`` [N, 3, H, W] in the same order as the batch)."""
    dtype = controlnet.dtype
    down, mid = controlnet(
        latents.to(dtype), t.to(latents.device), encoder_hidden_states=text_embeddings.to(dtype),
        controlnet_cond=image.to(dtype), conditioning_scale=float(conditioning_scale), return_dict=False,
    )
    return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
