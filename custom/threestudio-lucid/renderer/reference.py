"""The reference Gaussian rasterizer: pure torch, differentiable by autograd, the specification.

It reproduces the forward pass of the original 3D Gaussian Splatting rasterizer
(graphdeco-inria/diff-gaussian-rasterization, with the depth output of the ashawkey fork) and is the
oracle every faster backend is tested against, values and gradients. The stages are small functions:

1. ``project_gaussians`` (in float64, rounded to the input precision): view transform, near cull (``z <= 0.2``), 3D covariance ``R S S^T R^T``
   from the quaternion, EWA 2D covariance ``J W Sigma W^T J^T`` with ``t.x/t.z`` and ``t.y/t.z``
   clamped to ``1.3 tan(fov/2)``, low-pass ``+0.3`` on the diagonal (no opacity compensation),
   conic = inverse covariance (``det == 0`` culled), radius ``ceil(3 sqrt(lambda_max))`` with
   ``lambda = mid +- sqrt(max(0.1, mid^2 - det))``, a square box of that radius in tiles.
2. ``eval_sh``: real spherical harmonics up to degree 3 with inria's constants and signs; colours are
   ``max(SH(dir) + 0.5, 0)`` with ``dir = normalize(mean - campos)``.
3. ``bin_tiles``: (tile, Gaussian) pairs sorted by tile, then view depth (ties: input order).
4. ``composite_tiles``: per pixel, front to back, ``power = -0.5 (a dx^2 + c dy^2) - b dx dy``
   (skipped if > 0), ``alpha = min(0.99, o exp(power))`` (skipped if < 1/255), and the pixel stops
   before the first Gaussian that would bring the transmittance ``T (1 - alpha)`` below 1e-4 (that
   Gaussian is not added, nor any later one). Output ``C = sum w_i c_i`` with ``w_i = alpha_i T_i``,
   ``alpha = sum w_i``, ``depth = sum w_i z_i`` (view-space z, not normalised), plus ``T bg`` if a
   background is given.

Conventions: pixel centres sit at integer coordinates (inria's ``ndc2Pix``), see ``camera.py``.
Quaternions are (w, x, y, z) and are NOT normalised here, as in inria (the geometry normalises in
``get_rotation``); an unnormalised quaternion scales the rotation formula accordingly.

Gradients are autograd's, with two deliberate exceptions that follow inria's hand-written backward
(``backward.cu``), so that the C++ CPU kernel and the CUDA backends can match this file:

- **alpha clamp**: where ``o exp(power) > 0.99`` the forward uses ``alpha = 0.99`` but the gradient
  passes straight through, as if unclamped: ``d alpha / d o = G``, ``d alpha / d G = o``. (Autograd
  and gsplat would give zero there.) ``_clamp_alpha`` implements it.
- **EWA clamp**: where ``t.x/t.z`` (or ``t.y/t.z``) is clamped, the clamped ``t.x`` is a constant in
  the Jacobian's gradient (inria's ``x_grad_mul = 0``; it also drops the clamped ``t.x``'s dependence
  on ``t.z``).

Decisions (1/255 skip, early termination, box and near culling, radii) carry no gradient, as in
inria. Other deviations from inria, all at float32 rounding level or outside its API: the mean's
pixel is ``fx x/z + cx`` (inria divides by ``w + 1e-7`` in NDC); the transmittance is a float64 sum
of ``log(1 - alpha)`` and the stop test is ``sum >= log(1e-4)`` (inria: a float32 running product);
``tile_size`` is a parameter (inria: 16 only); ``screen_points`` shift the projected means (inria
ignores the values of ``means2D``, which are zeros in practice).

Densification hook: ``screen_points`` [N, 2 or 3] (a zero leaf with ``requires_grad``) is added to
the projected means in NDC units (``pixel += screen_points.xy * (W/2, H/2)``), so after backward
``screen_points.grad[:, :2]`` is d loss / d NDC-xy of the means, as inria's ``means2D.grad``
(the third column, if any, gets zeros).

Performance: tile binning, then runs of tiles of at most ``max_chunk_pairs`` (Gaussian-in-tile x
pixel) pairs are composited as dense [rows, tile pixels] blocks whose transmittance is a segmented
cumulative sum of ``log(1 - alpha)`` (float64) down the depth-sorted rows of each tile; nothing is
ever [pixels x Gaussians]. When there is more than one run and gradients are needed, each run is
under ``torch.utils.checkpoint`` (recomputed in backward), so memory stays bounded by one run plus
O(N + binned rows) whatever the scene.
"""
import math
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .camera import GaussianCamera
from .precision import rasterize_in_fp32

# ---- constants of the original rasterizer (forward.cu, auxiliary.h, config.h) ----
NEAR_PLANE = 0.2
FOV_CLAMP = 1.3
LOW_PASS = 0.3
MIN_DISCRIMINANT = 0.1  # lambda = mid +- sqrt(max(0.1, mid^2 - det))
RADIUS_SIGMAS = 3.0
ALPHA_MAX = 0.99
ALPHA_MIN = 1.0 / 255.0
T_MIN = 1e-4
LOG_T_MIN = math.log(T_MIN)
TILE_SIZE = 16
MAX_CHUNK_PAIRS = 1 << 20  # measured: larger runs page-fault on fresh buffers, smaller ones pay overhead

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


class Projection(NamedTuple):
    """Per-Gaussian screen-space quantities. Culled Gaussians have ``radii == 0``; their other
    entries are finite but meaningless."""

    means2d: Tensor  # [N, 2] pixel coordinates of the means (centres at integers)
    conics: Tensor  # [N, 3] (a, b, c) of the inverse 2D covariance [[a, b], [b, c]]
    depths: Tensor  # [N] view-space z
    radii: Tensor  # [N] int32 pixel radius of the 3-sigma square box, 0 = culled
    cov2d: Tensor  # [N, 3] (xx, xy, yy) of the 2D covariance, low-pass included


class TileBins(NamedTuple):
    """(tile, Gaussian) pairs sorted by tile id, then depth; rows of tile t are
    ``offsets[t]:offsets[t+1]``. Tiles are numbered row-major (``ty * n_tiles_x + tx``)."""

    gauss_ids: Tensor  # [M] int64
    tile_ids: Tensor  # [M] int64
    offsets: Tensor  # [n_tiles + 1] int64
    n_tiles_x: int
    n_tiles_y: int


# ---------------------------------------------------------------------------------------------
# projection
# ---------------------------------------------------------------------------------------------
def quat_scale_to_covariance(quats: Tensor, scales: Tensor) -> Tensor:
    """Sigma = R S S^T R^T with R the rotation formula of the (unnormalised) quaternion (w, x, y, z)
    and S = diag(scales); [N, 3, 3]. inria's ``computeCov3D`` without ``scale_modifier``."""
    r, x, y, z = quats.unbind(-1)
    rot = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - r * z), 2 * (x * z + r * y),
            2 * (x * y + r * z), 1 - 2 * (x * x + z * z), 2 * (y * z - r * x),
            2 * (x * z - r * y), 2 * (y * z + r * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(*quats.shape[:-1], 3, 3)
    m = rot * scales[..., None, :]  # R S
    return m @ m.transpose(-1, -2)


def tile_rects(means2d: Tensor, radii: Tensor, width: int, height: int, tile_size: int = TILE_SIZE):
    """inria's ``getRect``: the tiles [min, max) covered by the square box of ``radii`` around each
    mean, clamped to the grid. Returns (x0, y0, x1, y1) int64 tensors."""
    n_tx = (width + tile_size - 1) // tile_size
    n_ty = (height + tile_size - 1) // tile_size
    u, v = means2d.detach()[:, 0], means2d.detach()[:, 1]
    r = radii.to(u.dtype)
    # C's (int) truncates towards zero; clamping at 0 afterwards makes it equal to floor here
    x0 = torch.trunc((u - r) / tile_size).clamp(0, n_tx).long()
    y0 = torch.trunc((v - r) / tile_size).clamp(0, n_ty).long()
    x1 = torch.trunc((u + r + tile_size - 1) / tile_size).clamp(0, n_tx).long()
    y1 = torch.trunc((v + r + tile_size - 1) / tile_size).clamp(0, n_ty).long()
    return x0, y0, x1, y1


def project_gaussians(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    camera: GaussianCamera,
    screen_points: Optional[Tensor] = None,
    near_plane: float = NEAR_PLANE,
    tile_size: int = TILE_SIZE,
) -> Projection:
    """inria's ``preprocessCUDA`` minus the colours: project means, build conics and radii.

    Computed in float64 and rounded to the means' dtype at the end: float32 means2d, conics and
    depths are then the correctly rounded values, which any implementation computing in float64
    reproduces whatever its operation order (the C++ kernel does), so culling, radii and the depth
    order agree exactly. The tile rectangles are computed from the rounded means2d."""
    dtype = means.dtype
    f64 = torch.float64
    camera = camera.on(means.device)
    width, height = camera.width, camera.height
    p_view = camera.world_to_camera(means.to(f64))
    tx, ty, tz = p_view.unbind(-1)
    in_front = tz > near_plane
    # culled Gaussians get z = 1 so that no division below makes inf/nan (and no nan gradients)
    z = torch.where(in_front, tz, torch.ones_like(tz))

    u = camera.fx * tx / z + camera.cx
    v = camera.fy * ty / z + camera.cy
    if screen_points is not None:
        u = u + screen_points[:, 0].to(f64) * (0.5 * width)
        v = v + screen_points[:, 1].to(f64) * (0.5 * height)
    means2d = torch.stack([u, v], dim=-1).to(dtype)

    # EWA splatting (computeCov2D): the Jacobian at the mean, with the mean's direction clamped to
    # 1.3x the field of view; the clamped coordinate is a constant for gradients (inria backward)
    lim_x, lim_y = FOV_CLAMP * camera.tanfovx, FOV_CLAMP * camera.tanfovy
    tx_tz, ty_tz = tx / z, ty / z
    jx = torch.where(
        (tx_tz < -lim_x) | (tx_tz > lim_x), (tx_tz.clamp(-lim_x, lim_x) * z).detach(), tx
    )
    jy = torch.where(
        (ty_tz < -lim_y) | (ty_tz > lim_y), (ty_tz.clamp(-lim_y, lim_y) * z).detach(), ty
    )
    zeros = torch.zeros_like(z)
    jac = torch.stack(
        [
            camera.fx / z, zeros, -camera.fx * jx / (z * z),
            zeros, camera.fy / z, -camera.fy * jy / (z * z),
        ],
        dim=-1,
    ).reshape(-1, 2, 3)
    m = jac @ camera.world_view[:3, :3].to(f64)  # J W, [N, 2, 3]
    cov3d = quat_scale_to_covariance(quats.to(f64), scales.to(f64))
    cov = m @ cov3d @ m.transpose(-1, -2)
    a = cov[:, 0, 0] + LOW_PASS
    b = cov[:, 0, 1]
    c = cov[:, 1, 1] + LOW_PASS

    det = a * c - b * b
    det_ok = det != 0
    det_safe = torch.where(det_ok, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1).to(dtype)

    with torch.no_grad():
        mid = 0.5 * (a + c)
        gap = torch.sqrt(torch.clamp_min(mid * mid - det, MIN_DISCRIMINANT))
        lambda_max = torch.maximum(mid + gap, mid - gap)
        radius = torch.ceil(RADIUS_SIGMAS * torch.sqrt(lambda_max))
        # a non-finite radius (NaN inputs) or position culls; 2^30 keeps the int32 cast defined
        keep = in_front & det_ok & torch.isfinite(radius) & torch.isfinite(means2d).all(-1)
        radius = torch.where(keep, radius.clamp_max(2.0 ** 30), torch.zeros_like(radius)).to(torch.int32)
        x0, y0, x1, y1 = tile_rects(means2d, radius, width, height, tile_size)
        touches_tiles = (x1 - x0) * (y1 - y0) > 0
        radii = torch.where(touches_tiles & (radius > 0), radius, torch.zeros_like(radius))

    return Projection(
        means2d=means2d, conics=conics, depths=tz.to(dtype), radii=radii, cov2d=torch.stack([a, b, c], -1).to(dtype)
    )


# ---------------------------------------------------------------------------------------------
# colour
# ---------------------------------------------------------------------------------------------
def eval_sh(degree: int, sh: Tensor, dirs: Tensor) -> Tensor:
    """Real SH of ``degree`` (0..3) with inria's constants: ``sh`` [..., K, C] with
    K >= (degree+1)^2 (extra coefficients are ignored), unit ``dirs`` [..., 3] -> [..., C].
    No +0.5 offset here (``colors_from_sh`` adds it)."""
    if not 0 <= degree <= 3:
        raise ValueError(f"SH degree must be in 0..3, got {degree}")
    if sh.shape[-2] < (degree + 1) ** 2:
        raise ValueError(f"SH degree {degree} needs {(degree + 1) ** 2} coefficients, got {sh.shape[-2]}")
    result = SH_C0 * sh[..., 0, :]
    if degree == 0:
        return result
    x, y, z = dirs[..., 0:1], dirs[..., 1:2], dirs[..., 2:3]
    result = result - SH_C1 * y * sh[..., 1, :] + SH_C1 * z * sh[..., 2, :] - SH_C1 * x * sh[..., 3, :]
    if degree == 1:
        return result
    xx, yy, zz = x * x, y * y, z * z
    xy, yz, xz = x * y, y * z, x * z
    result = (
        result
        + SH_C2[0] * xy * sh[..., 4, :]
        + SH_C2[1] * yz * sh[..., 5, :]
        + SH_C2[2] * (2.0 * zz - xx - yy) * sh[..., 6, :]
        + SH_C2[3] * xz * sh[..., 7, :]
        + SH_C2[4] * (xx - yy) * sh[..., 8, :]
    )
    if degree == 2:
        return result
    return (
        result
        + SH_C3[0] * y * (3.0 * xx - yy) * sh[..., 9, :]
        + SH_C3[1] * xy * z * sh[..., 10, :]
        + SH_C3[2] * y * (4.0 * zz - xx - yy) * sh[..., 11, :]
        + SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy) * sh[..., 12, :]
        + SH_C3[4] * x * (4.0 * zz - xx - yy) * sh[..., 13, :]
        + SH_C3[5] * z * (xx - yy) * sh[..., 14, :]
        + SH_C3[6] * x * (xx - 3.0 * yy) * sh[..., 15, :]
    )


def colors_from_sh(means: Tensor, features: Tensor, degree: int, campos: Tensor) -> Tensor:
    """inria's ``computeColorFromSH``: ``max(SH(normalize(mean - campos)) + 0.5, 0)``, [N, 3].
    The clamp's gradient is zero where the colour is clamped (inria's ``clamped`` mask)."""
    d = means - campos.to(means)
    norm = d.norm(dim=-1, keepdim=True)
    dirs = d / torch.where(norm > 0, norm, torch.ones_like(norm))
    return torch.clamp_min(eval_sh(degree, features, dirs) + 0.5, 0.0)


# ---------------------------------------------------------------------------------------------
# binning
# ---------------------------------------------------------------------------------------------
def bin_tiles(
    means2d: Tensor, radii: Tensor, depths: Tensor, width: int, height: int, tile_size: int = TILE_SIZE
) -> TileBins:
    """Every visible Gaussian is listed in each tile of its box; lists are sorted by view depth.
    inria sorts the keys ``tile << 32 | depth bits`` with a stable radix sort; here a stable sort by
    depth then a stable sort by tile give the same order (equal depths keep the input order)."""
    device = means2d.device
    n_tx = (width + tile_size - 1) // tile_size
    n_ty = (height + tile_size - 1) // tile_size
    with torch.no_grad():
        x0, y0, x1, y1 = tile_rects(means2d, radii, width, height, tile_size)
        visible = torch.nonzero(radii > 0).squeeze(1)
        order = visible[torch.sort(depths.detach()[visible], stable=True).indices]
        box_w = (x1 - x0)[order]
        counts = box_w * (y1 - y0)[order]
        gauss_ids = torch.repeat_interleave(order, counts)
        starts = torch.cumsum(counts, 0) - counts
        local = torch.arange(gauss_ids.numel(), device=device) - torch.repeat_interleave(starts, counts)
        w_rep = torch.repeat_interleave(box_w, counts)
        tile_x = x0[gauss_ids] + local % w_rep
        tile_y = y0[gauss_ids] + torch.div(local, w_rep, rounding_mode="floor")
        tile_ids = tile_y * n_tx + tile_x
        tile_ids, perm = torch.sort(tile_ids, stable=True)
        gauss_ids = gauss_ids[perm]
        per_tile = torch.bincount(tile_ids, minlength=n_tx * n_ty)
        offsets = torch.zeros(n_tx * n_ty + 1, dtype=torch.long, device=device)
        offsets[1:] = torch.cumsum(per_tile, 0)
    return TileBins(gauss_ids, tile_ids, offsets, n_tx, n_ty)


# ---------------------------------------------------------------------------------------------
# compositing
# ---------------------------------------------------------------------------------------------
class _ClampAlpha(torch.autograd.Function):
    """``min(alpha, 0.99)`` whose gradient passes straight through the clamp, as inria's backward."""

    @staticmethod
    def forward(ctx, alpha: Tensor) -> Tensor:
        return alpha.clamp_max(ALPHA_MAX)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


def _clamp_alpha(alpha: Tensor) -> Tensor:
    return _ClampAlpha.apply(alpha)


def _segmented_cumsum(x: Tensor, segment_start: Tensor) -> Tuple[Tensor, Tensor]:
    """Inclusive and exclusive cumulative sums along dim 0 that restart at each segment;
    ``segment_start[r]`` is the first row of row r's segment (a segment's rows are contiguous).
    The exclusive sum is exactly 0 on a segment's first row."""
    inclusive = torch.cumsum(x, dim=0)
    before = torch.cat([torch.zeros_like(inclusive[:1]), inclusive[:-1]], dim=0)
    base = before.index_select(0, segment_start)
    return inclusive - base, before - base


def _composite_chunk(
    means2d: Tensor,
    conics: Tensor,
    opacities: Tensor,
    features: Tensor,
    gauss_ids: Tensor,
    row_tile: Tensor,
    row_segment_start: Tensor,
    tile_x0: Tensor,
    tile_y0: Tensor,
    width: int,
    height: int,
    tile_size: int,
) -> Tensor:
    """Composite the depth-sorted rows of a run of tiles. Row r is Gaussian ``gauss_ids[r]`` in tile
    ``row_tile[r]`` (local index); columns are the tile's pixels, row-major. Returns the sums
    ``sum_i w_i features_i`` per tile pixel, [n_tiles, tile_size^2, D]."""
    n_tiles = tile_x0.shape[0]
    xy = means2d[gauss_ids]
    conic = conics[gauss_ids]
    offs = torch.arange(tile_size, device=xy.device, dtype=xy.dtype)
    px = tile_x0[row_tile].to(xy.dtype)[:, None] + offs  # [R, ts] pixel x of each column
    py = tile_y0[row_tile].to(xy.dtype)[:, None] + offs  # [R, ts] pixel y of each row of pixels
    dx = xy[:, 0:1] - px
    dy = xy[:, 1:2] - py
    a, b, c = conic[:, 0:1], conic[:, 1:2], conic[:, 2:3]
    # power[r, py, px] = -0.5 (a dx^2 + c dy^2) - b dx dy, flattened row-major over the tile
    power = -0.5 * ((a * dx * dx)[:, None, :] + (c * dy * dy)[:, :, None]) - (b * dx)[:, None, :] * dy[:, :, None]
    power = power.reshape(power.shape[0], -1)
    inside = ((px < width)[:, None, :] & (py < height)[:, :, None]).reshape(power.shape)

    # power > 0 (never for a positive-definite conic) is skipped; clamping keeps exp finite there
    alpha = _clamp_alpha(opacities[gauss_ids][:, None] * torch.exp(power.clamp_max(0.0)))
    valid = (inside & (power <= 0) & (alpha >= ALPHA_MIN)).detach()
    alpha = torch.where(valid, alpha, torch.zeros((), dtype=alpha.dtype, device=alpha.device))
    # log-transmittance after / before each row, per pixel, along the depth-sorted rows of a tile
    log_t_after, log_t_before = _segmented_cumsum(torch.log1p(-alpha.double()), row_segment_start)
    # T only decreases, so the first row with T(1 - alpha) < T_MIN and all later ones are exactly
    # the Gaussians inria's loop never adds; rows before it never see a dropped row's alpha
    contributes = log_t_after.detach() >= LOG_T_MIN
    weights = torch.where(contributes, alpha * torch.exp(log_t_before).to(alpha.dtype), 0.0)  # [R, P]
    contrib = weights[:, :, None] * features[gauss_ids][:, None, :]
    out = torch.zeros(n_tiles, power.shape[1], features.shape[1], dtype=contrib.dtype, device=contrib.device)
    return out.index_add(0, row_tile, contrib)


def _plan_chunks(offsets: List[int], max_rows: int) -> List[Tuple[int, int]]:
    """Split the tiles into runs [t0, t1) of at most ``max_rows`` rows (a larger tile is alone)."""
    n_tiles = len(offsets) - 1
    runs, t0 = [], 0
    while t0 < n_tiles:
        t1 = t0 + 1
        while t1 < n_tiles and offsets[t1 + 1] - offsets[t0] <= max_rows:
            t1 += 1
        runs.append((t0, t1))
        t0 = t1
    return runs


def composite_tiles(
    means2d: Tensor,
    conics: Tensor,
    opacities: Tensor,
    features: Tensor,
    bins: TileBins,
    width: int,
    height: int,
    tile_size: int = TILE_SIZE,
    max_chunk_pairs: int = MAX_CHUNK_PAIRS,
) -> Tensor:
    """Alpha-composite per-Gaussian ``features`` [N, D] front to back: [H, W, D] sums
    ``sum_i alpha_i T_i features_i`` (premultiplied, no background). Tiles are processed in runs of
    at most ``max_chunk_pairs`` (row x pixel) pairs (a single larger tile is its own run); when
    there is more than one run and gradients are needed, each run is under
    ``torch.utils.checkpoint`` (recomputed in backward), so memory is bounded by one run."""
    n_tiles = bins.n_tiles_x * bins.n_tiles_y
    npix = tile_size * tile_size
    device = means2d.device
    dtype = torch.promote_types(features.dtype, means2d.dtype)
    offsets = bins.offsets.tolist()
    runs = _plan_chunks(offsets, max(1, max_chunk_pairs // npix))
    tile_index = torch.arange(n_tiles, device=device)
    all_x0 = (tile_index % bins.n_tiles_x) * tile_size
    all_y0 = torch.div(tile_index, bins.n_tiles_x, rounding_mode="floor") * tile_size
    needs_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (means2d, conics, opacities, features)
    )
    use_checkpoint = needs_grad and sum(offsets[t1] > offsets[t0] for t0, t1 in runs) > 1

    outputs = []
    for t0, t1 in runs:
        r0, r1 = offsets[t0], offsets[t1]
        if r1 == r0:
            outputs.append(torch.zeros(t1 - t0, npix, features.shape[1], dtype=dtype, device=device))
            continue
        row_tile = bins.tile_ids[r0:r1] - t0
        row_segment_start = (bins.offsets[t0:t1] - r0)[row_tile]
        args = (
            means2d, conics, opacities, features, bins.gauss_ids[r0:r1], row_tile, row_segment_start,
            all_x0[t0:t1], all_y0[t0:t1], width, height, tile_size,
        )
        if use_checkpoint:
            outputs.append(checkpoint(_composite_chunk, *args, use_reentrant=False))
        else:
            outputs.append(_composite_chunk(*args))

    tiles = torch.cat(outputs, dim=0)  # [n_tiles, ts*ts, D]
    image = tiles.reshape(bins.n_tiles_y, bins.n_tiles_x, tile_size, tile_size, -1)
    image = image.permute(0, 2, 1, 3, 4).reshape(bins.n_tiles_y * tile_size, bins.n_tiles_x * tile_size, -1)
    return image[:height, :width]


def check_inputs(means, quats, scales, opacities, features, colors, screen_points) -> Tensor:
    """The shape checks of the backend interface (every backend calls this); returns the
    opacities as [N]."""
    if (features is None) == (colors is None):
        raise ValueError("pass exactly one of features (SH coefficients) or colors")
    n = means.shape[0]
    if opacities.dim() == 2:
        opacities = opacities.squeeze(-1)
    if means.shape != (n, 3) or quats.shape != (n, 4) or scales.shape != (n, 3) or opacities.shape != (n,):
        raise ValueError(
            f"expected means [N,3], quats [N,4], scales [N,3], opacities [N]; got {tuple(means.shape)}, "
            f"{tuple(quats.shape)}, {tuple(scales.shape)}, {tuple(opacities.shape)}"
        )
    if screen_points is not None and (screen_points.shape[0] != n or screen_points.shape[1] not in (2, 3)):
        raise ValueError(f"screen_points must be [N, 2] or [N, 3], got {tuple(screen_points.shape)}")
    return opacities


def check_views(means, quats, scales, opacities, features, colors, screen_points, cameras):
    """``check_inputs`` for the batched interface (a backend's ``views``): per-view ``scales`` and
    ``screen_points`` (or None), one image size for every camera. Returns (opacities [N], width, height)."""
    width, height = cameras[0].width, cameras[0].height
    if any(c.width != width or c.height != height for c in cameras):
        raise ValueError("all views of a batch must have one image size")
    if len(scales) != len(cameras) or (screen_points is not None and len(screen_points) != len(cameras)):
        raise ValueError("scales and screen_points need one entry per camera")
    for i in range(len(cameras)):
        checked = check_inputs(means, quats, scales[i], opacities, features, colors,
                               None if screen_points is None else screen_points[i])
    return checked, width, height


def view_outputs(image: Tensor, background: Optional[Tensor], radii: Tensor, means2d: Tensor, depths: Tensor,
                 conics: Tensor) -> Dict[str, Tensor]:
    """The backend interface's outputs from a premultiplied [H, W, 5] image (rgb, depth, alpha) and
    the per-Gaussian projection; the background goes under the remaining transmittance."""
    rgb, depth, alpha = image[..., :3], image[..., 3:4], image[..., 4:5]
    if background is not None:
        rgb = rgb + (1.0 - alpha) * background.to(rgb)
    return {
        "rgb": rgb,
        "alpha": alpha,
        "depth": depth,
        "radii": radii,
        "visibility": radii > 0,
        "means2d": means2d,
        "depths": depths,
        "conics": conics,
    }


def keep_in_graph(out: Tensor, *inputs: Optional[Tensor]) -> Tensor:
    """Add an exact zero that depends on every input needing a gradient, so backward works (and
    gives zero gradients) when no Gaussian reached the image."""
    for t in inputs:
        if t is not None and t.requires_grad:
            out = out + t.reshape(-1)[:0].sum().to(out.dtype)
    return out


# ---------------------------------------------------------------------------------------------
# the public entry
# ---------------------------------------------------------------------------------------------
@rasterize_in_fp32
def rasterize_reference(
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
    max_chunk_pairs: int = MAX_CHUNK_PAIRS,
) -> Dict[str, Tensor]:
    """Render N Gaussians into one view (see the module docstring for the exact algorithm).

    Inputs (activated values): ``means`` [N,3] world; ``quats`` [N,4] (w,x,y,z), not normalised
    here; ``scales`` [N,3]; ``opacities`` [N] or [N,1] in (0,1); exactly one of ``features``
    [N,K,3] SH coefficients evaluated at ``sh_degree`` (K >= (sh_degree+1)^2) or ``colors`` [N,3]
    used as they are; ``background`` [3] or None; ``screen_points`` [N,2|3] densification leaf.

    The camera may sit on another device (it is moved to the Gaussians'); autocast is off and half
    inputs are promoted to float32 (``precision.py``), as for every backend.

    Returns ``rgb`` [H,W,3] (``C + T bg``, or premultiplied ``C`` without a background), ``alpha``
    [H,W,1] = 1 - T, ``depth`` [H,W,1] = sum w_i z_i, ``radii`` [N] int32 (0 = culled),
    ``visibility`` [N] bool, ``means2d`` [N,2] pixel positions, ``depths`` [N] view z, ``conics``
    [N,3].
    """
    opacities = check_inputs(means, quats, scales, opacities, features, colors, screen_points)
    camera = camera.on(means.device)
    width, height = camera.width, camera.height

    proj = project_gaussians(means, quats, scales, camera, screen_points, near_plane, tile_size)
    if colors is None:
        colors = colors_from_sh(means, features, sh_degree, camera.campos)
    # composite colour, depth and 1 (-> alpha) in one pass
    per_gaussian = torch.cat([colors, proj.depths[:, None].to(colors), torch.ones_like(colors[:, :1])], dim=-1)
    bins = bin_tiles(proj.means2d, proj.radii, proj.depths, width, height, tile_size)
    image = composite_tiles(
        proj.means2d, proj.conics, opacities, per_gaussian, bins, width, height, tile_size, max_chunk_pairs
    )
    image = keep_in_graph(image, means, quats, scales, opacities, features, colors, screen_points)
    return view_outputs(image, background, proj.radii, proj.means2d, proj.depths, proj.conics)
