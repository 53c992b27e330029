"""Random rasterizer scenes, renderer inputs (a geometry stand-in, threestudio camera batches) and
the parity checks every backend is held to (shared by the renderer tests): images within an
absolute tolerance, gradients within a relative one."""
import math

import torch
import torch.nn as nn

from threestudio_lucid.compat import find
from threestudio_lucid.data.progressive_camera import look_at_c2w
from threestudio_lucid.renderer.camera import GaussianCamera

F32, F64 = torch.float32, torch.float64


# ---------------------------------------------------------------------------------------------
def rotation(axis, angle, dtype):
    k = torch.tensor(axis, dtype=F64)
    k = k / k.norm()
    kx = torch.tensor([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]], dtype=F64)
    return (torch.eye(3, dtype=F64) + math.sin(angle) * kx + (1 - math.cos(angle)) * kx @ kx).to(dtype)


def camera(width, height, focal, dtype=F32, angle=0.12):
    """A slightly rotated pinhole camera 3 units in front of the scene's centre."""
    world_view = torch.eye(4, dtype=dtype)
    world_view[:3, :3] = rotation([0.3, 1.0, 0.1], angle, dtype)
    world_view[:3, 3] = torch.tensor([0.05, -0.1, 3.0], dtype=dtype)
    campos = -world_view[:3, :3].T @ world_view[:3, 3]
    return GaussianCamera(world_view=world_view, fx=focal, fy=focal * 1.1, cx=(width - 1) / 2, cy=(height - 1) / 2,
                          width=width, height=height, campos=campos)


def scene(n, seed, dtype=F32, sh_coeffs=16, extent=(1.6, 1.2, 1.0), opaque=0, near=False, opacity=(0.05, 0.95),
          off_axis=None):
    """Gaussians around the origin: anisotropic scales 0.01-0.2, unnormalised quaternions, opacities
    uniform in ``opacity``; ``opaque`` of them large and at 0.99-1.0 opacity (alpha clamp, early
    termination); ``near``: depths spread through the camera so that some are culled at or behind
    z = 0.2 and (``off_axis``, default: with ``near``) some sit far off-axis (the EWA clamp)."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g, dtype=F64) - 0.5) * torch.tensor(extent, dtype=F64)
    if near:
        means[:, 2] = -3.6 + 4.0 * torch.rand(n, generator=g, dtype=F64)  # view z in about [-0.6, 3.4]
        if off_axis is None or off_axis:
            means[: n // 10, 0] *= 6.0
    quats = torch.randn(n, 4, generator=g, dtype=F64) * (0.5 + torch.rand(n, 1, generator=g, dtype=F64))
    scales = 0.005 + 0.1 * torch.rand(n, 3, generator=g, dtype=F64) ** 2
    opacities = opacity[0] + (opacity[1] - opacity[0]) * torch.rand(n, generator=g, dtype=F64)
    features = 0.3 * torch.randn(n, sh_coeffs, 3, generator=g, dtype=F64)
    if opaque:
        scales[:opaque] *= 2.5
        opacities[:opaque] = 0.99 + 0.01 * torch.rand(opaque, generator=g, dtype=F64)
    return [t.to(dtype) for t in (means, quats, scales, opacities, features)]


def render_and_grad(rasterize, params, cam, *, sh_degree, background=None, tile_size=16, use_colors=False,
                    screen_cols=3, device="cpu", normalize_quats=False, weight_mask=None):
    """Rasterize with every input a leaf on ``device``, backpropagate a fixed random weighting of rgb,
    depth and alpha; returns (outputs, {name: grad}), all on the CPU. ``normalize_quats``: the leaf
    is the raw quaternion and the rasterizer sees it normalised, as the geometry's ``get_rotation``
    gives it (for backends that normalise themselves, so the gradients are comparable).
    ``weight_mask`` [H, W, 1]: multiplies the weights (pixels left out of the loss)."""
    means, quats, scales, opacities, features = [t.detach().to(device).clone().requires_grad_() for t in params]
    screen = torch.zeros(means.shape[0], screen_cols, dtype=means.dtype, device=device, requires_grad=True)
    kwargs = dict(sh_degree=sh_degree, screen_points=screen, tile_size=tile_size,
                  background=None if background is None else background.to(device))
    if use_colors:
        kwargs["colors"] = torch.sigmoid(features[:, 0])
    else:
        kwargs["features"] = features
    rotations = torch.nn.functional.normalize(quats, dim=-1) if normalize_quats else quats
    out = rasterize(means, rotations, scales, opacities, cam, **kwargs)
    g = torch.Generator().manual_seed(123)
    h, w = cam.height, cam.width
    weights = [torch.rand(h, w, c, generator=g, dtype=means.dtype) for c in (3, 1, 1)]
    if weight_mask is not None:
        weights = [wt * weight_mask.to(wt) for wt in weights]
    weights = [wt.to(device) for wt in weights]
    loss = (out["rgb"] * weights[0]).sum() + (out["depth"] * weights[1]).sum() + (out["alpha"] * weights[2]).sum()
    loss.backward()
    grads = dict(means=means.grad, quats=quats.grad, scales=scales.grad, opacities=opacities.grad,
                 features=features.grad, screen_points=screen.grad)
    to_cpu = {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in out.items()}
    return to_cpu, {k: (None if v is None else v.cpu()) for k, v in grads.items()}


def assert_images_match(out, ref, atol, same_projection=True):
    """rgb, depth and alpha within ``atol``; with ``same_projection`` (backends that compute the
    reference's float64 projection) the per-Gaussian outputs must be equal too: radii and
    visibility exactly, means2d, depths and conics as rounded to float32. Float64 results differ in
    the last bits with the operation order: means2d and depths agree to 1e-12, conics to 1e-6 (the
    inverse of a needle-like Gaussian's covariance, whose determinant cancels, amplifies them)."""
    for key in ("rgb", "depth", "alpha"):
        assert out[key].shape == ref[key].shape and out[key].dtype == ref[key].dtype, key
        err = (out[key] - ref[key]).abs().max().item()
        assert err <= atol, (key, err)
    if same_projection:
        for key in ("radii", "visibility"):
            assert torch.equal(out[key], ref[key]), key
        for key in ("means2d", "depths", "conics"):
            if ref[key].dtype == torch.float64:
                assert torch.allclose(out[key], ref[key], rtol=1e-6 if key == "conics" else 1e-12, atol=0), key
            else:
                assert torch.equal(out[key], ref[key]), key


def assert_grads_match(grads, ref_grads, rtol):
    for name, ref in ref_grads.items():
        got = grads[name]
        assert got is not None and got.shape == ref.shape, name
        scale = ref.abs().max().item()
        rel = ((got - ref).norm() / max(ref.norm().item(), 1e-12)).item()
        assert rel <= rtol, (name, rel)
        assert torch.allclose(got, ref, rtol=rtol, atol=1e-4 * scale + 1e-12), (name, (got - ref).abs().max())




# ---------------------------------------------------------------------------------------------
# renderer inputs
# ---------------------------------------------------------------------------------------------
class FakeGaussians(nn.Module):
    """The geometry interface the renderer reads (threestudio-3dgs property names)."""

    def __init__(self, n=12, sh_degree=1, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self._xyz = nn.Parameter((torch.rand(n, 3, generator=g) - 0.5) * 0.8)
        self._features = nn.Parameter(0.3 * torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g))
        self._scaling = nn.Parameter(torch.log(0.05 + 0.1 * torch.rand(n, 3, generator=g)))
        self._rotation = nn.Parameter(torch.randn(n, 4, generator=g))
        self._opacity = nn.Parameter(torch.logit(0.2 + 0.6 * torch.rand(n, 1, generator=g)))
        self.active_sh_degree = sh_degree

    @property
    def get_xyz(self):
        return self._xyz

    @property
    def get_features(self):
        return self._features

    @property
    def get_scaling(self):
        return torch.exp(self._scaling)

    @property
    def get_rotation(self):
        return torch.nn.functional.normalize(self._rotation, dim=-1)

    @property
    def get_opacity(self):
        return torch.sigmoid(self._opacity)


def c2w_looking_at_origin(azimuth_deg, distance=2.0):
    """threestudio's OpenGL camera-to-world (z up) of a camera 0.3 above the xy-plane facing the origin."""
    a = math.radians(azimuth_deg)
    position = torch.tensor([[distance * math.cos(a), distance * math.sin(a), 0.3]])
    return look_at_c2w(position, torch.zeros(1, 3))[0]


def batch(height=20, width=28, azimuths=(0.0, 70.0)):
    c2w = torch.stack([c2w_looking_at_origin(a) for a in azimuths])
    return {
        "c2w": c2w,
        "fovy": torch.full((len(azimuths),), math.radians(45)),
        "height": height,
        "width": width,
        "rays_d": torch.randn(len(azimuths), height, width, 3),
        "elevation": torch.zeros(len(azimuths)),  # other batch keys are accepted and ignored
    }


def make_renderer(color=(0.2, 0.4, 0.6), **cfg):
    geometry = FakeGaussians()
    background = find("solid-color-background")({"color": list(color)})
    renderer = find("lucid-gaussian-rasterizer")(cfg, geometry=geometry, material=None, background=background)
    return renderer, geometry
