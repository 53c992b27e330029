"""The reference rasterizer against analytic footprints, a literal per-pixel transcription of inria's
loop, and central finite differences (float64)."""
import math

import pytest
import torch

from threestudio_lucid.renderer.camera import GaussianCamera
from threestudio_lucid.renderer.reference import (
    ALPHA_MIN,
    SH_C0,
    bin_tiles,
    colors_from_sh,
    eval_sh,
    project_gaussians,
    quat_scale_to_covariance,
    rasterize_reference,
)

F64 = torch.float64


def axis_camera(width, height, focal, world_view=None, dtype=F64):
    """A camera at the origin looking down +z (OpenCV), principal point at the image centre."""
    wv = torch.eye(4, dtype=dtype) if world_view is None else world_view.to(dtype)
    campos = -wv[:3, :3].T @ wv[:3, 3]
    return GaussianCamera(
        world_view=wv, fx=focal, fy=focal, cx=(width - 1) / 2, cy=(height - 1) / 2,
        width=width, height=height, campos=campos,
    )


def rotation_matrix(axis, angle):
    """Rodrigues' formula (independent of the quaternion code under test)."""
    k = torch.tensor(axis, dtype=F64)
    k = k / k.norm()
    kx = torch.tensor([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]], dtype=F64)
    return torch.eye(3, dtype=F64) + math.sin(angle) * kx + (1 - math.cos(angle)) * kx @ kx


def quaternion(axis, angle):
    k = torch.tensor(axis, dtype=F64)
    k = k / k.norm()
    return torch.cat([torch.tensor([math.cos(angle / 2)], dtype=F64), math.sin(angle / 2) * k])


def tile_rect(u, v, radius, width, height, tile_size=16):
    """inria's getRect, written out with C's truncating int cast."""
    n_tx, n_ty = -(-width // tile_size), -(-height // tile_size)
    x0 = min(n_tx, max(0, math.trunc((u - radius) / tile_size)))
    y0 = min(n_ty, max(0, math.trunc((v - radius) / tile_size)))
    x1 = min(n_tx, max(0, math.trunc((u + radius + tile_size - 1) / tile_size)))
    y1 = min(n_ty, max(0, math.trunc((v + radius + tile_size - 1) / tile_size)))
    return x0, y0, x1, y1


def pixel_grid(width, height):
    ys, xs = torch.meshgrid(torch.arange(height, dtype=F64), torch.arange(width, dtype=F64), indexing="ij")
    return xs, ys


def expected_single_alpha(u, v, cov2d, opacity, radius, width, height, tile_size=16):
    """alpha = min(0.99, o exp(-0.5 d^T cov^-1 d)) where >= 1/255 and the pixel's tile is in the
    Gaussian's tile rectangle; 0 elsewhere."""
    xs, ys = pixel_grid(width, height)
    dx, dy = xs - u, ys - v
    inv = torch.linalg.inv(cov2d)
    q = inv[0, 0] * dx * dx + 2 * inv[0, 1] * dx * dy + inv[1, 1] * dy * dy
    alpha = torch.clamp_max(opacity * torch.exp(-0.5 * q), 0.99)
    x0, y0, x1, y1 = tile_rect(u, v, radius, width, height, tile_size)
    tx, ty = torch.div(xs, tile_size, rounding_mode="floor"), torch.div(ys, tile_size, rounding_mode="floor")
    in_rect = (tx >= x0) & (tx < x1) & (ty >= y0) & (ty < y1)
    return torch.where(in_rect & (alpha >= ALPHA_MIN), alpha, torch.zeros_like(alpha))


def render(means, quats, scales, opacities, camera, colors=None, **kw):
    if colors is None and "features" not in kw:
        colors = torch.full_like(means, 0.5)
    return rasterize_reference(means, quats, scales, opacities, camera, colors=colors, **kw)


IDENTITY_QUAT = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=F64)


# ---------------------------------------------------------------------------------------------
# single Gaussians: the analytic footprint
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "opacity, scale",
    [
        (0.99, 0.2),  # sigma 10 px: the 1/255 footprint (3.3 sigma) leaves the 3-sigma box -> tile cut
        (0.5, 0.03),  # sigma 1.5 px: the 1/255 cutoff inside the box
    ],
)
def test_single_isotropic_gaussian_renders_the_analytic_footprint(opacity, scale):
    width, height, focal, z = 96, 64, 100.0, 2.0
    camera = axis_camera(width, height, focal)
    color = torch.tensor([[0.2, 0.5, 0.9]], dtype=F64)
    out = render(
        torch.tensor([[0.0, 0.0, z]], dtype=F64), IDENTITY_QUAT, torch.full((1, 3), scale, dtype=F64),
        torch.tensor([opacity], dtype=F64), camera, colors=color,
    )
    sigma_px = focal * scale / z
    var = sigma_px**2 + 0.3
    radius = math.ceil(3 * math.sqrt(var + math.sqrt(0.1)))  # mid^2 - det = 0 -> max(0.1, 0)
    assert out["radii"].tolist() == [radius]
    assert out["radii"].dtype == torch.int32 and out["visibility"].tolist() == [True]
    u, v = (width - 1) / 2, (height - 1) / 2
    assert torch.allclose(out["means2d"], torch.tensor([[u, v]], dtype=F64))

    expected = expected_single_alpha(u, v, var * torch.eye(2, dtype=F64), opacity, radius, width, height)
    assert out["alpha"].shape == (height, width, 1)
    assert torch.allclose(out["alpha"][..., 0], expected, atol=1e-12)
    assert torch.allclose(out["depth"][..., 0], expected * z, atol=1e-12)
    assert torch.allclose(out["rgb"], expected[..., None] * color, atol=1e-12)
    if opacity == 0.99:
        # the tile rule really cut pixels that are above 1/255 (pixel 80 is 32.5 px from the mean)
        xs, _ = pixel_grid(width, height)
        uncut = opacity * torch.exp(-0.5 * (xs - u) ** 2 / var)
        assert (uncut[int(v), 80] > ALPHA_MIN) and out["alpha"][int(v), 80, 0] == 0
        assert out["alpha"][int(v), 79, 0] > 0


def test_background_is_added_with_the_remaining_transmittance():
    camera = axis_camera(32, 32, 40.0)
    args = (torch.tensor([[0.0, 0.0, 2.0]], dtype=F64), IDENTITY_QUAT, torch.full((1, 3), 0.1, dtype=F64),
            torch.tensor([0.7], dtype=F64), camera)
    bg = torch.tensor([0.1, 0.3, 1.0], dtype=F64)
    plain = render(*args)
    over = render(*args, background=bg)
    assert torch.allclose(over["rgb"], plain["rgb"] + (1 - plain["alpha"]) * bg, atol=1e-12)
    assert torch.allclose(over["rgb"][0, 0], bg)  # a corner the Gaussian does not reach


def test_anisotropic_rotated_gaussian_matches_the_analytic_2d_covariance():
    width, height, focal = 64, 48, 70.0
    view_rot = rotation_matrix([0.2, 1.0, -0.3], 0.4)
    world_view = torch.eye(4, dtype=F64)
    world_view[:3, :3] = view_rot
    world_view[:3, 3] = torch.tensor([0.1, -0.2, 3.0], dtype=F64)
    camera = axis_camera(width, height, focal, world_view)
    mean = torch.tensor([0.25, 0.1, -0.3], dtype=F64)
    axis, angle = [1.0, -2.0, 0.5], 0.9
    scales = torch.tensor([0.3, 0.075, 0.15], dtype=F64)
    opacity = 0.8

    out = render(mean[None], quaternion(axis, angle)[None], scales[None], torch.tensor([opacity], dtype=F64),
                 camera)

    rot = rotation_matrix(axis, angle)
    sigma = rot @ torch.diag(scales**2) @ rot.T
    t = view_rot @ mean + world_view[:3, 3]
    jac = torch.tensor(
        [[focal / t[2], 0, -focal * t[0] / t[2] ** 2], [0, focal / t[2], -focal * t[1] / t[2] ** 2]], dtype=F64
    )
    cov2d = jac @ view_rot @ sigma @ view_rot.T @ jac.T + 0.3 * torch.eye(2, dtype=F64)
    u = focal * t[0] / t[2] + (width - 1) / 2
    v = focal * t[1] / t[2] + (height - 1) / 2
    assert abs(cov2d[0, 1]) > 1.0  # really anisotropic and rotated on screen

    assert torch.allclose(out["means2d"][0], torch.stack([u, v]), atol=1e-12)
    assert torch.allclose(out["depths"][0], t[2])
    inv = torch.linalg.inv(cov2d)
    assert torch.allclose(out["conics"][0], torch.stack([inv[0, 0], inv[0, 1], inv[1, 1]]), atol=1e-12)
    det = torch.linalg.det(cov2d)
    mid = 0.5 * (cov2d[0, 0] + cov2d[1, 1])
    radius = math.ceil(3 * math.sqrt(mid + math.sqrt(max(0.1, mid**2 - det))))
    assert out["radii"].tolist() == [radius]
    expected = expected_single_alpha(float(u), float(v), cov2d, opacity, radius, width, height)
    assert torch.allclose(out["alpha"][..., 0], expected, atol=1e-12)


def test_unit_quaternion_gives_r_s_st_rt_and_unnormalised_is_not_normalised():
    axis, angle = [0.3, 0.4, -1.0], 1.2
    scales = torch.tensor([[0.5, 0.2, 0.1]], dtype=F64)
    rot = rotation_matrix(axis, angle)
    cov = quat_scale_to_covariance(quaternion(axis, angle)[None], scales)[0]
    assert torch.allclose(cov, rot @ torch.diag(scales[0] ** 2) @ rot.T, atol=1e-12)
    # as inria, the rasterizer uses the quaternion as given (the geometry normalises it)
    cov2 = quat_scale_to_covariance(2 * quaternion(axis, angle)[None], scales)[0]
    assert not torch.allclose(cov2, cov, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# compositing order and early termination
# ---------------------------------------------------------------------------------------------
def isotropic_alpha(u, v, sigma_px, opacity, width, height):
    xs, ys = pixel_grid(width, height)
    var = sigma_px**2 + 0.3
    alpha = torch.clamp_max(opacity * torch.exp(-0.5 * ((xs - u) ** 2 + (ys - v) ** 2) / var), 0.99)
    return torch.where(alpha >= ALPHA_MIN, alpha, torch.zeros_like(alpha))


@pytest.mark.parametrize("order", [[0, 1], [1, 0]])
def test_two_overlapping_gaussians_composite_front_to_back(order):
    width, height, focal = 32, 32, 60.0
    camera = axis_camera(width, height, focal)
    means = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 3.0]], dtype=F64)
    scales = torch.tensor([[0.2] * 3, [0.3] * 3], dtype=F64)
    opac = torch.tensor([0.6, 0.9], dtype=F64)
    colors = torch.tensor([[1.0, 0.0, 0.2], [0.0, 1.0, 0.5]], dtype=F64)
    bg = torch.tensor([0.3, 0.3, 0.3], dtype=F64)
    out = render(means[order], IDENTITY_QUAT.expand(2, 4), scales[order], opac[order], camera,
                 colors=colors[order], background=bg)
    assert out["radii"].min() * 2 > width  # every tile is touched: only the 1/255 rule cuts

    uv = [(focal * m[0] / m[2] + (width - 1) / 2, focal * m[1] / m[2] + (height - 1) / 2) for m in means.tolist()]
    a1 = isotropic_alpha(*uv[0], focal * 0.2 / 2.0, 0.6, width, height)
    a2 = isotropic_alpha(*uv[1], focal * 0.3 / 3.0, 0.9, width, height)
    alpha = 1 - (1 - a1) * (1 - a2)
    assert torch.allclose(out["alpha"][..., 0], alpha, atol=1e-12)
    assert torch.allclose(out["depth"][..., 0], a1 * 2.0 + (1 - a1) * a2 * 3.0, atol=1e-12)
    rgb = a1[..., None] * colors[0] + ((1 - a1) * a2)[..., None] * colors[1] + (1 - alpha)[..., None] * bg
    assert torch.allclose(out["rgb"], rgb, atol=1e-12)


def test_early_termination_gives_later_gaussians_exactly_zero_weight_and_gradient():
    # five nearly opaque Gaussians stacked on the axis, each covering the 8x8 image (G ~ 1):
    # T after two is >= 0.02^2 = 4e-4, after three < 1e-4, so the third and all later are dropped
    width = height = 8
    camera = axis_camera(width, height, 10.0)
    n = 5
    means = torch.tensor([[0.0, 0.0, 2.0 + i] for i in range(n)], dtype=F64, requires_grad=True)
    scales = torch.full((n, 3), 50.0, dtype=F64, requires_grad=True)
    opac = torch.tensor([0.98, 0.97, 0.98, 0.5, 0.9], dtype=F64, requires_grad=True)
    colors = torch.rand(n, 3, dtype=F64, generator=torch.Generator().manual_seed(0)).requires_grad_()
    quats = IDENTITY_QUAT.expand(n, 4).clone().requires_grad_()
    order = [4, 2, 0, 3, 1]  # input order does not matter
    out = render(means[order], quats[order], scales[order], opac[order], camera, colors=colors[order])
    (out["rgb"].sum() + out["alpha"].sum() + out["depth"].sum()).backward()

    xs, ys = pixel_grid(width, height)
    sig = [10.0 * 50.0 / (2.0 + i) for i in range(2)]
    a1 = isotropic_alpha(3.5, 3.5, sig[0], 0.98, width, height)
    a2 = isotropic_alpha(3.5, 3.5, sig[1], 0.97, width, height)
    t2 = (1 - a1) * (1 - a2)
    assert t2.min() >= 1e-4 and (t2 * (1 - 0.98 * 0.999)).max() < 1e-4
    assert torch.allclose(out["alpha"][..., 0], 1 - t2, atol=1e-12)
    rgb = a1[..., None] * colors[0] + ((1 - a1) * a2)[..., None] * colors[1]
    assert torch.allclose(out["rgb"], rgb.detach(), atol=1e-12)
    for grad in (colors.grad, opac.grad, means.grad, scales.grad, quats.grad):
        assert torch.all(grad[2:] == 0), grad
    assert torch.all(colors.grad[:2] != 0) and torch.all(opac.grad[:2] != 0)


def test_near_plane_culls_gaussians_at_or_behind_z_0_2():
    camera = axis_camera(16, 16, 20.0)
    means = torch.tensor([[0.0, 0.0, 0.19], [0.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 0.0, 0.21]], dtype=F64)
    means.requires_grad_()
    scales = torch.full((4, 3), 0.01, dtype=F64, requires_grad=True)
    opac = torch.full((4,), 0.5, dtype=F64, requires_grad=True)
    out = render(means, IDENTITY_QUAT.expand(4, 4), scales, opac, camera)
    assert out["visibility"].tolist() == [False, False, False, True]
    assert out["radii"][:3].tolist() == [0, 0, 0]
    out["alpha"].sum().backward()
    assert torch.all(torch.isfinite(means.grad)) and torch.all(means.grad[:3] == 0)
    assert opac.grad[3] > 0 and torch.all(opac.grad[:3] == 0)

    only_culled = render(means[:3].detach(), IDENTITY_QUAT.expand(3, 4), scales[:3].detach(),
                         opac[:3].detach(), camera)
    assert torch.all(only_culled["alpha"] == 0) and torch.all(only_culled["rgb"] == 0)


def test_nothing_visible_still_backpropagates_zero_gradients():
    camera = axis_camera(16, 16, 20.0)
    means = torch.tensor([[0.0, 0.0, -2.0]], dtype=F64, requires_grad=True)
    sp = torch.zeros(1, 3, dtype=F64, requires_grad=True)
    out = render(means, IDENTITY_QUAT, torch.full((1, 3), 0.1, dtype=F64), torch.tensor([0.5], dtype=F64),
                 camera, background=torch.ones(3, dtype=F64), screen_points=sp)
    assert torch.all(out["rgb"] == 1)
    out["rgb"].sum().backward()
    assert torch.all(means.grad == 0) and torch.all(sp.grad == 0)

    empty = torch.zeros(0, 3, dtype=F64)
    out = render(empty, torch.zeros(0, 4, dtype=F64), empty, torch.zeros(0, dtype=F64), camera)
    assert out["rgb"].shape == (16, 16, 3) and torch.all(out["alpha"] == 0)


# ---------------------------------------------------------------------------------------------
# SH colours
# ---------------------------------------------------------------------------------------------
def real_sh_direct(degree, dirs):
    """Real SH from associated Legendre functions (Condon-Shortley phase) and azimuthal sin/cos:
    Y_lm = sqrt2 K P_l^|m| sin(|m| phi) (m < 0), K P_l^0 (m = 0), sqrt2 K P_l^m cos(m phi) (m > 0),
    ordered m = -l..l -- the basis inria's constants and signs spell out."""
    x, y, z = dirs.unbind(-1)
    phi = torch.atan2(y, x)
    s = torch.sqrt(torch.clamp_min(1 - z * z, 0))
    legendre = {}
    for m in range(degree + 1):
        legendre[(m, m)] = (-1) ** m * math.prod(range(1, 2 * m, 2)) * s**m
        if m + 1 <= degree:
            legendre[(m + 1, m)] = z * (2 * m + 1) * legendre[(m, m)]
        for l in range(m + 2, degree + 1):
            legendre[(l, m)] = (
                (2 * l - 1) * z * legendre[(l - 1, m)] - (l + m - 1) * legendre[(l - 2, m)]
            ) / (l - m)
    basis = []
    for l in range(degree + 1):
        for m in range(-l, l + 1):
            am = abs(m)
            k = math.sqrt((2 * l + 1) / (4 * math.pi) * math.factorial(l - am) / math.factorial(l + am))
            if m < 0:
                basis.append(math.sqrt(2) * k * legendre[(l, am)] * torch.sin(am * phi))
            elif m == 0:
                basis.append(k * legendre[(l, 0)])
            else:
                basis.append(math.sqrt(2) * k * legendre[(l, m)] * torch.cos(m * phi))
    return torch.stack(basis, dim=-1)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_eval_sh_matches_the_direct_real_sh_formula(degree):
    g = torch.Generator().manual_seed(degree)
    dirs = torch.nn.functional.normalize(torch.randn(50, 3, dtype=F64, generator=g), dim=-1)
    sh = torch.randn(50, 16, 3, dtype=F64, generator=g)  # more coefficients than needed: ignored
    k = (degree + 1) ** 2
    expected = torch.einsum("nk,nkc->nc", real_sh_direct(degree, dirs), sh[:, :k])
    assert torch.allclose(eval_sh(degree, sh, dirs), expected, atol=1e-12)


def test_sh_colour_is_offset_clamped_and_view_dependent():
    means = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]], dtype=F64)
    campos = torch.tensor([1.0, 2.0, 0.0], dtype=F64)  # directions (0, 0, 1)
    sh = torch.zeros(2, 4, 3, dtype=F64)
    sh[0, 0] = torch.tensor([0.5, -5.0, 0.0]) / SH_C0
    sh[1, 2] = 1.0  # the z-linear term: + C1 z
    rgb = colors_from_sh(means, sh, 1, campos)
    assert torch.allclose(rgb[0], torch.tensor([1.0, 0.0, 0.5], dtype=F64))
    assert torch.allclose(rgb[1], torch.full((3,), 0.5 + 0.4886025119029199, dtype=F64))
    with pytest.raises(ValueError):
        eval_sh(2, sh, means)  # degree 2 needs 9 coefficients


# ---------------------------------------------------------------------------------------------
# tiling against a dense transcription of inria's per-pixel loop
# ---------------------------------------------------------------------------------------------
def dense_inria_loop(proj, opacities, colors, width, height, tile_size, background):
    """Every pixel walks all Gaussians in (depth, index) order, as inria's renderCUDA walks its
    tile's list: tile membership from getRect, skip power > 0 and alpha < 1/255, stop before the
    Gaussian that would make T < 1e-4."""
    xs, ys = pixel_grid(width, height)
    tile_x = torch.div(xs, tile_size, rounding_mode="floor")
    tile_y = torch.div(ys, tile_size, rounding_mode="floor")
    T = torch.ones(height, width, dtype=F64)
    C = torch.zeros(height, width, 3, dtype=F64)
    D = torch.zeros(height, width, dtype=F64)
    done = torch.zeros(height, width, dtype=torch.bool)
    depths = proj.depths.tolist()
    for g in sorted(range(len(depths)), key=lambda i: depths[i]):
        radius = int(proj.radii[g])
        if radius == 0:
            continue
        u, v = proj.means2d[g].tolist()
        x0, y0, x1, y1 = tile_rect(u, v, radius, width, height, tile_size)
        member = (tile_x >= x0) & (tile_x < x1) & (tile_y >= y0) & (tile_y < y1)
        a, b, c = proj.conics[g]
        dx, dy = u - xs, v - ys
        power = -0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy
        alpha = torch.clamp_max(opacities[g] * torch.exp(power), 0.99)
        ok = member & ~done & (power <= 0) & (alpha >= 1 / 255)
        test_T = T * (1 - alpha)
        stop = ok & (test_T < 1e-4)
        done |= stop
        add = ok & ~stop
        w = torch.where(add, alpha * T, torch.zeros_like(T))
        C += w[..., None] * colors[g]
        D += w * depths[g]
        T = torch.where(add, test_T, T)
    return C + T[..., None] * background, 1 - T, D, done


def random_scene(n, seed, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g, dtype=dtype) - 0.5) * torch.tensor([1.6, 1.2, 1.0], dtype=dtype)
    means[:, 2] += 3.0
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    quats = quats / quats.norm(dim=-1, keepdim=True)
    scales = 0.02 + 0.15 * torch.rand(n, 3, generator=g, dtype=dtype)
    opac = 0.3 + 0.5 * torch.rand(n, generator=g, dtype=dtype)
    feats = 0.2 * torch.randn(n, 9, 3, generator=g, dtype=dtype)
    return means, quats, scales, opac, feats


@pytest.mark.parametrize("tile_size, max_chunk_pairs", [(16, 1 << 21), (16, 256), (8, 700)])
def test_tile_binning_equals_a_dense_render(tile_size, max_chunk_pairs):
    width, height = 53, 37
    view_rot = rotation_matrix([0.0, 1.0, 0.2], 0.15)
    world_view = torch.eye(4, dtype=F64)
    world_view[:3, :3] = view_rot
    camera = axis_camera(width, height, 45.0, world_view)
    means, quats, scales, opac, feats = random_scene(40, seed=3)
    means[:10, :2] *= 0.3  # ten large opaque ones overlapping in the middle: pixels terminate early
    scales[:10] *= 2.0
    opac[:10] = 0.99
    bg = torch.tensor([0.2, 0.7, 0.4], dtype=F64)
    out = rasterize_reference(means, quats, scales, opac, camera, features=feats, sh_degree=2, background=bg,
                              tile_size=tile_size, max_chunk_pairs=max_chunk_pairs)
    proj = project_gaussians(means, quats, scales, camera, tile_size=tile_size)
    colors = colors_from_sh(means, feats, 2, camera.campos)
    rgb, alpha, depth, terminated = dense_inria_loop(proj, opac, colors, width, height, tile_size, bg)
    assert out["visibility"].sum() > 30 and terminated.sum() > 20  # a busy scene, early termination
    assert torch.allclose(out["rgb"], rgb, atol=1e-6, rtol=0)
    assert torch.allclose(out["alpha"][..., 0], alpha, atol=1e-6, rtol=0)
    assert torch.allclose(out["depth"][..., 0], depth, atol=1e-6, rtol=0)


def test_bins_list_each_tile_front_to_back():
    camera = axis_camera(40, 40, 40.0)
    means, quats, scales, _, _ = random_scene(25, seed=5)
    proj = project_gaussians(means, quats, scales, camera)
    bins = bin_tiles(proj.means2d, proj.radii, proj.depths, 40, 40)
    assert bins.offsets[-1] == bins.gauss_ids.numel() and bins.n_tiles_x == bins.n_tiles_y == 3
    for t in range(9):
        ids = bins.gauss_ids[bins.offsets[t]:bins.offsets[t + 1]]
        assert torch.all(proj.depths[ids][1:] >= proj.depths[ids][:-1])


# ---------------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------------
def central_differences(loss, inputs, which, index, eps=1e-6):
    """d loss / d inputs[which].flatten()[index] for each index, by central differences."""
    grads = []
    for i in index:
        values = []
        for sign in (1.0, -1.0):
            shifted = [t.detach().clone() for t in inputs]
            shifted[which].view(-1)[i] += sign * eps
            with torch.no_grad():
                values.append(float(loss(*shifted)))
        grads.append((values[0] - values[1]) / (2 * eps))
    return torch.tensor(grads, dtype=F64)


def gradient_scene():
    """Four Gaussians with SH degree 2 in a 22x19 image (2x2 tiles, partial ones), rotated camera,
    unnormalised quaternions, no alpha clamp (o <= 0.8) and no early termination (T >= 0.2^4)."""
    width, height = 22, 19
    view_rot = rotation_matrix([1.0, 0.3, 0.0], 0.2)
    world_view = torch.eye(4, dtype=F64)
    world_view[:3, :3] = view_rot
    camera = axis_camera(width, height, 22.0, world_view)
    means, quats, scales, opac, feats = random_scene(4, seed=11)
    quats = quats * torch.tensor([[1.3], [0.8], [1.0], [1.1]], dtype=F64)
    screen = torch.zeros(4, 3, dtype=F64)
    g = torch.Generator().manual_seed(1)
    w_rgb = torch.rand(height, width, 3, generator=g, dtype=F64)
    w_depth = torch.rand(height, width, 1, generator=g, dtype=F64)
    w_alpha = torch.rand(height, width, 1, generator=g, dtype=F64)
    bg = torch.tensor([0.3, 0.6, 0.9], dtype=F64)

    def loss(means, quats, scales, opac, feats, screen, max_chunk_pairs=1 << 21):
        out = rasterize_reference(means, quats, scales, opac, camera, features=feats, sh_degree=2,
                                  background=bg, screen_points=screen, max_chunk_pairs=max_chunk_pairs)
        return (out["rgb"] * w_rgb).sum() + (out["depth"] * w_depth).sum() + (out["alpha"] * w_alpha).sum()

    with torch.no_grad():
        out = rasterize_reference(means, quats, scales, opac, camera, features=feats, sh_degree=2)
    assert out["visibility"].all() and out["alpha"].max() < 0.99
    return loss, [means, quats, scales, opac, feats, screen]


@pytest.mark.parametrize(
    "name, which, index",
    [
        ("means", 0, range(12)),
        ("quats", 1, range(16)),
        ("scales", 2, range(12)),
        ("opacities", 3, range(4)),
        # SH: DC, degree-1 and degree-2 coefficients of every Gaussian (features [4, 9, 3])
        ("features", 4, [n * 27 + k * 3 + c for n, k, c in [(0, 0, 0), (1, 0, 2), (2, 1, 1), (3, 2, 0),
                                                             (0, 3, 2), (1, 4, 0), (2, 6, 1), (3, 8, 2)]]),
        ("screen_points", 5, [0, 1, 3, 4, 6, 7, 9, 10]),
    ],
)
def test_gradients_match_central_finite_differences(name, which, index):
    loss, inputs = gradient_scene()
    leaves = [t.clone().requires_grad_() for t in inputs]
    loss(*leaves).backward()
    analytic = leaves[which].grad.reshape(-1)[list(index)]
    numeric = central_differences(loss, inputs, which, list(index))
    assert analytic.abs().max() > 1e-3  # the check is not vacuous
    assert torch.allclose(analytic, numeric, atol=1e-6, rtol=1e-5), (name, analytic, numeric)


def test_checkpointed_runs_give_the_same_gradients():
    loss, inputs = gradient_scene()
    grads = []
    for max_chunk_pairs in (1 << 21, 256):  # one run without checkpoint; one tile per checkpointed run
        leaves = [t.clone().requires_grad_() for t in inputs]
        loss(*leaves, max_chunk_pairs=max_chunk_pairs).backward()
        grads.append([t.grad for t in leaves])
    for one, many in zip(*grads):
        assert torch.allclose(one, many, atol=1e-12, rtol=1e-10)
    assert torch.all(grads[0][5][:, 2] == 0)  # the third screen_points column is unused


def test_screen_points_are_in_ndc_units():
    width, height = 40, 30
    camera = axis_camera(width, height, 30.0)
    means, quats, scales, opac, _ = random_scene(3, seed=2)
    screen = torch.zeros(3, 2, dtype=F64)
    screen[:, 0] = 2.0 / width  # one pixel right
    screen[:, 1] = -4.0 / height  # two pixels up
    base = render(means, quats, scales, opac, camera)["means2d"]
    moved = render(means, quats, scales, opac, camera, screen_points=screen)["means2d"]
    assert torch.allclose(moved - base, torch.tensor([1.0, -2.0], dtype=F64).expand(3, 2), atol=1e-12)


def test_gradient_passes_straight_through_the_0_99_clamp():
    # opacity 1 at the pixel centre: o G = 1 > 0.99, the forward uses 0.99 but d alpha / d o = G = 1
    camera = axis_camera(1, 1, 10.0)
    opac = torch.tensor([1.0], dtype=F64, requires_grad=True)
    out = render(torch.tensor([[0.0, 0.0, 2.0]], dtype=F64), IDENTITY_QUAT, torch.full((1, 3), 0.1, dtype=F64),
                 opac, camera)
    assert torch.allclose(out["alpha"], torch.tensor(0.99, dtype=F64))
    out["alpha"].sum().backward()
    assert torch.allclose(opac.grad, torch.tensor([1.0], dtype=F64))


def test_float32_matches_float64():
    camera64 = axis_camera(48, 40, 40.0)
    camera32 = axis_camera(48, 40, 40.0, dtype=torch.float32)
    scene = random_scene(30, seed=7)
    out64 = rasterize_reference(*scene[:4], camera64, features=scene[4], sh_degree=2)
    out32 = rasterize_reference(*[t.float() for t in scene[:4]], camera32, features=scene[4].float(), sh_degree=2)
    assert out32["rgb"].dtype == torch.float32
    assert torch.equal(out32["radii"], out64["radii"])
    assert torch.allclose(out32["rgb"].double(), out64["rgb"], atol=1e-5)
    assert torch.allclose(out32["depth"].double(), out64["depth"], atol=1e-4)


def test_clamped_ewa_direction_is_a_constant_for_gradients():
    # inria's backward: where t.x/t.z is clamped to 1.3 tan(fovx/2), d cov2d / d t.x = 0
    camera = axis_camera(20, 20, 20.0)  # tan(fovx/2) = 0.5, clamp at t.x/t.z = 0.65
    means = torch.tensor([[0.5, 0.0, 1.0], [1.0, 0.0, 1.0]], dtype=F64, requires_grad=True)
    scales = torch.tensor([[0.3, 0.2, 0.1]] * 2, dtype=F64)
    quats = quaternion([1.0, 1.0, 0.0], 0.5)[None].expand(2, 4)
    proj = project_gaussians(means, quats, scales, camera)
    proj.cov2d.sum().backward()
    assert means.grad[0, 0] != 0 and means.grad[1, 0] == 0
    assert means.grad[1, 2] != 0  # still depends on the depth
