"""The pinhole camera every rasterizer backend consumes, and its conversions.

``GaussianCamera`` holds a world-to-camera matrix in the OpenCV convention (x right, y down,
z forward, column vectors: ``p_cam = world_view @ [p, 1]``) and pixel intrinsics. Pixel
coordinates follow the original 3DGS rasterizer (graphdeco-inria ``ndc2Pix``): pixel ``(i, j)``
has its centre at the integer coordinate ``(i, j)``, so the image centre is ``((W-1)/2, (H-1)/2)``.

``camera_from_threestudio`` is the one place that turns a threestudio batch camera (OpenGL
``c2w``, ``fovy``) into a ``GaussianCamera``; ``inria_matrices`` turns a ``GaussianCamera`` into the
transposed row-vector matrices diff-gaussian-rasterization takes, so a CUDA backend is an adapter.
"""
import math
from dataclasses import dataclass, replace
from typing import Tuple, Union

import torch
from torch import Tensor


@dataclass
class GaussianCamera:
    """A pinhole camera: ``world_view`` [4,4] world->camera (OpenCV), focal lengths and principal
    point in pixels (pixel centres at integer coordinates), image size and camera centre [3]."""

    world_view: Tensor
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    campos: Tensor

    def on(self, device: Union[str, torch.device]) -> "GaussianCamera":
        """This camera with its tensors on ``device``, the Gaussians' device. A camera may come from
        another device (a CPU batch for CUDA Gaussians, a test's CPU camera); every backend moves it
        once, explicitly, instead of mixing devices inside the projection (which CUDA refuses).
        Nothing is copied when it is already there."""
        return replace(self, world_view=self.world_view.to(device=device), campos=self.campos.to(device=device))

    @property
    def tanfovx(self) -> float:
        """tan(FoVx/2) = W / (2 fx), the inverse of inria's ``focal_x = W / (2 tanfovx)``."""
        return self.width / (2.0 * self.fx)

    @property
    def tanfovy(self) -> float:
        return self.height / (2.0 * self.fy)

    def world_to_camera(self, points: Tensor) -> Tensor:
        """[..., 3] world points -> [..., 3] camera-space points (z = depth along the view axis)."""
        rot = self.world_view[:3, :3].to(points)
        trans = self.world_view[:3, 3].to(points)
        return points @ rot.T + trans

    def project(self, points: Tensor) -> Tuple[Tensor, Tensor]:
        """[..., 3] world points -> (pixel coordinates [..., 2], depth [...]) (no culling)."""
        p = self.world_to_camera(points)
        z = p[..., 2]
        uv = torch.stack([self.fx * p[..., 0] / z + self.cx, self.fy * p[..., 1] / z + self.cy], dim=-1)
        return uv, z


def camera_from_threestudio(
    c2w: Tensor, fovy: Union[float, Tensor], height: int, width: int
) -> GaussianCamera:
    """A threestudio camera -> ``GaussianCamera``.

    threestudio's ``c2w`` is OpenGL camera-to-world (columns right, up, back = -lookat, then the
    position; the world is z-up). Negating the y and z columns (threestudio's ``convert_pose``) gives
    the OpenCV camera-to-world; its rigid inverse is ``world_view``. Pixels are square:
    ``fx = fy = 0.5 H / tan(fovy/2)`` (threestudio's focal), so ``tan(fovx/2) = tan(fovy/2) W / H``
    (threestudio-3dgs passes fovx = fovy, which is only right for square images). The principal
    point is the image centre.
    """
    c2w = torch.as_tensor(c2w)
    if c2w.shape != (4, 4):
        raise ValueError(f"c2w must be [4, 4], got {tuple(c2w.shape)}")
    flip = torch.tensor([1.0, -1.0, -1.0], dtype=c2w.dtype, device=c2w.device)
    rot_c2w = c2w[:3, :3] * flip  # OpenCV camera axes in world coordinates, as columns
    position = c2w[:3, 3]
    world_view = torch.zeros(4, 4, dtype=c2w.dtype, device=c2w.device)
    world_view[:3, :3] = rot_c2w.T
    world_view[:3, 3] = -rot_c2w.T @ position
    world_view[3, 3] = 1.0
    focal = 0.5 * height / math.tan(0.5 * float(fovy))
    return GaussianCamera(
        world_view=world_view,
        fx=focal,
        fy=focal,
        cx=(width - 1) / 2.0,
        cy=(height - 1) / 2.0,
        width=int(width),
        height=int(height),
        campos=position.clone(),
    )


def inria_matrices(
    camera: GaussianCamera, znear: float = 0.01, zfar: float = 100.0
) -> Tuple[Tensor, Tensor, Tensor]:
    """``(world_view_transform, full_proj_transform, campos)`` as diff-gaussian-rasterization takes
    them: both matrices transposed (row vectors, ``clip = [p, 1] @ full_proj_transform``), with the
    3DGS projection (``P[3,2] = 1``, depth mapped to [0, 1] between znear and zfar) — the math of
    threestudio's ``get_cam_info_gaussian``. The off-centre terms ``P[0,2], P[1,2]`` are chosen so
    that inria's ``ndc2Pix`` lands on ``fx x/z + cx``; they are 0 for a centred principal point.
    Rasterizer settings take ``tanfovx = camera.tanfovx`` and ``tanfovy = camera.tanfovy``.
    """
    w, h = camera.width, camera.height
    proj = torch.zeros(4, 4, dtype=camera.world_view.dtype, device=camera.world_view.device)
    proj[0, 0] = 2.0 * camera.fx / w
    proj[1, 1] = 2.0 * camera.fy / h
    proj[0, 2] = (2.0 * camera.cx - (w - 1)) / w
    proj[1, 2] = (2.0 * camera.cy - (h - 1)) / h
    proj[2, 2] = zfar / (zfar - znear)
    proj[2, 3] = -(zfar * znear) / (zfar - znear)
    proj[3, 2] = 1.0
    world_view_transform = camera.world_view.T.contiguous()
    full_proj_transform = world_view_transform @ proj.T
    return world_view_transform, full_proj_transform, camera.campos.clone()
