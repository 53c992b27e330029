"""camera_from_threestudio and inria_matrices: threestudio's OpenGL c2w -> OpenCV world_view with
integer pixel centres, and the transposed matrices of diff-gaussian-rasterization."""
import math

import pytest
import torch

from threestudio_lucid.renderer.camera import GaussianCamera, camera_from_threestudio, inria_matrices

F64 = torch.float64


def threestudio_c2w(elevation_deg, azimuth_deg, distance, dtype=F64):
    """threestudio's uncond.py camera: z-up orbit position, looking at the origin with up +z,
    c2w = [right, up, -lookat | position] (OpenGL)."""
    e, a = math.radians(elevation_deg), math.radians(azimuth_deg)
    position = distance * torch.tensor(
        [math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)], dtype=dtype
    )
    lookat = -position / position.norm()
    right = torch.linalg.cross(lookat, torch.tensor([0.0, 0.0, 1.0], dtype=dtype))
    right = right / right.norm()
    up = torch.linalg.cross(right, lookat)
    c2w = torch.eye(4, dtype=dtype)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, -lookat, position
    return c2w


def test_azimuth_zero_camera_sees_the_origin_at_the_centre_and_z_up_as_image_up():
    width, height = 64, 48
    camera = camera_from_threestudio(threestudio_c2w(0, 0, 2.5), math.radians(40), height, width)
    assert torch.allclose(camera.campos, torch.tensor([2.5, 0.0, 0.0], dtype=F64))
    points = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.5], [0.0, 0.5, 0.0]], dtype=F64)
    uv, depth = camera.project(points)
    centre = torch.tensor([(width - 1) / 2, (height - 1) / 2], dtype=F64)
    assert torch.allclose(uv[0], centre, atol=1e-12) and torch.allclose(depth[0], torch.tensor(2.5, dtype=F64))
    assert uv[1, 1] < centre[1] and abs(uv[1, 0] - centre[0]) < 1e-12  # world +z: upper half (smaller y)
    assert uv[2, 0] > centre[0]  # from +x looking at the origin, world +y is on the right


def test_focal_and_fov_follow_threestudio_with_square_pixels():
    fovy = math.radians(50)
    camera = camera_from_threestudio(threestudio_c2w(20, 30, 3.0), fovy, 60, 90)
    focal = 0.5 * 60 / math.tan(fovy / 2)
    assert camera.fx == pytest.approx(focal) and camera.fy == pytest.approx(focal)
    assert camera.tanfovy == pytest.approx(math.tan(fovy / 2))
    assert camera.tanfovx == pytest.approx(math.tan(fovy / 2) * 90 / 60)
    assert (camera.cx, camera.cy, camera.width, camera.height) == (44.5, 29.5, 90, 60)


def test_pixels_of_threestudio_rays_land_on_their_pixel_centres():
    # threestudio's get_ray_directions: ((i + 0.5 - W/2)/f, -(j + 0.5 - H/2)/f, -1) in the OpenGL
    # camera, rotated by c2w; a point on the ray through pixel (i, j) must project to (i, j)
    width, height, fovy = 20, 14, math.radians(60)
    c2w = threestudio_c2w(35, -120, 2.0)
    camera = camera_from_threestudio(c2w, fovy, height, width)
    focal = 0.5 * height / math.tan(fovy / 2)
    j, i = torch.meshgrid(torch.arange(height, dtype=F64), torch.arange(width, dtype=F64), indexing="ij")
    dirs = torch.stack([(i + 0.5 - width / 2) / focal, -(j + 0.5 - height / 2) / focal, -torch.ones_like(i)], -1)
    points = c2w[:3, 3] + 1.7 * dirs @ c2w[:3, :3].T
    uv, depth = camera.project(points)
    assert torch.allclose(uv, torch.stack([i, j], dim=-1), atol=1e-9)
    assert torch.allclose(depth, torch.full_like(depth, 1.7))


def ndc_to_pixel(points, full_proj, width, height):
    """inria's projection: row-vector clip coordinates, perspective divide, ndc2Pix."""
    clip = torch.cat([points, torch.ones_like(points[:, :1])], dim=-1) @ full_proj
    ndc = clip[:, :3] / clip[:, 3:]
    return torch.stack([((ndc[:, 0] + 1) * width - 1) / 2, ((ndc[:, 1] + 1) * height - 1) / 2], dim=-1)


@pytest.mark.parametrize("off_centre", [False, True])
def test_inria_matrices_agree_with_the_camera_projection(off_centre):
    width, height = 48, 32
    camera = camera_from_threestudio(threestudio_c2w(10, 75, 2.2), math.radians(45), height, width)
    if off_centre:
        camera = GaussianCamera(camera.world_view, camera.fx, camera.fy, 20.0, 18.5, width, height, camera.campos)
    world_view_transform, full_proj, campos = inria_matrices(camera)
    assert torch.allclose(world_view_transform, camera.world_view.T)
    assert torch.allclose(campos, torch.inverse(world_view_transform)[3, :3], atol=1e-12)
    points = torch.randn(20, 3, dtype=F64, generator=torch.Generator().manual_seed(0)) * 0.5
    uv, depth = camera.project(points)
    assert torch.allclose(ndc_to_pixel(points, full_proj, width, height), uv, atol=1e-9)
    # the third clip coordinate maps znear..zfar to 0..1 as the 3DGS projection does
    clip = torch.cat([points, torch.ones(20, 1, dtype=F64)], -1) @ full_proj
    assert torch.allclose(clip[:, 3], depth)
    expected_z = (100 / (100 - 0.01)) * (1 - 0.01 / depth)
    assert torch.allclose(clip[:, 2] / clip[:, 3], expected_z)


def test_inria_matrices_match_threestudio_get_cam_info_gaussian_for_square_images():
    ops = pytest.importorskip("threestudio_lucid.host.utils.ops")
    c2w = threestudio_c2w(25, 200, 1.8, dtype=torch.float32)
    fovy = math.radians(55)
    camera = camera_from_threestudio(c2w, fovy, 64, 64)
    ours = inria_matrices(camera, znear=0.1, zfar=100.0)
    theirs = ops.get_cam_info_gaussian(c2w, fovy, fovy, 0.1, 100.0)
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b.to(a), atol=1e-5)
