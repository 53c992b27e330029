"""Rasterization runs in float32 whatever autocast is active.

Under ``trainer.precision=bf16-mixed`` (or any autocast region around the renderer) torch would run the
camera matmuls and the projection's products in half precision: pixel positions of a 512-px image
lose their sub-pixel part, the inria library is handed half ``colors_precomp`` and matrices (its CUDA
code reads float), gsplat's kernels refuse anything but float32. threestudio-3dgs disables autocast
in its renderer for the same reason. ``rasterize_in_fp32`` wraps every backend entry (and the
renderer component does the same around the camera conversion): autocast is switched off for the
inputs' device type, and half-precision tensor arguments are promoted to float32 (their gradients
flow back to them in their own dtype). float32 and float64 inputs are passed through untouched.
"""
import functools
from typing import Any, Callable, TypeVar

import torch
from torch import Tensor

HALF_DTYPES = (torch.float16, torch.bfloat16)
F = TypeVar("F", bound=Callable[..., Any])


def promote_half(value: Any) -> Any:
    """A half-precision tensor (or a list / tuple of them) as float32; anything else as it is."""
    if isinstance(value, Tensor):
        return value.float() if value.dtype in HALF_DTYPES else value
    if isinstance(value, (list, tuple)) and any(isinstance(v, Tensor) for v in value):
        return type(value)(promote_half(v) for v in value)
    return value


def _first_tensor(args, kwargs) -> Tensor:
    for value in (*args, *kwargs.values()):
        if isinstance(value, Tensor):
            return value
    raise TypeError("a rasterizer entry needs tensor arguments")


def rasterize_in_fp32(fn: F) -> F:
    """Run ``fn`` with autocast disabled on its tensors' device and half inputs promoted to float32."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device_type = _first_tensor(args, kwargs).device.type
        with torch.autocast(device_type=device_type, enabled=False):
            return fn(*(promote_half(a) for a in args), **{k: promote_half(v) for k, v in kwargs.items()})

    return wrapper  # type: ignore[return-value]
