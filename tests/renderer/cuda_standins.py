"""Strict CPU stand-ins for the CUDA libraries behind the ``inria`` and ``gsplat`` backends, for tests only.

No GPU runs in CI, so the adapters are driven through these: the libraries' Python interfaces with
their signatures and return shapes, computed by the reference math, and refusing what the CUDA code
refuses, so that a missed cast or ``.to()`` fails here and not on the first GPU run:

- ``StrictInriaLibrary``: ``diff_gaussian_rasterization`` (graphdeco-inria 59f5f77 and its forks'
  return variants). ``rasterize_points.cu`` reads every tensor with ``data<float>()`` (anything but
  float32 raises "expected scalar type Float") and hands the pointers to CUDA kernels (a tensor on
  another device than ``means3D`` is an illegal memory access); tiles are 16 px and the near plane
  0.2, fixed. It renders with ``inria_fp32_projection``, an emulation of inria's float32
  ``preprocessCUDA`` computed from the settings the adapter passed (transposed matrices,
  ``p_hom.w + 1e-7``, ``ndc2Pix``, float32 radii), and the reference's compositing.
- ``StrictGsplat``: gsplat 1.5.3's ``isect_tiles``, ``isect_offset_encode`` and
  ``rasterize_to_pixels``: the Python wrappers' shape asserts, then the C++ checks (``CHECK_INPUT``:
  one device, contiguous; ``data_ptr<float>`` / ``<int32_t>``: float32 means, conics, colours and
  opacities, int32 radii, offsets and flatten ids; the tile intersection reads the depths in the means'
  dtype; ``tile_size^2`` threads per block, at most 1024), computed with gsplat's own torch
  implementation of the intersection and ``composite_like_gsplat`` (its kernel's compositing rules).
- ``ForeignDeviceTensor``: a tensor "on another device" that refuses to mix with ordinary tensors
  (as CUDA refuses a CPU tensor with a CUDA one) until it is moved with ``.to(device=...)``/``.cpu()``.

``inria_parity`` is the rule the inria backend is held to, on the CPU and on the GPU: its tolerance
comes from the fp32 emulation's own distance to the float64 reference (see its docstring).
"""
import math
import typing
from dataclasses import dataclass, replace

import torch
from torch.utils._pytree import tree_flatten

from threestudio_lucid.renderer.camera import GaussianCamera, inria_matrices
from threestudio_lucid.renderer.reference import (
    ALPHA_MAX,
    ALPHA_MIN,
    FOV_CLAMP,
    LOW_PASS,
    MIN_DISCRIMINANT,
    NEAR_PLANE,
    RADIUS_SIGMAS,
    T_MIN,
    TILE_SIZE,
    Projection,
    _clamp_alpha,
    bin_tiles,
    colors_from_sh,
    keep_in_graph,
    project_gaussians,
    quat_scale_to_covariance,
    rasterize_reference,
    tile_rects,
)

F32 = torch.float32


class CudaContractError(RuntimeError):
    """What the CUDA library would raise (or crash with) for these arguments."""


def require(condition, message):
    if not condition:
        raise CudaContractError(message)


# ---------------------------------------------------------------------------------------------
# a tensor on another device
# ---------------------------------------------------------------------------------------------
class ForeignDeviceTensor(torch.Tensor):
    """A CPU tensor that behaves as if it lived on another device: an operation mixing it with an
    ordinary tensor of one or more dimensions raises (0-d tensors mix, as CPU scalars do with CUDA
    tensors); ``.to(device=...)``, ``.to(other_tensor)`` and ``.cpu()`` return an ordinary tensor."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        moves = func is torch.Tensor.cpu or (
            func is torch.Tensor.to
            and ("device" in kwargs or any(isinstance(a, (torch.device, str, torch.Tensor)) for a in args[1:]))
        )
        if moves:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs).as_subclass(torch.Tensor)
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if any(isinstance(t, cls) for t in tensors) and any(not isinstance(t, cls) and t.dim() > 0 for t in tensors):
            name = getattr(func, "__name__", str(func))
            raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                               f"foreign and cpu! (when calling {name})")
        return super().__torch_function__(func, types, args, kwargs)


def foreign(tensor):
    return tensor.detach().clone().as_subclass(ForeignDeviceTensor)


def foreign_camera(cam: GaussianCamera) -> GaussianCamera:
    """``cam`` with its tensors on the foreign device."""
    return replace(cam, world_view=foreign(cam.world_view), campos=foreign(cam.campos))


def _on_device(name, tensor, device):
    require(type(tensor) in (torch.Tensor, torch.nn.Parameter) and tensor.device == device,
            f"{name} is on {'a foreign device' if isinstance(tensor, ForeignDeviceTensor) else tensor.device}, "
            f"the kernel's device is {device} (an illegal memory access on a GPU)")


def _float32(name, tensor):
    require(tensor.dtype == F32, f"expected scalar type Float but found {tensor.dtype} ({name})")


# ---------------------------------------------------------------------------------------------
# inria: the fp32 preprocessing, emulated
# ---------------------------------------------------------------------------------------------
@dataclass
class InriaSettings:
    """The settings fields the emulation reads (a ``GaussianRasterizationSettings`` works too)."""

    image_height: int
    image_width: int
    tanfovx: float
    tanfovy: float
    viewmatrix: torch.Tensor
    projmatrix: torch.Tensor
    campos: torch.Tensor


def inria_settings(cam: GaussianCamera) -> InriaSettings:
    view, proj, campos = (m.float() for m in inria_matrices(cam))
    return InriaSettings(cam.height, cam.width, cam.tanfovx, cam.tanfovy, view, proj, campos)


def inria_fp32_projection(means, quats, scales, settings, screen_points=None, pixel_offset=-1.0) -> Projection:
    """inria's ``preprocessCUDA`` (forward.cu, auxiliary.h) in float32, from the settings as the library
    receives them: ``p_view = transformPoint4x3(p, viewmatrix)`` (row vectors), near cull
    ``p_view.z <= 0.2``, ``p_hom = transformPoint4x4(p, projmatrix)``, ``p_proj = p_hom.xyz / (p_hom.w +
    1e-7)``, ``ndc2Pix(v, S) = ((v + 1) S + pixel_offset) / 2`` (inria: -1), ``focal = S / (2 tanfov)``,
    the EWA covariance with the 1.3 tanfov clamp, ``+0.3``, ``det_inv = 1 / det``, and the radius
    ``ceil(3 sqrt(max(lambda1, lambda2)))``, all rounded as float32 arithmetic rounds; differentiable
    by autograd with the reference's (= inria's backward) rules at the clamps. ``screen_points`` shift
    the pixel positions in NDC units, so their gradient is inria's ``means2D`` gradient."""
    w, h = int(settings.image_width), int(settings.image_height)
    view = settings.viewmatrix.to(device=means.device, dtype=F32)
    proj = settings.projmatrix.to(device=means.device, dtype=F32)
    p = means.to(F32)
    p_view = p @ view[:3, :3] + view[3, :3]
    tx, ty, tz = p_view.unbind(-1)
    in_front = tz > NEAR_PLANE
    z = torch.where(in_front, tz, torch.ones_like(tz))
    p_hom = p @ proj[:3, :] + proj[3, :]
    p_w = 1.0 / (p_hom[:, 3] + 1e-7)
    ndc = p_hom[:, :2] * p_w[:, None]
    size = torch.tensor([w, h], dtype=F32, device=means.device)
    means2d = ((ndc + 1.0) * size + pixel_offset) * 0.5
    if screen_points is not None:
        means2d = means2d + screen_points[:, :2].to(F32) * (0.5 * size)

    focal_x = w / (2.0 * float(settings.tanfovx))
    focal_y = h / (2.0 * float(settings.tanfovy))
    lim_x, lim_y = FOV_CLAMP * float(settings.tanfovx), FOV_CLAMP * float(settings.tanfovy)
    tx_tz, ty_tz = tx / z, ty / z
    jx = torch.where((tx_tz < -lim_x) | (tx_tz > lim_x), (tx_tz.clamp(-lim_x, lim_x) * z).detach(), tx)
    jy = torch.where((ty_tz < -lim_y) | (ty_tz > lim_y), (ty_tz.clamp(-lim_y, lim_y) * z).detach(), ty)
    zeros = torch.zeros_like(z)
    jac = torch.stack([focal_x / z, zeros, -(focal_x * jx) / (z * z),
                       zeros, focal_y / z, -(focal_y * jy) / (z * z)], dim=-1).reshape(-1, 2, 3)
    m = jac @ view[:3, :3].T  # J W with W the world-to-view rotation
    cov = m @ quat_scale_to_covariance(quats.to(F32), scales.to(F32)) @ m.transpose(-1, -2)
    a, b, c = cov[:, 0, 0] + LOW_PASS, cov[:, 0, 1], cov[:, 1, 1] + LOW_PASS
    det = a * c - b * b
    det_ok = det != 0
    det_inv = 1.0 / torch.where(det_ok, det, torch.ones_like(det))
    conics = torch.stack([c * det_inv, -b * det_inv, a * det_inv], dim=-1)
    with torch.no_grad():
        mid = 0.5 * (a + c)
        gap = torch.sqrt(torch.clamp_min(mid * mid - det, MIN_DISCRIMINANT))
        radius = torch.ceil(RADIUS_SIGMAS * torch.sqrt(torch.maximum(mid + gap, mid - gap)))
        keep = in_front & det_ok & torch.isfinite(radius) & torch.isfinite(means2d).all(-1)
        radius = torch.where(keep, radius.clamp_max(2.0 ** 30), torch.zeros_like(radius)).to(torch.int32)
        x0, y0, x1, y1 = tile_rects(means2d, radius, w, h, TILE_SIZE)
        radii = torch.where(((x1 - x0) * (y1 - y0) > 0) & (radius > 0), radius, torch.zeros_like(radius))
    return Projection(means2d=means2d, conics=conics, depths=tz, radii=radii, cov2d=torch.stack([a, b, c], -1))


def composite_inria(proj: Projection, opacities, features, width, height):
    """inria's ``renderCUDA`` in float32: per tile, its depth-sorted Gaussians front to back, pixel
    centres at integers, ``alpha = min(0.99, o exp(power))`` (the gradient passing through the clamp,
    as inria's backward), ``power > 0`` and ``alpha < 1/255`` skipped, ``T`` a float32 running product
    that stops before the Gaussian taking it below 1e-4. Returns premultiplied [H, W, C] ``sum w_i f_i``
    and alpha [H, W, 1] = 1 - T; differentiable by autograd."""
    bins = bin_tiles(proj.means2d, proj.radii, proj.depths, width, height, TILE_SIZE)
    offsets = bins.offsets.tolist()
    channels = features.shape[-1] + 1
    image = torch.zeros(height * width, channels, dtype=F32, device=features.device)
    pixel_index, values = [], []
    for tile in range(bins.n_tiles_x * bins.n_tiles_y):
        start, stop = offsets[tile], offsets[tile + 1]
        if stop == start:
            continue
        ids = bins.gauss_ids[start:stop]
        ty, tx = divmod(tile, bins.n_tiles_x)
        ys = torch.arange(ty * TILE_SIZE, min((ty + 1) * TILE_SIZE, height))
        xs = torch.arange(tx * TILE_SIZE, min((tx + 1) * TILE_SIZE, width))
        py, px = torch.meshgrid(ys, xs, indexing="ij")
        d = proj.means2d[ids][None] - torch.stack([px, py], dim=-1).reshape(-1, 1, 2).to(F32)  # xy - pixf
        a, b, c = proj.conics[ids].unbind(-1)
        power = -0.5 * (a * d[..., 0] * d[..., 0] + c * d[..., 1] * d[..., 1]) - b * d[..., 0] * d[..., 1]
        alpha = _clamp_alpha(opacities[ids] * torch.exp(power.clamp_max(0.0)))
        used = ((power <= 0) & (alpha >= ALPHA_MIN)).detach()
        alpha = torch.where(used, alpha, torch.zeros_like(alpha))
        t_after = torch.cumprod(1.0 - alpha, dim=1)  # float32, in compositing order
        t_before = torch.cat([torch.ones_like(t_after[:, :1]), t_after[:, :-1]], dim=1)
        alive = torch.cumsum((used & (t_after < T_MIN)).int(), dim=1) == 0  # the stop, and all after it
        weight = torch.where(alive, alpha * t_before, torch.zeros_like(alpha))
        per_gaussian = torch.cat([features[ids], torch.ones_like(features[ids][:, :1])], dim=-1)
        values.append(weight @ per_gaussian)
        pixel_index.append((py * width + px).reshape(-1))
    if values:
        image = image.index_add(0, torch.cat(pixel_index), torch.cat(values))
    image = image.reshape(height, width, channels)
    return image[..., :-1], image[..., -1:]


INRIA_FIELDS = [
    ("image_height", int), ("image_width", int), ("tanfovx", float), ("tanfovy", float), ("bg", torch.Tensor),
    ("scale_modifier", float), ("viewmatrix", torch.Tensor), ("projmatrix", torch.Tensor), ("sh_degree", int),
    ("campos", torch.Tensor), ("prefiltered", bool), ("debug", bool),
]


class StrictInriaLibrary:
    """diff_gaussian_rasterization's Python interface on the CPU (see the module docstring).
    ``returns``: "upstream" (color, radii); "depth-alpha" (the ashawkey fork: + depth, alpha, here
    without gradients, as several forks do); "invdepth" (later upstream: + inverse depth).
    ``extra_fields`` / ``without_fields``: the settings fields of other versions.
    ``pixel_offset``: ``ndc2Pix``'s constant (-1 in inria; anything else is a wrong convention, for
    the tests that show the parity rule catches one). Each call is recorded in ``calls``."""

    def __init__(self, returns="upstream", extra_fields=(), without_fields=(), pixel_offset=-1.0):
        self.returns = returns
        self.pixel_offset = pixel_offset
        self.calls = []
        fields = [f for f in INRIA_FIELDS if f[0] not in without_fields] + [(name, bool) for name in extra_fields]
        self.GaussianRasterizationSettings = typing.NamedTuple("GaussianRasterizationSettings", fields)
        library = self

        class GaussianRasterizer(torch.nn.Module):
            def __init__(self, raster_settings):
                super().__init__()
                self.raster_settings = raster_settings

            def forward(self, means3D, means2D, opacities, shs=None, colors_precomp=None, scales=None,
                        rotations=None, cov3D_precomp=None):
                return library.rasterize(self.raster_settings, means3D, means2D, opacities, shs, colors_precomp,
                                         scales, rotations, cov3D_precomp)

        self.GaussianRasterizer = GaussianRasterizer

    def check_settings(self, s):
        """The settings as rasterize_points.cu reads them, and their consistency with each other."""
        require(isinstance(s.image_height, int) and isinstance(s.image_width, int), "image size must be ints")
        require(s.scale_modifier == 1.0 and s.prefiltered is False and getattr(s, "debug", False) is False,
                "scale_modifier 1, prefiltered and debug off")
        if "antialiasing" in s._fields:
            require(s.antialiasing is False, "antialiasing off (it changes the opacities)")
        require(s.bg.shape == (3,) and s.viewmatrix.shape == (4, 4) and s.projmatrix.shape == (4, 4)
                and s.campos.shape == (3,), "bg [3], viewmatrix and projmatrix [4, 4], campos [3]")
        view = s.viewmatrix.double()
        require(torch.allclose(view[:, 3], torch.tensor([0, 0, 0, 1.0], dtype=view.dtype)),
                "row vectors: the viewmatrix's translation goes in its last row")
        require(torch.allclose(torch.linalg.inv(view)[3, :3], s.campos.double(), atol=1e-5),
                "campos must be the camera centre of the viewmatrix")
        # projmatrix must be viewmatrix @ projection: undoing the view leaves a pure projection, whose
        # ndc2Pix agrees with the focal lengths of tanfov (rasterizer_impl.cu's focal = S / (2 tanfov))
        proj_only = torch.linalg.inv(view) @ s.projmatrix.double()
        fx, fy = s.image_width / (2 * s.tanfovx), s.image_height / (2 * s.tanfovy)
        require(abs(proj_only[0, 0] - 2 * fx / s.image_width) < 1e-4 and abs(proj_only[1, 1] - 2 * fy / s.image_height) < 1e-4
                and abs(proj_only[2, 3] - 1.0) < 1e-6, "projmatrix must be viewmatrix @ the 3DGS projection of tanfov")

    def rasterize(self, s, means3D, means2D, opacities, shs, colors_precomp, scales, rotations, cov3D_precomp):
        if (shs is None) == (colors_precomp is None):
            raise Exception("Please provide excatly one of either SHs or precomputed colors!")
        require(scales is not None and rotations is not None and cov3D_precomp is None, "scales and rotations")
        device = means3D.device
        named = dict(means3D=means3D, means2D=means2D, opacities=opacities, shs=shs, colors_precomp=colors_precomp,
                     scales=scales, rotations=rotations, bg=s.bg, viewmatrix=s.viewmatrix, projmatrix=s.projmatrix,
                     campos=s.campos)
        for name, tensor in named.items():
            if tensor is not None:
                _on_device(name, tensor, device)
                _float32(name, tensor)
        p = means3D.shape[0]
        require(means3D.dim() == 2 and means3D.shape[1] == 3, "means3D must have dimensions (num_points, 3)")
        require(means2D.shape == (p, 3) and opacities.shape == (p, 1) and scales.shape == (p, 3)
                and rotations.shape == (p, 4), "means2D [P,3], opacities [P,1], scales [P,3], rotations [P,4]")
        if shs is not None:
            require(shs.dim() == 3 and shs.shape[0] == p and shs.shape[2] == 3
                    and shs.shape[1] >= (s.sh_degree + 1) ** 2 and 0 <= s.sh_degree <= 3, "shs [P, M, 3], degree <= 3")
        else:
            require(colors_precomp.shape == (p, 3), "colors_precomp [P, 3] (NUM_CHANNELS = 3)")
        self.check_settings(s)
        self.calls.append(dict(shs=shs, colors_precomp=colors_precomp, sh_degree=s.sh_degree))

        proj = inria_fp32_projection(means3D, rotations, scales, s, means2D, self.pixel_offset)
        colors = colors_precomp if shs is None else colors_from_sh(means3D, shs, s.sh_degree, s.campos)
        image, alpha = composite_inria(proj, opacities[:, 0], torch.cat([colors, proj.depths[:, None]], -1),
                                       s.image_width, s.image_height)
        image = keep_in_graph(image, means3D, means2D, opacities, shs, colors_precomp, scales, rotations)
        color = (image[..., :3] + (1.0 - alpha) * s.bg).permute(2, 0, 1).contiguous()
        depth, radii = image[..., 3:].detach().permute(2, 0, 1), proj.radii
        if self.returns == "depth-alpha":  # these forks' extra outputs carry no gradient
            return color, radii, depth, alpha.detach().permute(2, 0, 1)
        if self.returns == "invdepth":
            return color, radii, (alpha.detach().permute(2, 0, 1) / depth.clamp_min(1e-6))
        return color, radii


# ---------------------------------------------------------------------------------------------
# gsplat
# ---------------------------------------------------------------------------------------------
def composite_like_gsplat(means2d, conics, features, opacities, width, height, tile_size, offsets, flatten_ids,
                          end=None):
    """gsplat's ``rasterize_to_pixels`` for one image: per tile, its depth-sorted Gaussians front to
    back; returns (premultiplied features [H,W,D], alpha [H,W,1]); differentiable by autograd.
    Rules of its CUDA kernel: pixel centres at ``j + 0.5``, ``alpha = min(0.999, o exp(-sigma))``,
    sigma < 0 and alpha < 1/255 skipped, stop when the next T is <= 1e-4 (that one not added).
    ``end``: where the image's last tile list ends in ``flatten_ids`` (default: its end)."""
    n_tx = math.ceil(width / tile_size)
    ends = offsets.flatten().tolist()[1:] + [flatten_ids.numel() if end is None else end]
    pixel_index, values = [], []
    for tile, (start, stop) in enumerate(zip(offsets.flatten().tolist(), ends)):
        if stop <= start:
            continue
        ids = flatten_ids[start:stop].long()
        ty, tx = divmod(tile, n_tx)
        ys = torch.arange(ty * tile_size, min((ty + 1) * tile_size, height))
        xs = torch.arange(tx * tile_size, min((tx + 1) * tile_size, width))
        py, px = torch.meshgrid(ys, xs, indexing="ij")
        centres = torch.stack([px, py], dim=-1).reshape(-1, 1, 2).to(means2d) + 0.5
        d = centres - means2d[ids][None]  # [P, K, 2]
        a, b, c = conics[ids].unbind(-1)
        sigma = 0.5 * (a * d[..., 0] ** 2 + c * d[..., 1] ** 2) + b * d[..., 0] * d[..., 1]
        alpha = torch.clamp_max(opacities[ids] * torch.exp(-sigma), 0.999)
        used = (sigma >= 0) & (alpha >= 1.0 / 255.0)
        alpha = torch.where(used, alpha, torch.zeros_like(alpha))
        log_t_after = torch.cumsum(torch.log1p(-alpha.double()), dim=1)
        stops = used & (log_t_after <= math.log(1e-4))
        alive = torch.cumsum(stops.int(), dim=1) == 0
        weight = alpha * torch.exp(log_t_after - torch.log1p(-alpha.double())).to(alpha) * alive
        values.append(torch.cat([weight @ features[ids], weight.sum(dim=1, keepdim=True)], dim=-1))
        pixel_index.append((py * width + px).reshape(-1))
    channels = features.shape[-1] + 1
    image = torch.zeros(height * width, channels, dtype=features.dtype)
    if values:
        image = image.index_add(0, torch.cat(pixel_index), torch.cat(values))
    image = image.reshape(height, width, channels)
    return image[..., :-1], image[..., -1:]


def _gsplat_torch():
    import gsplat.cuda._torch_impl as impl  # gsplat is part of the test extras

    return impl


GSPLAT_CHANNELS = (1, 2, 3, 4, 5, 8, 9, 16, 17, 32, 33, 64, 65, 128, 129, 256, 257, 512, 513)


class StrictGsplat:
    """gsplat 1.5.3's three functions the adapter calls, on the CPU (see the module docstring).
    ``device`` plays the CUDA device: every tensor must be an ordinary tensor there."""

    device = torch.device("cpu")
    calls = []

    @classmethod
    def _check(cls, **tensors):
        for name, tensor in tensors.items():
            _on_device(name, tensor, cls.device)  # CHECK_CUDA
            # CHECK_CONTIGUOUS: the wrappers call .contiguous() first, so a strided input costs a copy, not an error

    @classmethod
    def isect_tiles(cls, means2d, radii, depths, tile_size, tile_width, tile_height, sort=True, segmented=False,
                    packed=False, n_images=None, image_ids=None, gaussian_ids=None):
        require(packed is False, "the adapter uses the unpacked layout")
        dims, n = means2d.shape[:-2], means2d.shape[-2]
        assert means2d.shape == dims + (n, 2), means2d.shape
        assert radii.shape == dims + (n, 2), radii.shape
        assert depths.shape == dims + (n,), depths.shape
        cls._check(means2d=means2d, radii=radii, depths=depths)
        require(means2d.dtype in (torch.float32, torch.float64), f"means2d: floating types only, got {means2d.dtype}")
        require(depths.dtype == means2d.dtype, f"expected scalar type {means2d.dtype} but found {depths.dtype} (depths)")
        require(radii.dtype == torch.int32, f"expected scalar type Int but found {radii.dtype} (radii)")
        cls.calls.append(("isect_tiles", tile_size))
        tiles_per_gauss, isect_ids, flatten_ids = _gsplat_torch()._isect_tiles(
            means2d.contiguous(), radii.contiguous(), depths.contiguous(), tile_size, tile_width, tile_height, sort)
        return tiles_per_gauss.int(), isect_ids.long(), flatten_ids.int()

    @classmethod
    def isect_offset_encode(cls, isect_ids, n_images, tile_width, tile_height):
        cls._check(isect_ids=isect_ids)
        require(isect_ids.dtype == torch.int64, f"expected scalar type Long but found {isect_ids.dtype} (isect_ids)")
        return _gsplat_torch()._isect_offset_encode(isect_ids.contiguous(), n_images, tile_width, tile_height).int()

    @classmethod
    def rasterize_to_pixels(cls, means2d, conics, colors, opacities, image_width, image_height, tile_size,
                            isect_offsets, flatten_ids, backgrounds=None, masks=None, packed=False, absgrad=False):
        require(packed is False and backgrounds is None and masks is None and absgrad is False,
                "the adapter's call: unpacked, no backgrounds, masks or absgrad")
        dims, n, channels = means2d.shape[:-2], means2d.size(-2), colors.shape[-1]
        assert means2d.shape == dims + (n, 2), means2d.shape
        assert conics.shape == dims + (n, 3), conics.shape
        assert colors.shape == dims + (n, channels), colors.shape
        assert opacities.shape == dims + (n,), opacities.shape
        require(channels in GSPLAT_CHANNELS, f"{channels} channels: the wrapper pads them with float32 zeros")
        tile_height, tile_width = isect_offsets.shape[-2:]
        assert tile_height * tile_size >= image_height and tile_width * tile_size >= image_width
        require(tile_size * tile_size <= 1024, f"tile_size {tile_size}: {tile_size}^2 threads per block exceed 1024")
        cls._check(means2d=means2d, conics=conics, colors=colors, opacities=opacities, tile_offsets=isect_offsets,
                   flatten_ids=flatten_ids)
        for name, tensor in dict(means2d=means2d, conics=conics, colors=colors, opacities=opacities).items():
            _float32(name, tensor)
        for name, tensor in dict(tile_offsets=isect_offsets, flatten_ids=flatten_ids).items():
            require(tensor.dtype == torch.int32, f"expected scalar type Int but found {tensor.dtype} ({name})")
        cls.calls.append(("rasterize_to_pixels", tile_size))
        # image c's Gaussians are rows c * N .. (c + 1) * N of the flattened inputs; its lists end where c + 1's begin
        n_images = means2d.shape[0]
        flat = [t.reshape(-1, *t.shape[2:]) for t in (means2d, conics, colors, opacities)]
        renders, alphas = [], []
        for c in range(n_images):
            end = int(isect_offsets[c + 1].flatten()[0]) if c + 1 < n_images else flatten_ids.numel()
            render, alpha = composite_like_gsplat(*flat, image_width, image_height, tile_size, isect_offsets[c],
                                                  flatten_ids, end)
            renders.append(render)
            alphas.append(alpha)
        return torch.stack(renders), torch.stack(alphas)


def pixels_under_the_alpha_clamp(params, cam, near_plane=0.2):
    """[H, W] bool: pixels where some visible Gaussian has ``o exp(power) > 0.99`` -- the only
    pixels where gsplat's compositing (clamp 0.999, zero gradient) may differ from inria's."""
    means, quats, scales, opacities = params[:4]
    proj = project_gaussians(means, quats, scales, cam, near_plane=near_plane)
    ys, xs = torch.meshgrid(torch.arange(cam.height), torch.arange(cam.width), indexing="ij")
    d = torch.stack([xs, ys], -1).reshape(-1, 1, 2).to(means) - proj.means2d[None]
    a, b, c = proj.conics.unbind(-1)
    power = -0.5 * (a * d[..., 0] ** 2 + c * d[..., 1] ** 2) - b * d[..., 0] * d[..., 1]
    clamped = (opacities * torch.exp(power) > ALPHA_MAX) & (power <= 0) & (proj.radii > 0)
    return clamped.any(dim=1).reshape(cam.height, cam.width)


# ---------------------------------------------------------------------------------------------
# the inria parity rule
# ---------------------------------------------------------------------------------------------
TOLERANCE_FACTOR = 4.0  # how far past the emulation's own distance to the reference a result may be
POSITION_PX = 1e-3  # float32 pixel positions (FMA or not) stay this close to the float64 ones (seen: <= 6e-4)
RADIUS_MARGIN = 1e-5  # relative: 3 sqrt(lambda) this close to an integer may ceil either way in float32


@dataclass
class InriaParity:
    """What a result of the inria library is held to for one scene (see ``inria_parity``)."""

    radius_ambiguous: torch.Tensor  # [N] bool: culling or radius may round either way in float32
    pixel_mask: torch.Tensor  # [H, W] bool: pixels whose tile lists are the same under either rounding
    radii: torch.Tensor  # [N] int32: the fp32 emulation's radii
    reference: dict  # the reference's outputs (masked loss) and gradients
    image_atol: float
    grad_rtol: dict
    grad_atol: dict

    @property
    def weight_mask(self) -> torch.Tensor:
        """[H, W, 1]: the loss weights' mask the compared gradients were made with."""
        return self.pixel_mask[..., None].float()

    def check(self, out, grads):
        """Raise AssertionError naming what is off."""
        sure = ~self.radius_ambiguous
        flips = int((out["radii"].cpu()[sure] != self.radii[sure]).sum())
        assert flips == 0, f"{flips} Gaussians that are not near a float32 rounding edge changed radius or visibility"
        for key in ("rgb", "depth", "alpha"):
            err = (out[key] - self.reference["out"][key]).abs()[self.pixel_mask].max().item()
            assert err <= self.image_atol, (key, err, self.image_atol)
        for name, ref in self.reference["grads"].items():
            got = grads[name]
            rel = ((got - ref).norm() / ref.norm().clamp_min(1e-30)).item()
            assert rel <= self.grad_rtol[name], (name, rel, self.grad_rtol[name])
            worst = (got - ref).abs().max().item()
            assert worst <= self.grad_atol[name], (name, worst, self.grad_atol[name])


def _uncertain_tiles(ref: Projection, emu: Projection, width, height):
    """(radius_ambiguous [N], uncertain [n_ty, n_tx] bool): Gaussians whose culling or radius may round
    either way in float32, and the tiles whose Gaussian lists may then differ (the box of a Gaussian is
    a rectangle of tiles: a radius one off, or a position off by float32 rounding, matters only where
    that moves a box edge across a tile edge)."""
    n_tx, n_ty = (width + TILE_SIZE - 1) // TILE_SIZE, (height + TILE_SIZE - 1) // TILE_SIZE
    a, b, c = ref.cov2d.double().unbind(-1)
    mid, det = 0.5 * (a + c), a * c - b * b
    extent = RADIUS_SIGMAS * torch.sqrt(mid + torch.sqrt(torch.clamp_min(mid * mid - det, MIN_DISCRIMINANT)))
    visible_ref, visible_emu = ref.radii > 0, emu.radii > 0
    culling = (visible_ref != visible_emu) | ((ref.depths.double() - NEAR_PLANE).abs() < 1e-5)
    radius_ambiguous = culling | (ref.radii != emu.radii) | (
        visible_ref & ((extent - extent.round()).abs() < RADIUS_MARGIN * extent.clamp_min(1.0)))
    r_ref, r_emu = ref.radii.long(), emu.radii.long()
    r_hi = torch.maximum(torch.maximum(r_ref, r_emu), torch.ceil(extent * (1 + RADIUS_MARGIN)).long())
    r_lo = torch.minimum(torch.minimum(r_ref, r_emu), torch.ceil(extent * (1 - RADIUS_MARGIN)).long())
    u = ref.means2d.double()
    outer_lo = tile_rects(u - POSITION_PX, r_hi, width, height, TILE_SIZE)[:2]
    outer_hi = tile_rects(u + POSITION_PX, r_hi, width, height, TILE_SIZE)[2:]
    inner_lo = tile_rects(u + POSITION_PX, r_lo, width, height, TILE_SIZE)[:2]
    inner_hi = tile_rects(u - POSITION_PX, r_lo, width, height, TILE_SIZE)[2:]
    outer, inner = torch.stack([*outer_lo, *outer_hi], -1), torch.stack([*inner_lo, *inner_hi], -1)
    candidates = (visible_ref | visible_emu) & (culling | (outer != inner).any(-1))
    uncertain = torch.zeros(n_ty, n_tx, dtype=torch.bool)
    for i in torch.nonzero(candidates).flatten().tolist():
        region = torch.zeros_like(uncertain)
        x0, y0, x1, y1 = outer[i].tolist()
        region[y0:y1, x0:x1] = True
        if not culling[i]:
            x0, y0, x1, y1 = inner[i].tolist()
            region[y0:y1, x0:x1] = False
        uncertain |= region
    return radius_ambiguous, uncertain


def inria_parity(params, cam, render_and_grad, **render_args) -> InriaParity:
    """The tolerance of a float32 inria result, derived from the fp32 emulation of its preprocessing
    (``inria_fp32_projection``), so that it fails for a wrong convention and not by chance:

    1. Float32 rounding may flip a Gaussian's culling (near plane), its radius (an integer ceiling) or
       its box's tiles (a box edge on a tile edge): where the float64 reference and the emulation
       disagree, or where the reference sits within float32 rounding of such an edge, the library may
       round either way. Every other Gaussian must get the emulation's radius exactly.
    2. The tiles whose Gaussian lists such a flip can change are left out: images are compared on the
       other pixels, and the loss behind the compared gradients is masked to them, so a flip changes
       nothing that is compared.
    3. On what is compared, the result may be ``TOLERANCE_FACTOR`` times as far from the reference as
       the emulation is (plus a float32 floor): images by max-abs error, each gradient by relative norm
       and by max-abs error.
    A wrong convention (a half-pixel shift, a transposed matrix, another focal length) moves most
    pixels by far more than float32 rounding does; ``tests/renderer/test_cuda_backends.py`` shows the
    rule rejecting one and accepting the emulation on scenes with flips."""
    means, quats, scales = params[:3]
    width, height = cam.width, cam.height
    ref_proj = project_gaussians(means.double(), quats.double(), scales.double(), cam)
    emu_proj = inria_fp32_projection(means, quats, scales, inria_settings(cam))
    with torch.no_grad():
        radius_ambiguous, uncertain = _uncertain_tiles(ref_proj, emu_proj, width, height)
        pixel_mask = ~uncertain.repeat_interleave(TILE_SIZE, 0).repeat_interleave(TILE_SIZE, 1)[:height, :width]
    assert pixel_mask.float().mean() >= 0.8, "too many pixels near float32 rounding edges for a parity check"

    mask = pixel_mask[..., None].to(means.dtype)
    ref_out, ref_grads = render_and_grad(rasterize_reference, params, cam, weight_mask=mask, **render_args)
    emu_out, emu_grads = render_and_grad(render_inria_fp32, params, cam, weight_mask=mask, **render_args)
    floor = 2e-6  # a few float32 ulps of a value of order 1
    image_err = max((emu_out[k] - ref_out[k]).abs()[pixel_mask].max().item() for k in ("rgb", "depth", "alpha"))
    grad_rtol, grad_atol = {}, {}
    for name, ref in ref_grads.items():
        diff = emu_grads[name] - ref
        scale = ref.abs().max().item()
        grad_rtol[name] = TOLERANCE_FACTOR * (diff.norm() / ref.norm().clamp_min(1e-30)).item() + 1e-5
        grad_atol[name] = TOLERANCE_FACTOR * diff.abs().max().item() + 1e-6 * scale
    return InriaParity(radius_ambiguous=radius_ambiguous, pixel_mask=pixel_mask, radii=emu_proj.radii,
                       reference=dict(out=ref_out, grads=ref_grads),
                       image_atol=TOLERANCE_FACTOR * image_err + floor, grad_rtol=grad_rtol, grad_atol=grad_atol)


def render_inria_fp32(means, quats, scales, opacities, camera, *, features=None, colors=None, sh_degree=0,
                      background=None, screen_points=None, near_plane=NEAR_PLANE, tile_size=TILE_SIZE):
    """The backend interface over the fp32 emulation (one pass: colour, depth and alpha), as the inria
    library computes them; the parity rule's float32 yardstick."""
    assert near_plane == NEAR_PLANE and tile_size == TILE_SIZE
    settings = inria_settings(camera)
    proj = inria_fp32_projection(means, quats, scales, settings, screen_points)
    if colors is None:
        colors = colors_from_sh(means.float(), features.float(), sh_degree, settings.campos)
    per_gaussian = torch.cat([colors.float(), proj.depths[:, None]], dim=-1)
    image, alpha = composite_inria(proj, opacities.reshape(-1).float(), per_gaussian, camera.width, camera.height)
    image = keep_in_graph(image, means, quats, scales, opacities, features, colors, screen_points)
    rgb, depth = image[..., :3], image[..., 3:4]
    if background is not None:
        rgb = rgb + (1.0 - alpha) * background.to(rgb)
    return {"rgb": rgb, "depth": depth, "alpha": alpha, "radii": proj.radii, "visibility": proj.radii > 0}
