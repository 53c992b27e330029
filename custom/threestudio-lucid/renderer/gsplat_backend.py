"""The ``gsplat`` rasterizer backend: nerfstudio's gsplat (``pip install gsplat``, >= 1.5, CUDA) for
the per-pixel work, behind the backend interface of ``reference.rasterize_reference``.

gsplat's own ``rasterization()`` is a different rasterizer from inria's (and so from the reference):
its per-axis 3.33-sigma (opacity-aware) boxes and tile rounding keep contributions that inria's
3-sigma square box and ``getRect`` rounding drop (up to ~1e-2 at some pixels, even at low
opacity), it normalises quaternions, and its projection's gradient through the EWA clamp differs.
So this backend does the O(N) per-Gaussian work with the reference's own torch code on the GPU
(``project_gaussians``: culling, EWA covariance, conics, inria's radii, ``screen_points``;
``colors_from_sh``), and hands gsplat the O(pixels x Gaussians) work, its tile intersection, sort
and fused compositing kernels (forward and backward):

- tile lists: inria's tile rectangle of each Gaussian (``reference.tile_rects``) is given to
  ``isect_tiles`` as a box that covers exactly those tiles (centre and per-axis half-size on tile
  boundaries, so gsplat's floor/ceil land on them), so every tile lists the same Gaussians in the
  same depth order as the reference's ``bin_tiles``;
- ``rasterize_to_pixels`` with the means shifted by +0.5 px (gsplat's pixel centres are at
  ``j + 0.5``, inria's at ``j``), colour and view depth as 4 channels, alpha = 1 - T.

What remains different is gsplat's compositing kernel itself: ``alpha = min(0.999, o exp(power))``
(inria 0.99) with a zero gradient where that clamp binds (inria passes it through). Where no
``o exp(power)`` exceeds 0.99 the outputs equal the reference's up to float rounding
(``tests/renderer/test_cuda_backends.py``); near-opaque splats differ at the pixels they cover.

All views of a batch go to gsplat in one call of each function (``render_views_with_gsplat``; gsplat's
functions take [C, N, .] inputs), after the per-view projection on the GPU (no host sync).
``render_with_gsplat`` (one view) and ``render_views_with_gsplat`` take gsplat's functions as an
argument (the tests hand them CPU stand-ins made of gsplat's torch implementation).
"""
from typing import Any, Dict, Optional, Sequence

import torch
from torch import Tensor

from .camera import GaussianCamera
from .gaussian_rasterizer import register_backend
from .optional_library import OptionalLibrary
from .precision import rasterize_in_fp32
from .reference import (
    NEAR_PLANE,
    TILE_SIZE,
    check_views,
    colors_from_sh,
    keep_in_graph,
    project_gaussians,
    tile_rects,
    view_outputs,
)


def _check_usable(gsplat: Any) -> None:
    """gsplat imports without its CUDA code (it JIT-compiles that on first use, and gives up without
    a CUDA toolkit); load it now so that a failure reads as 'unavailable', once. Per-axis radii in
    ``isect_tiles`` came with 1.5."""
    major, minor = (int(x) for x in gsplat.__version__.split(".")[:2])
    if (major, minor) < (1, 5):
        raise RuntimeError(f"gsplat {gsplat.__version__} is installed; this backend needs gsplat >= 1.5")
    from gsplat.cuda._backend import _C

    if _C is None:
        raise RuntimeError("gsplat's CUDA extension is not built and no CUDA toolkit (nvcc) was found to build it")


GSPLAT = OptionalLibrary(
    "gsplat",
    "gsplat",
    "install it with `pip install 'gsplat>=1.5'` (builds its CUDA code on first use; needs nvcc) or a "
    "prebuilt wheel from https://docs.gsplat.studio/whl",
    check=_check_usable,
)


@rasterize_in_fp32
def render_views_with_gsplat(
    gsplat: Any,
    means: Tensor,
    quats: Tensor,
    scales: Sequence[Tensor],
    opacities: Tensor,
    cameras: Sequence[GaussianCamera],
    *,
    features: Optional[Tensor] = None,
    colors: Optional[Tensor] = None,
    sh_degrees: Sequence[int],
    screen_points: Optional[Sequence[Tensor]] = None,
    near_plane: float = NEAR_PLANE,
    tile_size: int = TILE_SIZE,
) -> Dict[str, Any]:
    """All views of a batch: the reference's projection and colours per view (GPU kernels queued
    without a host sync), then one ``isect_tiles``, one ``isect_offset_encode`` and one
    ``rasterize_to_pixels`` call for the C views ([C, N, .] inputs). ``gsplat`` provides those three
    functions. Returns ``rgb`` [C, H, W, 3] (premultiplied), ``depth``, ``alpha`` [C, H, W, 1] and
    per-view lists ``radii``, ``visibility``, ``means2d``, ``depths``, ``conics``."""
    opacities, width, height = check_views(means, quats, scales, opacities, features, colors, screen_points, cameras)
    n_tiles_x = (width + tile_size - 1) // tile_size
    n_tiles_y = (height + tile_size - 1) // tile_size
    projections, per_gaussian, centres, halves = [], [], [], []
    for i, camera in enumerate(cameras):
        proj = project_gaussians(means, quats, scales[i], camera, None if screen_points is None else screen_points[i],
                                 near_plane, tile_size)
        view_colors = colors if colors is not None else colors_from_sh(means, features, sh_degrees[i], camera.campos)
        projections.append(proj)
        per_gaussian.append(torch.cat([view_colors, proj.depths[:, None].to(view_colors)], dim=-1))
        with torch.no_grad():
            x0, y0, x1, y1 = tile_rects(proj.means2d, proj.radii, width, height, tile_size)
            centres.append(torch.stack([x0 + x1, y0 + y1], dim=-1).to(torch.float32) * (0.5 * tile_size))
            # floor: for an odd tile_size the box ends half a pixel inside the rectangle's edges
            half = torch.stack([x1 - x0, y1 - y0], dim=-1) * tile_size // 2
            halves.append(torch.where(proj.radii[:, None] > 0, half, torch.zeros_like(half)).to(torch.int32))
    # gsplat's kernels read float32 only (data_ptr<float>; the tile intersection reads the depths in
    # the means' dtype) and want contiguous tensors on one device
    f32 = torch.float32
    with torch.no_grad():
        depths = torch.stack([p.depths.detach() for p in projections]).to(f32).contiguous()
        _, isect_ids, flatten_ids = gsplat.isect_tiles(
            torch.stack(centres).to(f32).contiguous(), torch.stack(halves).contiguous(), depths, tile_size, n_tiles_x,
            n_tiles_y, packed=False,
        )
        isect_offsets = gsplat.isect_offset_encode(isect_ids, len(cameras), n_tiles_x, n_tiles_y)
    image, alpha = gsplat.rasterize_to_pixels(
        torch.stack([p.means2d + 0.5 for p in projections]).to(f32).contiguous(),
        torch.stack([p.conics for p in projections]).to(f32).contiguous(),
        torch.stack(per_gaussian).to(f32).contiguous(),
        opacities[None].expand(len(cameras), -1).to(f32).contiguous(),
        width,
        height,
        tile_size,
        isect_offsets,
        flatten_ids,
        packed=False,
    )
    leaves = [means, quats, *scales, opacities, features, colors, *(screen_points or [])]
    image = keep_in_graph(torch.cat([image, alpha], dim=-1), *leaves)
    radii = [p.radii for p in projections]
    return {"rgb": image[..., :3], "depth": image[..., 3:4], "alpha": image[..., 4:5], "radii": radii,
            "visibility": [r > 0 for r in radii], "means2d": [p.means2d for p in projections],
            "depths": [p.depths for p in projections], "conics": [p.conics for p in projections]}


@rasterize_in_fp32
def render_with_gsplat(
    gsplat: Any,
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    camera: GaussianCamera,
    *,
    features: Optional[Tensor] = None,
    colors: Optional[Tensor] = None,
    sh_degree: int = 0,
    background: Optional[Tensor] = None,
    screen_points: Optional[Tensor] = None,
    near_plane: float = NEAR_PLANE,
    tile_size: int = TILE_SIZE,
) -> Dict[str, Tensor]:
    """One view (``render_views_with_gsplat`` with one camera); the reference's arguments and outputs."""
    out = render_views_with_gsplat(
        gsplat, means, quats, [scales], opacities, [camera], features=features, colors=colors, sh_degrees=[sh_degree],
        screen_points=None if screen_points is None else [screen_points], near_plane=near_plane, tile_size=tile_size,
    )
    image = torch.cat([out["rgb"][0], out["depth"][0], out["alpha"][0]], dim=-1)
    return view_outputs(image, background, out["radii"][0], out["means2d"][0], out["depths"][0], out["conics"][0])


def rasterize_gsplat(means: Tensor, *args, **kwargs) -> Dict[str, Tensor]:
    """The ``gsplat`` backend: ``render_with_gsplat`` with gsplat's CUDA kernels."""
    return render_with_gsplat(GSPLAT.require(means), means, *args, **kwargs)


def rasterize_gsplat_views(means: Tensor, *args, **kwargs) -> Dict[str, Any]:
    """All views of a batch with gsplat's batched kernels (the renderer's ``views`` interface)."""
    return render_views_with_gsplat(GSPLAT.require(means), means, *args, **kwargs)


rasterize_gsplat.is_available = GSPLAT.available  # consulted by "auto"
rasterize_gsplat.views = rasterize_gsplat_views  # all views of a batch in one call
rasterize_gsplat.library = GSPLAT  # checked when the renderer is configured
register_backend("gsplat", rasterize_gsplat)
