"""The CUDA rasterizer backends ``gsplat`` and ``inria`` against the reference, in two layers.

1. Everywhere (CPU), each adapter drives a strict stand-in of its library (``cuda_standins.py``): the
   library's Python interface, computed by the reference math, refusing what the CUDA code refuses
   (float32 only where it reads float, one device, int32 indices, contiguity, tile sizes), so a missed
   cast or ``.to()`` fails here, before any GPU run.
   - gsplat: ``StrictGsplat`` = gsplat's own pure-torch tile intersection and offsets
     (``gsplat.cuda._torch_impl``; gsplat is in the test extras) and ``composite_like_gsplat`` for
     ``rasterize_to_pixels``. Held to the reference at 1e-4 (images) and 1e-3 (gradients), wherever
     no ``o exp(power)`` exceeds 0.99 (gsplat clamps at 0.999 and zeroes the gradient there).
   - inria: ``StrictInriaLibrary`` checks every call against the library's conventions and renders
     with an emulation of inria's float32 preprocessing and compositing, from the settings the adapter
     passed. Held to the reference by ``inria_parity``: a tolerance derived from that emulation's own
     distance to the float64 reference, with float32 rounding flips left out, so it fails for a wrong
     convention and not by chance.
   Both adapters also run under autocast (bf16 / fp16 on the CPU) and with a camera on another device.
2. Where a CUDA device and the library are present, the same parity on the real library (marked
   ``gpu``; skipped with the reason elsewhere, and a failure instead of a skip when
   ``LUCID_REQUIRE_CUDA_BACKENDS=1``, as ``scripts/gpu_check.sh`` sets it).
"""
import os

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

pytest.importorskip("gsplat.cuda._torch_impl", reason="gsplat is part of the test extras: pip install -e '.[test]'")

from cuda_standins import (  # noqa: E402  (needs gsplat's torch implementation)
    CudaContractError,
    StrictGsplat,
    StrictInriaLibrary,
    foreign_camera,
    inria_parity,
    pixels_under_the_alpha_clamp,
)


# ---------------------------------------------------------------------------------------------
# gsplat on the CPU: gsplat's torch implementation + its kernel's compositing rules, strictly checked
# ---------------------------------------------------------------------------------------------
def gsplat_on_cpu(*args, **kwargs):
    return gsplat_backend.render_with_gsplat(StrictGsplat, *args, **kwargs)


def inria_on_cpu(library):
    return lambda *args, **kwargs: inria_backend.render_with_inria(library, *args, **kwargs)


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
            out = gsplat_backend.render_views_with_gsplat(StrictGsplat, *leaves[:2], [leaves[2]] * 3, leaves[3], cams,
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

        class Capture(StrictGsplat):
            @staticmethod
            def rasterize_to_pixels(*args, **kwargs):
                captured["offsets"], captured["ids"] = args[7], args[8]
                return StrictGsplat.rasterize_to_pixels(*args, **kwargs)

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
# inria on the CPU: its Python interface, checked, over its float32 arithmetic
# ---------------------------------------------------------------------------------------------
INRIA_SCENES = {
    "few-sh0-background-odd-size": (80, 53, 37, 0, (0.2, 0.7, 0.4), {}),
    "opaque-sh3-early-termination": (300, 64, 48, 3, (1.0, 1.0, 1.0), dict(opaque=40, extent=(1.0, 0.8, 1.0))),
    "near-plane-and-ewa-clamp-sh2": (200, 56, 40, 2, None, dict(near=True)),
}


@pytest.mark.parametrize("returns", ["upstream", "depth-alpha", "invdepth"])
@pytest.mark.parametrize("name", list(INRIA_SCENES))
def test_inria_adapter_meets_the_parity_rule_through_the_strict_library(name, returns):
    n, width, height, sh_degree, bg, kw = INRIA_SCENES[name]
    params = scene(n, seed=len(name) + 7, **kw)
    cam = camera(width, height, focal=0.9 * width)
    library = StrictInriaLibrary(returns)
    args = dict(sh_degree=sh_degree, background=None if bg is None else torch.tensor(bg))
    parity = inria_parity(params, cam, render_and_grad, **args)
    out, grads = render_and_grad(inria_on_cpu(library), params, cam, weight_mask=parity.weight_mask, **args)
    parity.check(out, grads)
    assert torch.equal(out["visibility"], out["radii"] > 0) and out["radii"].dtype == torch.int32
    # two library calls: the colour (SH evaluated by the library), then [z, 1, 0] for depth and alpha
    assert len(library.calls) == 2
    assert library.calls[0]["shs"] is not None and library.calls[0]["sh_degree"] == sh_degree
    aux = library.calls[1]["colors_precomp"]
    assert aux.shape == (n, 3) and torch.all(aux[:, 1] == 1) and torch.all(aux[:, 2] == 0)
    assert torch.allclose(aux[:, 0].detach(), parity.reference["out"]["depths"], rtol=1e-6, atol=1e-6)


def test_inria_adapter_with_colors_two_screen_columns_and_other_settings_fields():
    params = scene(150, seed=4)
    cam = camera(40, 48, focal=40.0)
    library = StrictInriaLibrary(extra_fields=("antialiasing",), without_fields=("debug",))
    args = dict(sh_degree=0, use_colors=True, screen_cols=2, background=torch.tensor([0.5, 0.5, 0.5]))
    parity = inria_parity(params, cam, render_and_grad, **args)
    out, grads = render_and_grad(inria_on_cpu(library), params, cam, weight_mask=parity.weight_mask, **args)
    parity.check(out, grads)
    assert library.calls[0]["shs"] is None


def flip_scene():
    """30 faint Gaussians and one whose radius float32 rounds down where float64 rounds up (its box
    edge is 3-sigma at 12.0000000214 px: ref radius 13, inria's float32 12), placed so that the extra
    pixel of radius moves the box's right edge into the next tile column: a visibility flip by chance."""
    wv = torch.eye(4)
    wv[2, 3] = 3.0
    cam = GaussianCamera(world_view=wv, fx=60.0, fy=60.0, cx=31.5, cy=31.5, width=64, height=64,
                         campos=torch.tensor([0.0, 0.0, -3.0]))
    means, quats, scales, opacities, features = scene(30, seed=3, extent=(1.0, 1.0, 0.6), opacity=(0.05, 0.5))
    x = (20.5 - cam.cx) * 3.0 / cam.fx  # pixel (20.5, 31.5): (20.5 + 12 + 15) / 16 < 3 <= (20.5 + 13 + 15) / 16
    means = torch.cat([means, torch.tensor([[x, 0.0, 0.0]])])
    quats = torch.cat([quats, torch.tensor([[1.0, 0.0, 0.0, 0.0]])])
    scales = torch.cat([scales, torch.full((1, 3), 0.19448336958885193)])
    opacities = torch.cat([opacities, torch.tensor([0.9])])
    features = torch.cat([features, 0.5 * torch.ones(1, *features.shape[1:])])
    return [means, quats, scales, opacities, features], cam


def test_inria_parity_rule_tolerates_a_float32_flip_and_rejects_a_wrong_convention():
    params, cam = flip_scene()
    args = dict(sh_degree=1, background=torch.tensor([0.2, 0.3, 0.4]))
    parity = inria_parity(params, cam, render_and_grad, **args)
    assert parity.radius_ambiguous[-1] and parity.radii[-1] == 12  # the reference has 13
    assert 0.8 <= parity.pixel_mask.float().mean() < 1.0

    out, grads = render_and_grad(inria_on_cpu(StrictInriaLibrary()), params, cam, weight_mask=parity.weight_mask,
                                 **args)
    parity.check(out, grads)  # what the library computes passes ...
    # ... where a fixed 1e-4 on every pixel fails by chance, at the flipped tile column
    worst = (out["rgb"] - parity.reference["out"]["rgb"]).abs().amax(-1)
    assert worst[~parity.pixel_mask].max() > 1e-3 and worst[parity.pixel_mask].max() < 1e-4

    # a half-pixel shift (gsplat's pixel centres inside inria's ndc2Pix) is refused
    shifted = StrictInriaLibrary(pixel_offset=0.0)
    out, grads = render_and_grad(inria_on_cpu(shifted), params, cam, weight_mask=parity.weight_mask, **args)
    with pytest.raises(AssertionError, match="rgb"):
        parity.check(out, grads)


def test_inria_adapter_refuses_what_the_library_cannot_do():
    params = scene(10, seed=1)
    cam = camera(16, 16, focal=16.0)
    library = StrictInriaLibrary()
    render = inria_backend.render_with_inria
    with pytest.raises(ConfigError, match=r"renderer.near_plane=0.1 .*fixed at 0.2"):
        render(library, *params[:4], cam, features=params[4], near_plane=0.1)
    with pytest.raises(ConfigError, match=r"renderer.tile_size=8 .*fixed at 16"):
        render(library, *params[:4], cam, features=params[4], tile_size=8)
    with pytest.raises(ConfigError, match=r"settings this adapter does not know \(kernel_size\)"):
        render(StrictInriaLibrary(extra_fields=("kernel_size",)), *params[:4], cam, features=params[4])


# ---------------------------------------------------------------------------------------------
# CUDA's rules on the CPU: dtypes, devices, autocast
# ---------------------------------------------------------------------------------------------
def test_the_strict_stand_ins_refuse_what_the_cuda_code_refuses():
    params = scene(30, seed=2)
    cam = camera(32, 24, focal=30.0)
    half = [t.half() for t in params]
    # inria reads every tensor as float: a half (or double) tensor handed over as it is must fail
    library = StrictInriaLibrary()
    settings = library.GaussianRasterizationSettings(
        image_height=24, image_width=32, tanfovx=cam.tanfovx, tanfovy=cam.tanfovy, bg=torch.zeros(3),
        scale_modifier=1.0, viewmatrix=torch.eye(4), projmatrix=torch.eye(4), sh_degree=0, campos=torch.zeros(3),
        prefiltered=False, debug=False)
    rasterizer = library.GaussianRasterizer(settings)
    shape = dict(means2D=torch.zeros(30, 3), opacities=params[3][:, None], scales=params[2], rotations=params[1])
    with pytest.raises(CudaContractError, match="expected scalar type Float but found torch.float16 .colors_precomp"):
        rasterizer(means3D=params[0], colors_precomp=half[4][:, 0], **shape)
    with pytest.raises(CudaContractError, match="colors_precomp is on a foreign device"):
        rasterizer(means3D=params[0], colors_precomp=foreign_camera(cam).campos.expand(30, 3), **shape)
    # gsplat: float32 only, depths in the means' dtype, int32 radii and ids, <= 1024 threads per tile
    means2d, radii, depths = torch.rand(1, 30, 2) * 20, torch.full((1, 30, 2), 3, dtype=torch.int32), torch.rand(1, 30)
    with pytest.raises(CudaContractError, match="expected scalar type torch.float32 but found torch.float64 .depths"):
        StrictGsplat.isect_tiles(means2d, radii, depths.double(), 16, 2, 2)
    with pytest.raises(CudaContractError, match="expected scalar type Int but found torch.int64 .radii"):
        StrictGsplat.isect_tiles(means2d, radii.long(), depths, 16, 2, 2)
    _, ids, flat = StrictGsplat.isect_tiles(means2d, radii, depths, 16, 2, 2)
    offsets = StrictGsplat.isect_offset_encode(ids, 1, 2, 2)
    assert ids.dtype == torch.int64 and flat.dtype == offsets.dtype == torch.int32
    conics, colors, opacities = torch.tensor([1.0, 0.0, 1.0]).expand(1, 30, 3), torch.rand(1, 30, 4), torch.rand(1, 30)
    with pytest.raises(CudaContractError, match="found torch.float16 .colors"):
        StrictGsplat.rasterize_to_pixels(means2d, conics, colors.half(), opacities, 32, 24, 16, offsets, flat)
    with pytest.raises(CudaContractError, match="found torch.int64 .flatten_ids"):
        StrictGsplat.rasterize_to_pixels(means2d, conics, colors, opacities, 32, 24, 16, offsets, flat.long())
    with pytest.raises(CudaContractError, match="tile_size 33"):
        StrictGsplat.rasterize_to_pixels(means2d, conics, colors, opacities, 32, 24, 33, offsets[:, :1, :1], flat)


def strict_backend(name):
    """The backend interface over a strict stand-in (or a real CPU backend)."""
    if name == "strict-inria":
        return lambda means, *a, **k: inria_backend.render_with_inria(StrictInriaLibrary(), means, *a, **k)
    if name == "strict-gsplat":
        def gsplat(means, *a, **k):
            return gsplat_backend.render_with_gsplat(StrictGsplat, means, *a, **k)

        gsplat.views = lambda means, *a, **k: gsplat_backend.render_views_with_gsplat(StrictGsplat, means, *a, **k)
        return gsplat
    if name == "cpu" and cpu_backend.load_kernel() is None:
        pytest.skip(f"the CPU rasterizer kernel is unavailable: {cpu_backend._STATE.error}")
    return RASTERIZER_BACKENDS[name]


ALL_BACKENDS = ["reference", "cpu", "strict-gsplat", "strict-inria"]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_every_backend_renders_a_camera_from_another_device(backend):
    """A camera whose tensors sit on another device than the Gaussians (a ``ForeignDeviceTensor``
    refuses to mix, as CUDA does) renders exactly what the same camera on the Gaussians' device does."""
    rasterize = strict_backend(backend)
    params = scene(60, seed=11)
    cam = camera(40, 32, focal=36.0)
    args = dict(sh_degree=2, background=torch.tensor([0.1, 0.2, 0.3]))
    out, grads = render_and_grad(rasterize, params, cam, **args)
    out_foreign, grads_foreign = render_and_grad(rasterize, params, foreign_camera(cam), **args)
    for key in ("rgb", "depth", "alpha", "radii"):
        assert torch.equal(out_foreign[key], out[key]), key
    for name, grad in grads.items():
        assert torch.equal(grads_foreign[name], grad), name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_the_renderer_rasterizes_in_float32_under_autocast(backend, dtype, monkeypatch):
    """Under a mixed-precision trainer (CPU autocast here; CUDA autocast casts the same ops) the
    renderer's camera conversion, projection and rasterization stay float32: images and gradients are
    those of a run without autocast, bit for bit, and the strict libraries see float32 only."""
    monkeypatch.setitem(RASTERIZER_BACKENDS, backend, strict_backend(backend))
    results = []
    for autocast in (False, True):
        renderer, geometry = make_renderer(backend=backend)
        inputs = batch(24, 28)
        with torch.autocast("cpu", dtype=dtype, enabled=autocast):
            out = renderer(**inputs)
            loss = (out["comp_rgb"] * torch.linspace(0, 1, 3)).sum() + out["comp_depth"].sum() + out["comp_mask"].sum()
        loss.backward()
        assert all(out[k].dtype == torch.float32 for k in ("comp_rgb", "comp_depth", "comp_mask"))
        grads = [p.grad for p in geometry.parameters()] + [p.grad for p in out["viewspace_points"]]
        results.append(([out[k].detach() for k in ("comp_rgb", "comp_depth", "comp_mask")], grads))
    (plain, plain_grads), (mixed, mixed_grads) = results
    for got, expected in zip(mixed + mixed_grads, plain + plain_grads):
        assert torch.equal(got, expected)


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


REQUIRE_CUDA_BACKENDS = "LUCID_REQUIRE_CUDA_BACKENDS"


def unavailable(reason):
    """Skip, or fail where the GPU check requires the CUDA backends (``LUCID_REQUIRE_CUDA_BACKENDS=1``):
    there a library that did not build must not pass as a skipped test."""
    if os.environ.get(REQUIRE_CUDA_BACKENDS, "0") not in ("", "0"):
        pytest.fail(f"{reason} ({REQUIRE_CUDA_BACKENDS} is set: the CUDA backends must run here)")
    pytest.skip(reason)


def require_cuda_backend(name):
    if not torch.cuda.is_available():
        unavailable("no CUDA device: the CUDA backends are checked on the CPU through their libraries' interfaces above")
    library = LIBRARIES[name]
    if library.load() is None:
        unavailable(f"backend '{name}' is not installed here ({library.error})")
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
    cam = camera(width, height, focal=0.9 * width)  # a CPU camera: the backend moves it
    args = dict(sh_degree=sh_degree, background=None if bg is None else torch.tensor(bg))
    if backend == "inria":
        # the tolerance derived from inria's float32 arithmetic (cuda_standins.inria_parity)
        parity = inria_parity(params, cam, render_and_grad, **args)
        out, grads = render_and_grad(rasterize, params, cam, device="cuda", weight_mask=parity.weight_mask, **args)
        parity.check(out, grads)
        return
    out, grads = render_and_grad(rasterize, params, cam, device="cuda", **args)
    ref, ref_grads = render_and_grad(rasterize_reference, params, cam, **args)
    if kw.get("opaque"):  # gsplat's own alpha clamp (see gsplat_backend.py)
        clamped = pixels_under_the_alpha_clamp(params, cam)
        err = (out["rgb"] - ref["rgb"]).abs().amax(dim=-1)
        assert clamped.any() and err[~clamped].max() <= 1e-4
        return
    # the projection is the reference's own (float64 on the GPU): radii equal, images to float32 rounding
    assert_images_match(out, ref, atol=1e-4, same_projection=False)
    assert_grads_match(grads, ref_grads, rtol=1e-3)
    assert torch.equal(out["radii"], ref["radii"])


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["gsplat", "inria", "auto"])
def test_renderer_component_on_cuda_matches_the_reference_on_cpu(backend, monkeypatch):
    """The component's wiring on CUDA (devices, the batch, background, screen points). inria is
    compared with its strict stand-in on the CPU, which computes its float32 arithmetic
    (its precision is ``test_cuda_backend_matches_the_reference``'s business); the others with the
    reference."""
    if backend == "auto":
        if not torch.cuda.is_available():
            unavailable("no CUDA device")
    else:
        require_cuda_backend(backend)
    monkeypatch.setitem(RASTERIZER_BACKENDS, "strict-inria", strict_backend("strict-inria"))
    outputs, grads = [], []
    for name, device in ((backend, "cuda"), ("strict-inria" if backend == "inria" else "reference", "cpu")):
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
