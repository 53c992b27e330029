"""Tensor and camera helpers: the subset of threestudio's ``utils/ops.py`` that components rely on.

Camera conventions (the same as threestudio's):

- ``c2w`` is OpenGL style: the camera's +x is right, +y is up and it looks down its -z axis.
- ``get_projection_matrix`` is the OpenGL perspective matrix with the ``[1, 1]`` entry negated, so
  that a point *above* the optical axis lands at NDC ``y < 0``: rasterizers such as nvdiffrast put
  image row 0 at NDC ``y = -1``, which makes NDC ``y`` grow downwards like image rows.
- The 3DGS helpers (``get_projection_matrix_gaussian``, ``get_cam_info_gaussian``) use the
  COLMAP/OpenCV camera (+y down, looking down +z) with row-vector matrices (``p @ M``). For the same
  camera, fovs and near/far they give the same NDC ``x``, ``y`` and ``w`` as ``mvp_mtx``; only depth
  differs: ``ndc_z_opengl = 2 * ndc_z_3dgs - 1``.

threestudio's ``ops.py`` imports igl and CUDA-only amp decorators at import time; this one needs
only torch.
"""
import math
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch.autograd import Function

from .config import ConfigError
from .typing import Any, Callable, Dict, Float, Num, Optional, Tensor, Tuple, Union


def _amp_decorators():
    """``custom_fwd``/``custom_bwd`` for CUDA autocast (``torch.amp`` since torch 2.4, else ``torch.cuda.amp``)."""
    try:
        from torch.amp import custom_bwd, custom_fwd

        def fwd(**kwargs):
            return custom_fwd(device_type="cuda", **kwargs)

        def bwd(fn):
            return custom_bwd(device_type="cuda")(fn)

    except ImportError:  # torch < 2.4
        from torch.cuda.amp import custom_bwd as bwd, custom_fwd

        def fwd(**kwargs):
            return custom_fwd(**kwargs)

    return fwd, bwd


_amp_fwd, _amp_bwd = _amp_decorators()


# --------------------------------------------------------------------------------------------------
# small tensor helpers
# --------------------------------------------------------------------------------------------------
def dot(x: Tensor, y: Tensor) -> Tensor:
    """Inner product over the last axis, keeping it: ``[..., D] x [..., D] -> [..., 1]``."""
    return (x * y).sum(dim=-1, keepdim=True)


def reflect(x: Tensor, n: Tensor) -> Tensor:
    """Mirror ``x`` about the normal ``n``: ``2 (x.n) n - x``."""
    return 2 * dot(x, n) * n - x


ValidScale = Union[Tuple[float, float], Num[Tensor, "2 D"]]


def scale_tensor(dat: Num[Tensor, "... D"], inp_scale: ValidScale, tgt_scale: ValidScale) -> Tensor:
    """Affinely map ``dat`` from the range ``inp_scale=(lo, hi)`` to ``tgt_scale``; ``None`` means (0, 1).

    A scale can also be a ``[2, D]`` tensor holding per-channel bounds.
    """
    src_lo, src_hi = (0, 1) if inp_scale is None else (inp_scale[0], inp_scale[1])
    dst_lo, dst_hi = (0, 1) if tgt_scale is None else (tgt_scale[0], tgt_scale[1])
    if isinstance(tgt_scale, Tensor) and tgt_scale.shape[-1] != dat.shape[-1]:
        raise ValueError(
            f"scale_tensor: target bounds have {tgt_scale.shape[-1]} channels, data has {dat.shape[-1]}"
        )
    unit = (dat - src_lo) / (src_hi - src_lo)
    return unit * (dst_hi - dst_lo) + dst_lo


def perpendicular_component(x: Float[Tensor, "B C H W"], y: Float[Tensor, "B C H W"]) -> Tensor:
    """Per sample, the part of ``x`` orthogonal to ``y``: ``x - (<x,y> / max(<y,y>, 1e-6)) y``."""
    inner = (x * y).sum(dim=[1, 2, 3])
    y_norm_sq = (y * y).sum(dim=[1, 2, 3]).clamp_min(1e-6)
    coeff = (inner / y_norm_sq).view(-1, 1, 1, 1)
    return x - coeff * y


def binary_cross_entropy(input: Tensor, target: Tensor) -> Tensor:
    """Mean BCE written out (``F.binary_cross_entropy`` refuses to run under autocast)."""
    return -(target * torch.log(input) + (1 - target) * torch.log(1 - input)).mean()


# --------------------------------------------------------------------------------------------------
# autograd functions
# --------------------------------------------------------------------------------------------------
class _ClampedGradExp(Function):
    """``exp(x)`` whose backward uses ``exp(min(x, 15))`` so huge inputs give finite gradients
    (torch-ngp's "truncated exp", used for densities and scales)."""

    @staticmethod
    @_amp_fwd(cast_inputs=torch.float32)
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    @_amp_bwd
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        return grad_out * torch.exp(x.clamp(max=15))


trunc_exp = _ClampedGradExp.apply


class SpecifyGradient(Function):
    """Inject a precomputed gradient: ``SpecifyGradient.apply(x, grad)`` returns a dummy scalar of
    shape ``[1]`` (value 1, as in threestudio) and its backward hands ``grad`` (times the incoming
    gradient, e.g. an AMP loss scale) to ``x``. This is the SDS "gradient trick" of stable-dreamfusion.
    """

    @staticmethod
    @_amp_fwd()
    def forward(ctx, input_tensor, gt_grad):
        ctx.save_for_backward(gt_grad)
        return torch.ones([1], device=input_tensor.device, dtype=input_tensor.dtype)

    @staticmethod
    @_amp_bwd
    def backward(ctx, grad_scale):
        (gt_grad,) = ctx.saved_tensors
        return gt_grad * grad_scale, None


# --------------------------------------------------------------------------------------------------
# activations
# --------------------------------------------------------------------------------------------------
def _identity(x):
    return x


def _linear_to_srgb(x):
    # IEC 61966-2-1 transfer curve: linear segment below 0.0031308, gamma 1/2.4 above
    curve = torch.pow(torch.clamp(x, min=0.0031308), 1.0 / 2.4) * 1.055 - 0.055
    return torch.where(x > 0.0031308, curve, 12.92 * x).clamp(0.0, 1.0)


_ACTIVATIONS: Dict[str, Callable] = {
    "none": _identity,
    "lin2srgb": _linear_to_srgb,
    "exp": torch.exp,
    "shifted_exp": lambda x: torch.exp(x - 1.0),
    "trunc_exp": trunc_exp,
    "shifted_trunc_exp": lambda x: trunc_exp(x - 1.0),
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "shifted_softplus": lambda x: F.softplus(x - 1.0),
    "scale_-11_01": lambda x: x * 0.5 + 0.5,
}


def get_activation(name: Optional[str]) -> Callable:
    """The activation called ``name`` (case-insensitive): one of threestudio's named activations
    (``none``, ``lin2srgb``, ``exp``, ``shifted_exp`` = exp(x-1), ``trunc_exp``, ``shifted_trunc_exp``,
    ``sigmoid``, ``tanh``, ``shifted_softplus`` = softplus(x-1), ``scale_-11_01`` = x/2+1/2), else any
    function of ``torch.nn.functional`` (``relu``, ``softplus``, ...). ``None`` is the identity."""
    if name is None:
        return _identity
    key = str(name).lower()
    if key in _ACTIVATIONS:
        return _ACTIVATIONS[key]
    fn = getattr(F, key, None)
    if fn is None or not callable(fn):
        raise ConfigError(
            f"Unknown activation function: '{name}'. Use one of {', '.join(_ACTIVATIONS)} "
            "or the name of a torch.nn.functional function (e.g. relu, softplus)."
        )
    return fn


# --------------------------------------------------------------------------------------------------
# batching
# --------------------------------------------------------------------------------------------------
def _slice_arg(arg: Any, start: int, stop: int) -> Any:
    return arg[start:stop] if isinstance(arg, Tensor) else arg


def chunk_batch(func: Callable, chunk_size: int, *args, **kwargs) -> Any:
    """Call ``func`` on slices of at most ``chunk_size`` rows of every tensor argument and
    concatenate the results along dim 0.

    The batch size is the first dim of the first tensor argument; non-tensor arguments are passed
    unchanged. ``func`` may return a tensor, a tuple/list or a dict of tensors (``None`` entries that
    are ``None`` in every chunk stay ``None``). ``chunk_size <= 0`` calls ``func`` once. Outside
    autograd the chunks are detached.
    """
    if chunk_size <= 0:
        return func(*args, **kwargs)
    batch = next((a.shape[0] for a in list(args) + list(kwargs.values()) if isinstance(a, Tensor)), None)
    if batch is None:
        raise ValueError("chunk_batch: no tensor among the arguments, cannot determine the batch size.")

    pieces = defaultdict(list)
    result_kind = None
    n_items = 0
    # max(1, batch): an empty batch still calls func once so the result has the right structure
    for start in range(0, max(1, batch), chunk_size):
        stop = start + chunk_size
        out = func(
            *[_slice_arg(a, start, stop) for a in args],
            **{k: _slice_arg(a, start, stop) for k, a in kwargs.items()},
        )
        if out is None:
            continue
        result_kind = type(out)
        if isinstance(out, Tensor):
            named = {0: out}
        elif isinstance(out, (tuple, list)):
            n_items = len(out)
            named = dict(enumerate(out))
        elif isinstance(out, dict):
            named = out
        else:
            raise TypeError(
                f"chunk_batch: func must return a tensor, list, tuple or dict, got {type(out).__name__}"
            )
        for key, value in named.items():
            if isinstance(value, Tensor) and not torch.is_grad_enabled():
                value = value.detach()
            pieces[key].append(value)

    if result_kind is None:
        return None

    merged: Dict[Any, Optional[Tensor]] = {}
    for key, values in pieces.items():
        if all(v is None for v in values):
            merged[key] = None
        elif all(isinstance(v, Tensor) for v in values):
            merged[key] = torch.cat(values, dim=0)
        else:
            bad = sorted({type(v).__name__ for v in values if not isinstance(v, Tensor)})
            raise TypeError(f"chunk_batch: cannot concatenate non-tensor results of types {bad}")

    if result_kind is Tensor or issubclass(result_kind, Tensor):
        return merged[0]
    if issubclass(result_kind, (tuple, list)):
        return result_kind(merged[i] for i in range(n_items))
    return merged


# --------------------------------------------------------------------------------------------------
# rays
# --------------------------------------------------------------------------------------------------
def get_ray_directions(
    H: int,
    W: int,
    focal: Union[float, Tuple[float, float]],
    principal: Optional[Tuple[float, float]] = None,
    use_pixel_centers: bool = True,
) -> Float[Tensor, "H W 3"]:
    """Camera-space ray directions of every pixel, OpenGL style: ``((i - cx)/fx, -(j - cy)/fy, -1)``
    for pixel column ``i`` and row ``j`` (offset by 0.5 with ``use_pixel_centers``).

    ``focal`` is one number (then the principal point is the image centre, as in threestudio) or
    ``(fx, fy)`` with ``principal=(cx, cy)``; threestudio requires ``principal`` in that case, the
    host defaults it to the image centre.
    """
    offset = 0.5 if use_pixel_centers else 0.0
    if isinstance(focal, (int, float)):
        fx = fy = float(focal)
        cx, cy = W / 2, H / 2
    else:
        fx, fy = focal
        cx, cy = (W / 2, H / 2) if principal is None else principal

    cols = torch.arange(W, dtype=torch.float32) + offset
    rows = torch.arange(H, dtype=torch.float32) + offset
    # "xy" indexing gives [H, W] grids with i varying along the width
    i, j = torch.meshgrid(cols, rows, indexing="xy")
    return torch.stack([(i - cx) / fx, -(j - cy) / fy, -torch.ones_like(i)], dim=-1)


def get_rays(
    directions: Float[Tensor, "... 3"],
    c2w: Float[Tensor, "... 4 4"],
    keepdim: bool = False,
    noise_scale: float = 0.0,
    normalize: bool = True,
) -> Tuple[Float[Tensor, "... 3"], Float[Tensor, "... 3"]]:
    """Rotate camera-space ``directions`` to world space with ``c2w`` and return ``(rays_o, rays_d)``.

    Supported shapes (threestudio's):
      - ``directions [N, 3]`` with ``c2w [4, 4]``, ``[1, 4, 4]`` or ``[N, 4, 4]`` (one camera per ray);
      - ``directions [H, W, 3]`` with ``c2w [4, 4]`` -> ``[H, W, 3]``, or ``c2w [B, 4, 4]`` -> ``[B, H, W, 3]``;
      - ``directions [B, H, W, 3]`` with ``c2w [B, 4, 4]`` -> ``[B, H, W, 3]``.
    ``noise_scale > 0`` adds one random 3-vector offset to all origins and another to all directions
    (stable-dreamfusion's anti-aliasing jitter). ``keepdim=False`` flattens both to ``[-1, 3]``.
    """
    if directions.shape[-1] != 3:
        raise ValueError(f"get_rays: directions must end in 3, got shape {tuple(directions.shape)}")
    d_dims, c_dims = directions.ndim, c2w.ndim
    if d_dims == 2 and c_dims in (2, 3):
        cams = c2w if c_dims == 3 else c2w[None]  # [N or 1, 4, 4]
        dirs = directions  # [N, 3]
    elif d_dims == 3 and c_dims == 2:
        cams = c2w[None, None]  # [1, 1, 4, 4]
        dirs = directions  # [H, W, 3]
    elif d_dims == 3 and c_dims == 3:
        cams = c2w[:, None, None]  # [B, 1, 1, 4, 4]
        dirs = directions[None]  # [1, H, W, 3]
    elif d_dims == 4 and c_dims == 3:
        cams = c2w[:, None, None]  # [B, 1, 1, 4, 4]
        dirs = directions  # [B, H, W, 3]
    else:
        raise ValueError(
            f"get_rays: unsupported shapes directions {tuple(directions.shape)} with c2w {tuple(c2w.shape)}"
        )
    rotation = cams[..., :3, :3]
    # world direction_k = sum_m R[k, m] * d_m
    rays_d = (dirs[..., None, :] * rotation).sum(dim=-1)
    rays_o = cams[..., :3, 3].expand(rays_d.shape)

    if noise_scale > 0:
        rays_o = rays_o + torch.randn(3, device=rays_o.device) * noise_scale
        rays_d = rays_d + torch.randn(3, device=rays_d.device) * noise_scale
    if normalize:
        rays_d = F.normalize(rays_d, dim=-1)
    if not keepdim:
        rays_o, rays_d = rays_o.reshape(-1, 3), rays_d.reshape(-1, 3)
    return rays_o, rays_d


# --------------------------------------------------------------------------------------------------
# OpenGL camera matrices (rasterizers, mvp)
# --------------------------------------------------------------------------------------------------
def get_projection_matrix(
    fovy: Float[Tensor, "B"], aspect_wh: float, near: float, far: float
) -> Float[Tensor, "B 4 4"]:
    """OpenGL perspective matrices for vertical fovs ``fovy`` (radians), with ``[1, 1]`` negated
    (see the module docstring: NDC ``y`` then grows downwards, like image rows).

    Made in float32 on ``fovy``'s device (threestudio always makes them on the CPU).
    """
    fovy = torch.as_tensor(fovy, dtype=torch.float32)
    inv_tan = 1.0 / torch.tan(fovy / 2.0)
    proj = torch.zeros(fovy.shape[0], 4, 4, dtype=torch.float32, device=fovy.device)
    proj[:, 0, 0] = inv_tan / aspect_wh
    proj[:, 1, 1] = -inv_tan
    proj[:, 2, 2] = -(far + near) / (far - near)
    proj[:, 2, 3] = -2.0 * far * near / (far - near)
    proj[:, 3, 2] = -1.0
    return proj


def _rigid_inverse(c2w: Float[Tensor, "... 4 4"]) -> Float[Tensor, "... 4 4"]:
    """Inverse of a rotation+translation matrix: ``[R | t]^-1 = [R^T | -R^T t]``."""
    rot_t = c2w[..., :3, :3].transpose(-1, -2)
    w2c = torch.zeros_like(c2w)
    w2c[..., :3, :3] = rot_t
    w2c[..., :3, 3:] = -rot_t @ c2w[..., :3, 3:]
    w2c[..., 3, 3] = 1.0
    return w2c


def get_mvp_matrix(c2w: Float[Tensor, "B 4 4"], proj_mtx: Float[Tensor, "B 4 4"]) -> Float[Tensor, "B 4 4"]:
    """Model-view-projection ``proj @ w2c``, with ``w2c`` the rigid inverse of ``c2w``.

    Clip coordinates of a world point are ``mvp @ [x, y, z, 1]^T`` (column vectors).
    """
    return proj_mtx @ _rigid_inverse(c2w)


def get_full_projection_matrix(c2w: Float[Tensor, "4 4"], proj_mtx: Float[Tensor, "4 4"]) -> Float[Tensor, "4 4"]:
    """``c2w @ proj_mtx`` as threestudio computes it (kept for API parity; not an mvp matrix)."""
    return c2w @ proj_mtx


# --------------------------------------------------------------------------------------------------
# 3D Gaussian Splatting camera matrices (row-vector convention, COLMAP/OpenCV camera)
# --------------------------------------------------------------------------------------------------
def convert_pose(C2W: Float[Tensor, "... 4 4"]) -> Float[Tensor, "... 4 4"]:
    """OpenGL c2w -> COLMAP/OpenCV c2w: negate the camera's y and z axes (columns 1 and 2)."""
    flip = torch.ones(4, dtype=C2W.dtype, device=C2W.device)
    flip[1:3] = -1.0
    return C2W * flip


def get_projection_matrix_gaussian(znear, zfar, fovX, fovY, device=None) -> Float[Tensor, "4 4"]:
    """The 3DGS projection (column-vector form): maps camera depth ``z in [znear, zfar]`` to
    ``[0, 1]`` and puts ``w = z`` (``P[3, 2] = 1``). Made on ``device``: the CPU unless given
    (threestudio defaults to "cuda")."""
    tan_half_y = math.tan(float(fovY) / 2)
    tan_half_x = math.tan(float(fovX) / 2)
    top, right = tan_half_y * znear, tan_half_x * znear
    bottom, left = -top, -right

    P = torch.zeros(4, 4, device=device if device is not None else "cpu")
    P[0, 0] = 2.0 * znear / (right - left)
    P[1, 1] = 2.0 * znear / (top - bottom)
    P[0, 2] = (right + left) / (right - left)
    P[1, 2] = (top + bottom) / (top - bottom)
    P[2, 2] = zfar / (zfar - znear)
    P[2, 3] = -(zfar * znear) / (zfar - znear)
    P[3, 2] = 1.0
    return P


def get_fov_gaussian(P: Float[Tensor, "4 4"]) -> Tuple[float, float]:
    """Inverse of ``get_projection_matrix_gaussian`` for centred frusta: ``(fovX, fovY)`` in radians."""
    return 2 * math.atan(1 / float(P[0, 0])), 2 * math.atan(1 / float(P[1, 1]))


def get_cam_info_gaussian(c2w: Float[Tensor, "4 4"], fovx, fovy, znear, zfar):
    """3DGS camera of an OpenGL ``c2w``: ``(world_view_transform, full_proj_transform, camera_center)``.

    Both matrices are transposed (row-vector convention of diff-gaussian-rasterization): a world
    point's clip coordinates are ``[x, y, z, 1] @ full_proj_transform``. ``camera_center`` is the
    camera position in world space. threestudio moves the results to CUDA; the host keeps them on
    ``c2w``'s device (float32).
    """
    w2c = torch.inverse(convert_pose(c2w))
    world_view_transform = w2c.transpose(0, 1).float()
    proj_t = get_projection_matrix_gaussian(znear=znear, zfar=zfar, fovX=fovx, fovY=fovy, device=c2w.device)
    proj_t = proj_t.transpose(0, 1)
    full_proj_transform = world_view_transform @ proj_t
    camera_center = torch.inverse(world_view_transform)[3, :3]
    return world_view_transform, full_proj_transform, camera_center
