"""Host ``utils/ops.py``: activations, small helpers, rays and the two camera-matrix conventions."""
import math

import pytest
import torch
import torch.nn.functional as F

from threestudio_lucid.host.utils.config import ConfigError
from threestudio_lucid.host.utils.ops import (
    SpecifyGradient,
    chunk_batch,
    convert_pose,
    dot,
    get_activation,
    get_cam_info_gaussian,
    get_mvp_matrix,
    get_projection_matrix,
    get_projection_matrix_gaussian,
    get_ray_directions,
    get_rays,
    perpendicular_component,
    scale_tensor,
    trunc_exp,
)


def look_at_c2w(position, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)):
    """An OpenGL c2w ([right, up, -forward | position]) built independently of the host code."""
    position = torch.tensor(position, dtype=torch.float32)
    forward = F.normalize(torch.tensor(target) - position, dim=0)
    right = F.normalize(torch.linalg.cross(forward, torch.tensor(up)), dim=0)
    true_up = torch.linalg.cross(right, forward)
    c2w = torch.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, true_up, -forward, position
    return c2w


def project_column(mvp, points):
    """World points [N, 3] -> clip coordinates [N, 4] with the column-vector mvp."""
    homo = torch.cat([points, torch.ones(points.shape[0], 1)], dim=-1)
    return homo @ mvp.T


# ---------------------------------------------------------------------------------------------
# activations
# ---------------------------------------------------------------------------------------------
def test_named_activations_compute_their_formulas():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0])
    torch.testing.assert_close(get_activation("none")(x), x)
    torch.testing.assert_close(get_activation(None)(x), x)
    torch.testing.assert_close(get_activation("exp")(x), torch.exp(x))
    torch.testing.assert_close(get_activation("shifted_exp")(x), torch.exp(x - 1))
    torch.testing.assert_close(get_activation("trunc_exp")(x), torch.exp(x))
    torch.testing.assert_close(get_activation("shifted_trunc_exp")(x), torch.exp(x - 1))
    torch.testing.assert_close(get_activation("sigmoid")(x), torch.sigmoid(x))
    torch.testing.assert_close(get_activation("tanh")(x), torch.tanh(x))
    torch.testing.assert_close(get_activation("shifted_softplus")(x), F.softplus(x - 1))
    torch.testing.assert_close(get_activation("scale_-11_01")(x), torch.tensor([0.0, 0.5, 1.0, 1.5]))


def test_activation_names_are_case_insensitive_and_fall_back_to_functional():
    x = torch.tensor([-2.0, 3.0])
    torch.testing.assert_close(get_activation("Sigmoid")(x), torch.sigmoid(x))
    torch.testing.assert_close(get_activation("relu")(x), torch.tensor([0.0, 3.0]))
    torch.testing.assert_close(get_activation("softplus")(x), F.softplus(x))


def test_lin2srgb_follows_the_srgb_transfer_curve():
    act = get_activation("lin2srgb")
    x = torch.tensor([-0.5, 0.0, 0.001, 0.18, 1.0, 2.0])
    expected = torch.tensor([0.0, 0.0, 0.01292, 1.055 * 0.18 ** (1 / 2.4) - 0.055, 1.0, 1.0])
    torch.testing.assert_close(act(x), expected, atol=1e-5, rtol=1e-5)


def test_unknown_activation_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match="not_an_activation"):
        get_activation("not_an_activation")
    # ConfigError is a ValueError, which is what threestudio raises here
    with pytest.raises(ValueError):
        get_activation("not_an_activation")


def test_trunc_exp_gradient_is_clamped_at_15():
    x = torch.tensor([1.0, 20.0], dtype=torch.float32, requires_grad=True)
    y = trunc_exp(x)
    torch.testing.assert_close(y.detach(), torch.exp(x.detach()))
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([math.exp(1.0), math.exp(15.0)]))


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------
def test_dot_keeps_the_last_dimension():
    x = torch.tensor([[1.0, 2.0, 3.0], [0.0, 1.0, 0.0]])
    y = torch.tensor([[4.0, 5.0, 6.0], [1.0, 0.0, 0.0]])
    out = dot(x, y)
    assert out.shape == (2, 1)
    torch.testing.assert_close(out, torch.tensor([[32.0], [0.0]]))


def test_scale_tensor_maps_ranges_affinely():
    x = torch.tensor([[0.0], [0.25], [1.0]])
    torch.testing.assert_close(scale_tensor(x, (0, 1), (-1, 1)), torch.tensor([[-1.0], [-0.5], [1.0]]))
    torch.testing.assert_close(scale_tensor(x, None, None), x)
    bounds = torch.tensor([[-2.0, 0.0], [2.0, 10.0]])  # per-channel [lo; hi]
    pts = torch.tensor([[0.5, 0.5]])
    torch.testing.assert_close(scale_tensor(pts, (0, 1), bounds), torch.tensor([[0.0, 5.0]]))


def test_perpendicular_component_is_orthogonal_and_removes_parallel_parts():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 4, generator=g)
    y = torch.randn(2, 3, 4, 4, generator=g)
    perp = perpendicular_component(x, y)
    inner = (perp * y).sum(dim=[1, 2, 3])
    torch.testing.assert_close(inner, torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(perpendicular_component(3 * y, y), torch.zeros_like(y), atol=1e-5, rtol=0)


def test_specify_gradient_returns_a_dummy_one_and_routes_the_given_gradient():
    x = torch.zeros(2, 3, requires_grad=True)
    grad = torch.arange(6.0).view(2, 3)
    out = SpecifyGradient.apply(x, grad)
    assert out.shape == (1,)
    assert out.item() == 1.0  # threestudio returns ones([1])
    (out * 2.5).sum().backward()  # the incoming gradient (e.g. an AMP scale) multiplies the given one
    torch.testing.assert_close(x.grad, 2.5 * grad)


def test_chunk_batch_matches_one_big_call_for_tensor_tuple_and_dict_results():
    x = torch.arange(10.0).view(10, 1)
    seen = []

    def f(a, scale, offset=None):
        seen.append(a.shape[0])
        return {"y": a * scale + offset, "none": None}

    out = chunk_batch(f, 4, x, 2.0, offset=torch.ones(10, 1))
    assert seen == [4, 4, 2]
    torch.testing.assert_close(out["y"], x * 2 + 1)
    assert out["none"] is None

    as_tuple = chunk_batch(lambda a: (a, a + 1), 3, x)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 2
    torch.testing.assert_close(as_tuple[1], x + 1)
    torch.testing.assert_close(chunk_batch(lambda a: a * 3, 7, x), x * 3)
    torch.testing.assert_close(chunk_batch(lambda a: a * 3, 0, x), x * 3)


# ---------------------------------------------------------------------------------------------
# rays
# ---------------------------------------------------------------------------------------------
def test_ray_directions_follow_the_opengl_pixel_convention():
    H, W, f = 4, 6, 2.0
    dirs = get_ray_directions(H, W, f)
    assert dirs.shape == (H, W, 3) and dirs.dtype == torch.float32
    # pixel (row 0, col 0) is top-left: left (x < 0) and up (y > 0) of the axis, looking down -z
    torch.testing.assert_close(dirs[0, 0], torch.tensor([(0.5 - 3) / f, -(0.5 - 2) / f, -1.0]))
    torch.testing.assert_close(dirs[3, 5], torch.tensor([(5.5 - 3) / f, -(3.5 - 2) / f, -1.0]))
    no_centers = get_ray_directions(H, W, f, use_pixel_centers=False)
    torch.testing.assert_close(no_centers[0, 0], torch.tensor([-3 / f, 2 / f, -1.0]))


def test_ray_directions_accept_separate_focals_and_a_principal_point():
    dirs = get_ray_directions(2, 2, (2.0, 4.0), principal=(0.5, 0.5))
    torch.testing.assert_close(dirs[1, 1], torch.tensor([(1.5 - 0.5) / 2.0, -(1.5 - 0.5) / 4.0, -1.0]))
    # an int focal works like a float one
    torch.testing.assert_close(get_ray_directions(3, 3, 2), get_ray_directions(3, 3, 2.0))


def test_get_rays_rotates_and_translates_for_every_supported_shape():
    c2w_a = look_at_c2w([2.0, 0.0, 0.0])
    c2w_b = look_at_c2w([0.0, 3.0, 1.0])
    c2ws = torch.stack([c2w_a, c2w_b])
    dirs = get_ray_directions(3, 5, 1.5)

    o, d = get_rays(dirs, c2w_a, keepdim=True, normalize=False)
    assert o.shape == d.shape == (3, 5, 3)
    torch.testing.assert_close(d, dirs @ c2w_a[:3, :3].T)
    torch.testing.assert_close(o, c2w_a[:3, 3].expand(3, 5, 3))

    o, d = get_rays(dirs, c2ws, keepdim=True, normalize=False)  # one grid, B cameras
    assert d.shape == (2, 3, 5, 3)
    torch.testing.assert_close(d[1], dirs @ c2w_b[:3, :3].T)

    batched_dirs = torch.stack([dirs, dirs * 2])
    o, d = get_rays(batched_dirs, c2ws, keepdim=True)  # [B, H, W, 3] with [B, 4, 4]
    assert d.shape == (2, 3, 5, 3)
    torch.testing.assert_close(d[1], F.normalize(dirs @ c2w_b[:3, :3].T, dim=-1))
    torch.testing.assert_close(o[1], c2w_b[:3, 3].expand(3, 5, 3))
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(2, 3, 5))

    flat = dirs.reshape(-1, 3)
    o, d = get_rays(flat, c2w_b, normalize=False)  # [N, 3] with one camera
    assert d.shape == (15, 3)
    torch.testing.assert_close(d, flat @ c2w_b[:3, :3].T)
    per_ray = c2w_b.expand(15, 4, 4)
    o2, d2 = get_rays(flat, per_ray, normalize=False)  # [N, 3] with [N, 4, 4]
    torch.testing.assert_close(d2, d)

    o, d = get_rays(batched_dirs, c2ws)  # keepdim=False flattens
    assert o.shape == d.shape == (2 * 15, 3)


def test_get_rays_rejects_unsupported_shapes():
    with pytest.raises(ValueError, match="unsupported shapes"):
        get_rays(torch.zeros(2, 3, 4, 3), torch.eye(4))


# ---------------------------------------------------------------------------------------------
# OpenGL matrices
# ---------------------------------------------------------------------------------------------
def test_projection_matrix_is_opengl_with_negated_y():
    fovy = torch.tensor([math.radians(60.0), math.radians(90.0)])
    near, far, aspect = 0.01, 100.0, 1.5
    proj = get_projection_matrix(fovy, aspect, near, far)
    assert proj.shape == (2, 4, 4) and proj.dtype == torch.float32
    inv_tan = 1 / math.tan(math.radians(30.0))
    expected = torch.tensor(
        [
            [inv_tan / aspect, 0, 0, 0],
            [0, -inv_tan, 0, 0],
            [0, 0, -(far + near) / (far - near), -2 * far * near / (far - near)],
            [0, 0, -1, 0],
        ],
        dtype=torch.float32,
    )
    torch.testing.assert_close(proj[0], expected)
    torch.testing.assert_close(proj[1, 1, 1], torch.tensor(-1.0))


def test_mvp_is_projection_times_inverse_c2w():
    c2w = torch.stack([look_at_c2w([1.0, 2.0, 0.5]), look_at_c2w([-2.0, 0.3, 1.0])])
    proj = get_projection_matrix(torch.tensor([0.8, 1.1]), 1.0, 0.1, 10.0)
    torch.testing.assert_close(get_mvp_matrix(c2w, proj), proj @ torch.linalg.inv(c2w), atol=1e-5, rtol=1e-5)


def test_mvp_and_ray_directions_agree_on_pixels_and_up_is_the_top_row():
    """A point on the ray through pixel (row j, col i) projects to that pixel centre, with image
    coordinates read from NDC as ``((x + 1) W / 2, (y + 1) H / 2)`` (nvdiffrast's row order); so a
    point above a level camera's axis has NDC ``y < 0`` and lands in the top half of the image."""
    H, W = 8, 12
    fovy = torch.tensor([math.radians(50.0)])
    c2w = look_at_c2w([3.0, 0.0, 0.0])[None]
    focal = 0.5 * H / math.tan(fovy.item() / 2)
    _, rays_d = get_rays(get_ray_directions(H, W, focal)[None], c2w, keepdim=True)
    mvp = get_mvp_matrix(c2w, get_projection_matrix(fovy, W / H, 0.01, 100.0))[0]
    for j, i in [(0, 0), (2, 9), (7, 11), (5, 3)]:
        point = c2w[0, :3, 3] + 2.0 * rays_d[0, j, i]
        clip = project_column(mvp, point[None])[0]
        ndc = clip[:3] / clip[3]
        torch.testing.assert_close(
            torch.stack([(ndc[0] + 1) * W / 2, (ndc[1] + 1) * H / 2]), torch.tensor([i + 0.5, j + 0.5]),
            atol=1e-4, rtol=0,
        )
    above = project_column(mvp, torch.tensor([[0.0, 0.0, 0.5]]))[0]
    assert above[1] / above[3] < 0
    origin = project_column(mvp, torch.zeros(1, 3))[0]
    torch.testing.assert_close(origin[:2] / origin[3], torch.zeros(2), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------
# 3DGS matrices
# ---------------------------------------------------------------------------------------------
def test_convert_pose_negates_the_camera_y_and_z_axes():
    c2w = look_at_c2w([1.0, -2.0, 0.7])
    converted = convert_pose(c2w)
    torch.testing.assert_close(converted[:, 0], c2w[:, 0])
    torch.testing.assert_close(converted[:, 1:3], -c2w[:, 1:3])
    torch.testing.assert_close(converted[:, 3], c2w[:, 3])
    batched = convert_pose(torch.stack([c2w, c2w]))
    torch.testing.assert_close(batched[1], converted)


def test_gaussian_projection_matrix_is_the_3dgs_one_on_the_cpu_by_default():
    P = get_projection_matrix_gaussian(0.1, 100.0, math.radians(80.0), math.radians(60.0))
    assert P.device.type == "cpu"
    expected = torch.zeros(4, 4)
    expected[0, 0] = 1 / math.tan(math.radians(40.0))
    expected[1, 1] = 1 / math.tan(math.radians(30.0))
    expected[2, 2] = 100.0 / (100.0 - 0.1)
    expected[2, 3] = -(100.0 * 0.1) / (100.0 - 0.1)
    expected[3, 2] = 1.0
    torch.testing.assert_close(P, expected)
    # fovs may be 0-dim tensors, as the renderers pass batch["fovy"][i]
    torch.testing.assert_close(
        get_projection_matrix_gaussian(0.1, 100.0, torch.tensor(math.radians(80.0)), torch.tensor(math.radians(60.0))),
        P,
    )


def test_cam_info_gaussian_projects_like_the_mvp_matrix():
    """Same camera, fovs and near/far: the 3DGS row-vector ``full_proj_transform`` and the OpenGL
    ``mvp`` give identical NDC x, y and w (threestudio's negated ``[1, 1]`` makes the OpenGL NDC y
    point down, like 3DGS's +y-down camera) and depth relates as ``ndc_z_gl = 2 ndc_z_gs - 1``."""
    near, far = 0.1, 100.0
    H, W = 48, 64
    fovy = math.radians(55.0)
    fovx = 2 * math.atan(math.tan(fovy / 2) * W / H)
    c2w = look_at_c2w([1.2, -2.0, 0.9], target=(0.1, 0.2, -0.1))
    wvt, full_proj, center = get_cam_info_gaussian(c2w, fovx, fovy, near, far)
    assert wvt.shape == full_proj.shape == (4, 4) and center.shape == (3,)
    assert wvt.device == c2w.device and full_proj.dtype == torch.float32
    torch.testing.assert_close(center, c2w[:3, 3], atol=1e-5, rtol=0)

    points = torch.tensor([[0.0, 0.0, 0.0], [0.3, -0.2, 0.4], [-0.5, 0.1, -0.3]])
    homo = torch.cat([points, torch.ones(3, 1)], dim=-1)
    clip_gs = homo @ full_proj  # row-vector convention
    clip_gl = project_column(get_mvp_matrix(c2w[None], get_projection_matrix(torch.tensor([fovy]), W / H, near, far))[0], points)
    torch.testing.assert_close(clip_gs[:, 3], clip_gl[:, 3], atol=1e-5, rtol=1e-5)  # both = depth
    ndc_gs, ndc_gl = clip_gs[:, :3] / clip_gs[:, 3:], clip_gl[:, :3] / clip_gl[:, 3:]
    torch.testing.assert_close(ndc_gs[:, :2], ndc_gl[:, :2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ndc_gl[:, 2], 2 * ndc_gs[:, 2] - 1, atol=1e-5, rtol=1e-5)
    # the world-view transform is the (transposed) OpenCV w2c: points in front have camera z > 0
    cam = homo @ wvt
    assert (cam[:, 2] > 0).all()
