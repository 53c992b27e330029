"""The CUDA rasterizer backends ``gsplat`` and ``inria`` against the reference, in two layers.

1. Everywhere (CPU), each adapter drives a CPU stand-in of its library through the library's own
   Python interface, and must render what the reference renders (images within 1e-4, gradients
   within 1e-3 relative, as every backend):
   - gsplat: ``GsplatOnCPU`` provides the three gsplat functions the adapter calls: gsplat's own
     pure-torch tile intersection and offsets (``gsplat.cuda._torch_impl``; gsplat is in the test
     extras) and ``composite_like_gsplat``, a per-pixel compositor written from the rules of
     gsplat's ``rasterize_to_pixels`` CUDA kernel (pixel centres at ``j + 0.5``,
     ``alpha = min(0.999, o exp(-sigma))``, 1/255 skip, stop when the next T is <= 1e-4). This
     checks the tile boxes the adapter hands ``isect_tiles`` (they must give inria's tile lists),
     the half-pixel shift, the channel layout, alpha and background.
   - inria: ``StandInInriaLibrary`` exposes diff_gaussian_rasterization's Python interface
     (``GaussianRasterizationSettings``, ``GaussianRasterizer``), checks every call against the
     library's conventions (transposed matrices, translation in the last row, ``ndc2Pix`` of the
     full projection agreeing with the focal length from ``tanfov``, ``campos``, settings), decodes
     it into a camera independently of ``inria_matrices`` and renders with the reference, which
     *is* inria's algorithm. Variants return what upstream and the forks return.
2. Where a CUDA device and the library are present, the same parity on the real library (marked
   ``gpu``; skipped with the reason elsewhere).

gsplat's compositing kernel clamps alpha at 0.999 (inria: 0.99) and zeroes the gradient there, so
gsplat is held to the reference wherever no ``o exp(power)`` exceeds 0.99, and to "identical
outside the pixels such splats cover" on scenes with near-opaque splats.
"""
import math
import typing

import pytest
import torch

from rasterizer_scenes import (
    FakeGaussians,
    assert_grads_match,
    assert_images_match,
    batch,
    camera,
    make_renderer,
    render_and_grad,
    scene,
)
from threestudio_lucid.compat import find
from threestudio_lucid.errors import ConfigError
from threestudio_lucid.renderer import cpu_backend, gsplat_backend, inria_backend
from threestudio_lucid.renderer.camera import GaussianCamera
from threestudio_lucid.renderer.gaussian_rasterizer import RASTERIZER_BACKENDS
from threestudio_lucid.renderer.optional_library import OptionalLibrary
from threestudio_lucid.renderer.reference import bin_tiles, project_gaussians, rasterize_reference

gsplat_torch = pytest.importorskip(
    "gsplat.cuda._torch_impl", reason="gsplat is part of the test extras: pip install -e '.[test]'"
)


# ---------------------------------------------------------------------------------------------
# gsplat on the CPU: gsplat's torch implementation + its kernel's compositing rules
# ---------------------------------------------------------------------------------------------
def composite_like_gsplat(means2d, conics, features, opacities, width, height, tile_size, offsets, flatten_ids,
                          end=None):
    """gsplat's ``rasterize_to_pixels`` for one image: per tile, its depth-sorted Gaussians front to
    back; returns (premultiplied features [H,W,D], alpha [H,W,1]); differentiable by autograd.
    ``end``: where the image's last tile list ends in ``flatten_ids`` (default: its end)."""
    n_tx = math.ceil(width / tile_size)
    n_ty = math.ceil(height / tile_size)
    ends = offsets.flatten().tolist()[1:] + [flatten_ids.numel() if end is None else end]
    pixel_index, values = [], []
    for tile, (start, end) in enumerate(zip(offsets.flatten().tolist(), ends)):
        if end <= start:
            continue
        ids = flatten_ids[start:end].long()
        ty, tx = divmod(tile, n_tx)
        ys = torch.arange(ty * tile_size, min((ty + 1) * tile_size, height))
        xs = torch.arange(tx * tile_size, min((tx + 1) * tile_size, width))
        py, px = torch.meshgrid(ys, xs, indexing="ij")
        centres = torch.stack([px, py], dim=-1).reshape(-1, 1, 2).to(means2d) + 0.5  # gsplat: j + 0.5
        d = centres - means2d[ids][None]  # [P, K, 2]
        a, b, c = conics[ids].unbind(-1)
        sigma = 0.5 * (a * d[..., 0] ** 2 + c * d[..., 1] ** 2) + b * d[..., 0] * d[..., 1]
        alpha = torch.clamp_max(opacities[ids] * torch.exp(-sigma), 0.999)
        used = (sigma >= 0) & (alpha >= 1.0 / 255.0)
        alpha = torch.where(used, alpha, torch.zeros_like(alpha))
        log_t_after = torch.cumsum(torch.log1p(-alpha.double()), dim=1)
        stops = used & (log_t_after <= math.log(1e-4))  # next_T <= 1e-4: stop, this one not added
        alive = torch.cumsum(stops.int(), dim=1) == 0
        weight = alpha * torch.exp(log_t_after - torch.log1p(-alpha.double())).to(alpha) * alive
        values.append(torch.cat([weight @ features[ids], weight.sum(dim=1, keepdim=True)], dim=-1))
        pixel_index.append((py * width + px).reshape(-1))
    channels = features.shape[-1] + 1
    image = torch.zeros(height * width, channels, dtype=features.dtype)
    if values:
        image = image.index_add(0, torch.cat(pixel_index), torch.cat(values))
    image = image.reshape(height, width, channels)
    assert n_ty == offsets.shape[0]
    return image[..., :-1], image[..., -1:]


class GsplatOnCPU:
    """The three gsplat functions the adapter calls, on the CPU: gsplat's torch implementation of the
    tile intersection and offsets, and ``composite_like_gsplat`` for ``rasterize_to_pixels``."""

    @staticmethod
    def isect_tiles(means2d, radii, depths, tile_size, tile_width, tile_height, packed):
        assert packed is False and radii.dtype == torch.int32 and radii.shape == means2d.shape
        return gsplat_torch._isect_tiles(means2d, radii, depths, tile_size, tile_width, tile_height)

    isect_offset_encode = staticmethod(gsplat_torch._isect_offset_encode)

    @staticmethod
    def rasterize_to_pixels(means2d, conics, colors, opacities, width, height, tile_size, isect_offsets, flatten_ids,
                            packed):
        # C images: flatten_ids index the [C * N] Gaussians; image c's lists end where image c + 1's begin
        assert packed is False and means2d.shape[0] == isect_offsets.shape[0]
        n_images = means2d.shape[0]
        flat = [t.reshape(-1, *t.shape[2:]) for t in (means2d, conics, colors, opacities)]
        renders, alphas = [], []
        for c in range(n_images):
            end = int(isect_offsets[c + 1].flatten()[0]) if c + 1 < n_images else flatten_ids.numel()
            render, alpha = composite_like_gsplat(*flat, width, height, tile_size, isect_offsets[c], flatten_ids, end)
            renders.append(render)
            alphas.append(alpha)
        return torch.stack(renders), torch.stack(alphas)


def gsplat_on_cpu(*args, **kwargs):
    return gsplat_backend.render_with_gsplat(GsplatOnCPU, *args, **kwargs)


def pixels_under_the_alpha_clamp(params, cam, near_plane=0.2):
    """[H, W] bool: pixels where some visible Gaussian has ``o exp(power) > 0.99`` -- the only
    pixels where gsplat's compositing (clamp 0.999, zero gradient) may differ from inria's."""
    means, quats, scales, opacities = params[:4]
    proj = project_gaussians(means, quats, scales, cam, near_plane=near_plane)
    ys, xs = torch.meshgrid(torch.arange(cam.height), torch.arange(cam.width), indexing="ij")
    d = torch.stack([xs, ys], -1).reshape(-1, 1, 2).to(means) - proj.means2d[None]
    a, b, c = proj.conics.unbind(-1)
    power = -0.5 * (a * d[..., 0] ** 2 + c * d[..., 1] ** 2) - b * d[..., 0] * d[..., 1]
    clamped = (opacities * torch.exp(power) > 0.99) & (power <= 0) & (proj.radii > 0)
    return clamped.any(dim=1).reshape(cam.height, cam.width)


# (n, width, height, sh_degree, background, tile_size, colors instead of SH, screen columns, scene kwargs);
# opacities up to 0.95 (below gsplat's and inria's alpha clamps); small: gsplat's torch tile
# intersection is a Python loop
GSPLAT_SCENES = {
    "sh0-background-odd-size": (60, 37, 29, 0, (0.2, 0.7, 0.4), 16, False, 3, {}),
    "sh3-busy": (150, 48, 40, 3, None, 16, False, 3, {}),
    "near-plane-and-ewa-clamp-sh1": (120, 40, 32, 1, (0.1, 0.2, 0.3), 16, False, 3, dict(near=True)),
    "colors-tile-8-two-screen-columns": (80, 45, 29, 0, (0.5, 0.5, 0.5), 8, True, 2, {}),
    "odd-tile-size-9-sh2": (80, 40, 31, 2, None, 9, False, 3, {}),
}


@pytest.mark.parametrize("name", list(GSPLAT_SCENES))
def test_gsplat_adapter_matches_the_reference_through_gsplats_torch_implementation(name):
    n, width, height, sh_degree, bg, tile_size, use_colors, screen_cols, kw = GSPLAT_SCENES[name]
    params = scene(n, seed=len(name), **kw)
    cam = camera(width, height, focal=0.9 * width)
    args = dict(sh_degree=sh_degree, background=None if bg is None else torch.tensor(bg), tile_size=tile_size,
                use_colors=use_colors, screen_cols=screen_cols)
    out, grads = render_and_grad(gsplat_on_cpu, params, cam, **args)
    ref, ref_grads = render_and_grad(rasterize_reference, params, cam, **args)

    assert ref["visibility"].sum() > n // 3 and ref["alpha"].max() > 0.5  # a real scene
    if kw.get("near"):
        assert (~ref["visibility"]).sum() > 10
    assert not pixels_under_the_alpha_clamp(params, cam).any()
    assert_images_match(out, ref, atol=1e-4)  # per-Gaussian outputs: the reference's own projection
    assert_grads_match(grads, ref_grads, rtol=1e-3)
    if screen_cols == 3:
        assert torch.all(grads["screen_points"][:, 2] == 0)


def test_gsplat_all_views_in_one_call_equal_one_call_per_view():
    # the batched path hands gsplat [C, N, .] inputs; through gsplat's torch implementation it renders
    # each view as the single-view path does, values and gradients
    params = scene(150, seed=8)
    cams = [camera(40, 32, focal=36.0, angle=a) for a in (0.1, 0.6, -0.3)]
    degrees = [1, 0, 2]
    g = torch.Generator().manual_seed(2)
    weights = [torch.rand(32, 40, 5, generator=g) for _ in cams]
    results = []
    for batched in (True, False):
        leaves = [t.clone().requires_grad_() for t in params]
        screens = [torch.zeros(150, 3, requires_grad=True) for _ in cams]
        if batched:
            out = gsplat_backend.render_views_with_gsplat(GsplatOnCPU, *leaves[:2], [leaves[2]] * 3, leaves[3], cams,
                                                          features=leaves[4], sh_degrees=degrees, screen_points=screens)
            images = torch.cat([out["rgb"], out["depth"], out["alpha"]], dim=-1).unbind(0)
            radii = out["radii"]
        else:
            outs = [gsplat_on_cpu(*leaves[:4], cam, features=leaves[4], sh_degree=d, screen_points=sp)
                    for cam, d, sp in zip(cams, degrees, screens)]
            images = [torch.cat([o["rgb"], o["depth"], o["alpha"]], dim=-1) for o in outs]
            radii = [o["radii"] for o in outs]
        sum((img * w).sum() for img, w in zip(images, weights)).backward()
        grads = [t.grad for t in leaves] + [sp.grad for sp in screens]
        results.append(([img.detach() for img in images], radii, grads))
    (images, radii, grads), (ref_images, ref_radii, ref_grads) = results
    for img, ref, r, rr in zip(images, ref_images, radii, ref_radii):
        assert torch.allclose(img, ref, atol=1e-6) and torch.equal(r, rr)
    for got, ref in zip(grads, ref_grads):
        assert torch.allclose(got, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))


def test_gsplat_tile_lists_are_the_references_bins():
    """The box handed to ``isect_tiles`` makes gsplat list inria's tiles, in depth order."""
    params = scene(150, seed=21, near=True)
    for tile_size in (16, 9):
        cam = camera(50, 37, focal=45.0)
        proj = project_gaussians(*params[:3], cam, tile_size=tile_size)
        bins = bin_tiles(proj.means2d, proj.radii, proj.depths, 50, 37, tile_size)
        captured = {}

        class Capture(GsplatOnCPU):
            @staticmethod
            def rasterize_to_pixels(*args, **kwargs):
                captured["offsets"], captured["ids"] = args[7], args[8]
                return GsplatOnCPU.rasterize_to_pixels(*args, **kwargs)

        gsplat_backend.render_with_gsplat(Capture, *params[:4], cam, features=params[4], tile_size=tile_size)
        assert torch.equal(captured["ids"].long(), bins.gauss_ids)
        assert torch.equal(captured["offsets"].flatten().long(), bins.offsets[:-1])


def test_gsplat_differs_only_where_its_0_999_alpha_clamp_binds():
    params = scene(200, seed=5, opaque=25, extent=(1.0, 0.8, 1.0))
    cam = camera(48, 40, focal=44.0)
    out, _ = render_and_grad(gsplat_on_cpu, params, cam, sh_degree=1)
    ref, _ = render_and_grad(rasterize_reference, params, cam, sh_degree=1)
    clamped = pixels_under_the_alpha_clamp(params, cam)
    assert clamped.float().mean() > 0.02
    err = (out["rgb"] - ref["rgb"]).abs().amax(dim=-1)
    assert err[~clamped].max() <= 1e-4
    assert err[clamped].max() > 1e-3  # the documented difference is real


# ---------------------------------------------------------------------------------------------
# inria on the CPU: its Python interface, checked, over the reference
# ---------------------------------------------------------------------------------------------
INRIA_FIELDS = [
    ("image_height", int), ("image_width", int), ("tanfovx", float), ("tanfovy", float), ("bg", torch.Tensor),
    ("scale_modifier", float), ("viewmatrix", torch.Tensor), ("projmatrix", torch.Tensor), ("sh_degree", int),
    ("campos", torch.Tensor), ("prefiltered", bool), ("debug", bool),
]


class StandInInriaLibrary:
    """diff_gaussian_rasterization's Python interface on the CPU (see the module docstring).
    ``returns``: "upstream" (color, radii); "depth-alpha" (the ashawkey fork: + depth, alpha, here
    without gradients, as several forks do); "invdepth" (later upstream: + inverse depth).
    ``extra_fields``: further settings fields the installed version wants."""

    def __init__(self, returns="upstream", extra_fields=(), without_fields=()):
        self.returns = returns
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

    def decode_camera(self, s):
        """The pinhole camera inria's CUDA code uses for these settings, asserting their consistency."""
        assert isinstance(s.image_height, int) and isinstance(s.image_width, int)
        assert s.scale_modifier == 1.0 and s.prefiltered is False and getattr(s, "debug", False) is False
        assert s.bg.shape == (3,) and s.viewmatrix.shape == (4, 4) and s.projmatrix.shape == (4, 4)
        if "antialiasing" in s._fields:
            assert s.antialiasing is False
        w, h = s.image_width, s.image_height
        view = s.viewmatrix.double()
        assert torch.allclose(view[:, 3], torch.tensor([0, 0, 0, 1.0], dtype=view.dtype)), "row vectors: translation in the last row"
        assert torch.allclose(torch.linalg.inv(view)[3, :3], s.campos.double(), atol=1e-5), "campos"
        fx, fy = w / (2 * s.tanfovx), h / (2 * s.tanfovy)  # rasterizer_impl.cu
        # forward.cu places a mean at ndc2Pix(p_hom.xy / p_hom.w): recover the principal point from
        # it and require it to agree with the focal lengths of tanfov at every probe point
        probes_cam = torch.tensor([[0.0, 0.0, 2.0], [0.3, -0.2, 2.5], [-0.4, 0.1, 4.0], [0.2, 0.3, 1.0]], dtype=view.dtype)
        probes_cam_h = torch.cat([probes_cam, torch.ones(4, 1, dtype=view.dtype)], dim=1)
        probes_world_h = probes_cam_h @ torch.linalg.inv(view)
        assert torch.allclose(probes_world_h @ view, probes_cam_h, atol=1e-6)
        clip = probes_world_h @ s.projmatrix.double()
        ndc = clip[:, :2] / (clip[:, 3:] + 1e-7)
        pixel = ((ndc + 1) * torch.tensor([w, h], dtype=view.dtype) - 1) / 2
        cx = pixel[:, 0] - fx * probes_cam[:, 0] / probes_cam[:, 2]
        cy = pixel[:, 1] - fy * probes_cam[:, 1] / probes_cam[:, 2]
        assert torch.allclose(cx, cx[0], atol=1e-4) and torch.allclose(cy, cy[0], atol=1e-4), "projmatrix vs tanfov"
        return GaussianCamera(world_view=view.T.to(s.viewmatrix.dtype), fx=fx, fy=fy, cx=float(cx[0]), cy=float(cy[0]),
                              width=w, height=h, campos=s.campos)

    def rasterize(self, s, means3D, means2D, opacities, shs, colors_precomp, scales, rotations, cov3D_precomp):
        if (shs is None) == (colors_precomp is None):
            raise Exception("Please provide excatly one of either SHs or precomputed colors!")
        assert scales is not None and rotations is not None and cov3D_precomp is None
        assert means2D.shape == means3D.shape and opacities.shape == (means3D.shape[0], 1)
        self.calls.append(dict(shs=shs, colors_precomp=colors_precomp, sh_degree=s.sh_degree))
        cam = self.decode_camera(s)
        colour_args = dict(features=shs) if shs is not None else dict(colors=colors_precomp)
        out = rasterize_reference(means3D, rotations, scales, opacities[:, 0], cam, sh_degree=s.sh_degree,
                                  background=s.bg, screen_points=means2D, **colour_args)
        color, radii = out["rgb"].permute(2, 0, 1), out["radii"]
        if self.returns == "depth-alpha":
            return color, radii, out["depth"].detach().permute(2, 0, 1), out["alpha"].detach().permute(2, 0, 1)
        if self.returns == "invdepth":
            return color, radii, (out["alpha"] / out["depth"].clamp_min(1e-6)).detach().permute(2, 0, 1)
        return color, radii


INRIA_SCENES = {
    "few-sh0-background-odd-size": (80, 53, 37, 0, (0.2, 0.7, 0.4), {}),
    "opaque-sh3-early-termination": (300, 64, 48, 3, (1.0, 1.0, 1.0), dict(opaque=40, extent=(1.0, 0.8, 1.0))),
    "near-plane-and-ewa-clamp-sh2": (200, 56, 40, 2, None, dict(near=True)),
}


@pytest.mark.parametrize("returns", ["upstream", "depth-alpha", "invdepth"])
@pytest.mark.parametrize("name", list(INRIA_SCENES))
def test_inria_adapter_matches_the_reference_through_the_library_interface(name, returns):
    n, width, height, sh_degree, bg, kw = INRIA_SCENES[name]
    params = scene(n, seed=len(name) + 7, **kw)
    cam = camera(width, height, focal=0.9 * width)
    library = StandInInriaLibrary(returns)
    args = dict(sh_degree=sh_degree, background=None if bg is None else torch.tensor(bg))
    out, grads = render_and_grad(
        lambda *a, **k: inria_backend.render_with_inria(library, *a, **k), params, cam, **args
    )
    ref, ref_grads = render_and_grad(rasterize_reference, params, cam, **args)
    assert_images_match(out, ref, atol=1e-5, same_projection=False)
    assert_grads_match(grads, ref_grads, rtol=1e-4)
    assert torch.equal(out["radii"], ref["radii"]) and torch.equal(out["visibility"], ref["visibility"])
    # two library calls: the colour (SH evaluated by the library), then [z, 1, 0] for depth and alpha
    assert len(library.calls) == 2
    assert library.calls[0]["shs"] is not None and library.calls[0]["sh_degree"] == sh_degree
    aux = library.calls[1]["colors_precomp"]
    assert aux.shape == (n, 3) and torch.all(aux[:, 1] == 1) and torch.all(aux[:, 2] == 0)
    assert torch.allclose(aux[:, 0].detach(), ref["depths"])


def test_inria_adapter_with_colors_two_screen_columns_and_other_settings_fields():
    params = scene(150, seed=4)
    cam = camera(40, 48, focal=40.0)
    library = StandInInriaLibrary(extra_fields=("antialiasing",), without_fields=("debug",))
    args = dict(sh_degree=0, use_colors=True, screen_cols=2, background=torch.tensor([0.5, 0.5, 0.5]))
    out, grads = render_and_grad(lambda *a, **k: inria_backend.render_with_inria(library, *a, **k), params, cam, **args)
    ref, ref_grads = render_and_grad(rasterize_reference, params, cam, **args)
    assert_images_match(out, ref, atol=1e-5, same_projection=False)
    assert_grads_match(grads, ref_grads, rtol=1e-4)
    assert library.calls[0]["shs"] is None


def test_inria_adapter_refuses_what_the_library_cannot_do():
    params = scene(10, seed=1)
    cam = camera(16, 16, focal=16.0)
    library = StandInInriaLibrary()
    render = inria_backend.render_with_inria
    with pytest.raises(ConfigError, match=r"renderer.near_plane=0.1 .*fixed at 0.2"):
        render(library, *params[:4], cam, features=params[4], near_plane=0.1)
    with pytest.raises(ConfigError, match=r"renderer.tile_size=8 .*fixed at 16"):
        render(library, *params[:4], cam, features=params[4], tile_size=8)
    with pytest.raises(ConfigError, match=r"settings this adapter does not know \(kernel_size\)"):
        render(StandInInriaLibrary(extra_fields=("kernel_size",)), *params[:4], cam, features=params[4])


# ---------------------------------------------------------------------------------------------
# selection, availability and errors (any machine)
# ---------------------------------------------------------------------------------------------
def test_missing_library_gives_one_error_naming_the_backend_and_the_install_step():
    library = OptionalLibrary("inria", "no_such_rasterizer_module", "install it from your checkout")
    assert not library.available()
    with pytest.raises(ConfigError, match=r"renderer.backend='inria' needs no_such_rasterizer_module.*"
                                          r"ModuleNotFoundError.*install it from your checkout, or use system.renderer.backend=auto"):
        library.require(torch.zeros(1))


def test_unusable_library_is_unavailable_with_the_reason():
    def check(module):
        raise RuntimeError("no CUDA toolkit (nvcc) was found")

    library = OptionalLibrary("gsplat", "math", "pip install gsplat", check=check)
    assert library.load() is None and "no CUDA toolkit" in library.error


def test_a_cuda_backend_refuses_cpu_tensors_with_a_clear_error(monkeypatch):
    library = OptionalLibrary("gsplat", "math", "pip install gsplat")  # importable: only the device is wrong
    monkeypatch.setattr(gsplat_backend, "GSPLAT", library)
    with pytest.raises(ConfigError, match=r"renderer.backend='gsplat' renders CUDA tensors, got cpu; use system.renderer.backend=auto"):
        gsplat_backend.rasterize_gsplat(*scene(4, seed=0)[:4], camera(8, 8, 8.0), features=scene(4, seed=0)[4])


def test_the_renderer_rejects_an_unusable_backend_when_configured(monkeypatch):
    monkeypatch.setattr(inria_backend.rasterize_inria, "library",
                        OptionalLibrary("inria", "no_such_rasterizer_module", "build it"))
    with pytest.raises(ConfigError, match=r"renderer.backend='inria' needs no_such_rasterizer_module"):
        make_renderer(backend="inria")
    monkeypatch.setattr(inria_backend.rasterize_inria, "library", OptionalLibrary("inria", "math", "build it"))
    with pytest.raises(ConfigError, match=r"renderer.tile_size=8 is not supported by backend 'inria'"):
        make_renderer(backend="inria", tile_size=8)


def test_both_cuda_backends_are_registered_and_auto_prefers_gsplat_then_inria(monkeypatch):
    assert {"gsplat", "inria"} <= set(RASTERIZER_BACKENDS)
    assert cpu_backend.AUTO_PREFERENCE["cuda"] == ("gsplat", "inria")
    for gsplat_ok, inria_ok, expected in [(True, True, "gsplat"), (False, True, "inria"), (False, False, "reference")]:
        monkeypatch.setattr(cpu_backend._STATE, "auto_choice", {})
        monkeypatch.setattr(gsplat_backend.rasterize_gsplat, "is_available", lambda ok=gsplat_ok: ok)
        monkeypatch.setattr(inria_backend.rasterize_inria, "is_available", lambda ok=inria_ok: ok)
        assert cpu_backend.auto_backend_name(torch.device("cuda")) == expected


# ---------------------------------------------------------------------------------------------
# the real libraries on a GPU
# ---------------------------------------------------------------------------------------------
LIBRARIES = {"gsplat": gsplat_backend.GSPLAT, "inria": inria_backend.INRIA}


def require_cuda_backend(name):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the CUDA backends are checked on the CPU through their libraries' interfaces above")
    library = LIBRARIES[name]
    if library.load() is None:
        pytest.skip(f"backend '{name}' is not installed here ({library.error})")
    return RASTERIZER_BACKENDS[name]


CUDA_SCENES = {
    # name: (n, width, height, sh_degree, background, scene kwargs)
    "sh0-background-odd-size": (500, 97, 61, 0, (0.2, 0.7, 0.4), {}),
    "sh3-busy": (3000, 128, 128, 3, None, {}),
    "near-plane-and-ewa-clamp-sh1": (1000, 96, 64, 1, (0.1, 0.2, 0.3), dict(near=True)),
    "opaque-early-termination-sh2": (2000, 128, 96, 2, (1.0, 1.0, 1.0), dict(opaque=200, extent=(1.0, 0.8, 1.0))),
}


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(CUDA_SCENES))
@pytest.mark.parametrize("backend", ["gsplat", "inria"])
def test_cuda_backend_matches_the_reference(backend, name):
    rasterize = require_cuda_backend(backend)
    n, width, height, sh_degree, bg, kw = CUDA_SCENES[name]
    params = scene(n, seed=len(name), **kw)
    cam = camera(width, height, focal=0.9 * width)
    args = dict(sh_degree=sh_degree, background=None if bg is None else torch.tensor(bg))
    out, grads = render_and_grad(rasterize, params, cam, device="cuda", **args)
    ref, ref_grads = render_and_grad(rasterize_reference, params, cam, **args)
    if backend == "gsplat" and kw.get("opaque"):  # gsplat's own alpha clamp (see gsplat_backend.py)
        clamped = pixels_under_the_alpha_clamp(params, cam)
        err = (out["rgb"] - ref["rgb"]).abs().amax(dim=-1)
        assert clamped.any() and err[~clamped].max() <= 1e-4
        return
    assert_images_match(out, ref, atol=1e-4, same_projection=False)
    assert_grads_match(grads, ref_grads, rtol=1e-3)
    # the library's float32 radius (ceil of a sqrt) may flip at a box edge for the odd Gaussian
    assert (out["visibility"] != ref["visibility"]).sum() <= max(1, n // 1000)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["gsplat", "inria", "auto"])
def test_renderer_component_on_cuda_matches_the_reference_on_cpu(backend):
    if backend == "auto":
        if not torch.cuda.is_available():
            pytest.skip("no CUDA device")
    else:
        require_cuda_backend(backend)
    outputs, grads = [], []
    for name, device in ((backend, "cuda"), ("reference", "cpu")):
        geometry = FakeGaussians(n=300, sh_degree=1, seed=2).to(device)  # opacities 0.2-0.8
        background = find("solid-color-background")({"color": [0.2, 0.4, 0.6]}).to(device)
        renderer = find("lucid-gaussian-rasterizer")({"backend": name}, geometry=geometry, material=None,
                                                     background=background)
        inputs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch(48, 64).items()}
        out = renderer(**inputs)
        (out["comp_rgb"].sum() + out["comp_depth"].sum() + out["comp_mask"].sum()).backward()
        outputs.append({k: out[k].detach().cpu() for k in ("comp_rgb", "comp_depth", "comp_mask")})
        grads.append([p.grad.cpu() for p in geometry.parameters()] + [p.grad.cpu() for p in out["viewspace_points"]])
    cuda_out, ref = outputs
    for key in ref:
        assert (cuda_out[key] - ref[key]).abs().max() <= 1e-4, key
    for got, expected in zip(*grads):
        assert ((got - expected).norm() / expected.norm().clamp_min(1e-12)) <= 1e-3
