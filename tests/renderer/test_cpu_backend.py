"""The ``cpu`` backend (C++ binning, compositing and backward) against the reference rasterizer,
values and gradients, and its build fallback and the ``auto`` choice.

Parity is measured per output / parameter tensor:
- images: ``max |cpu - ref| <= 1e-4`` (float32) for rgb, depth and alpha;
- gradients: ``||g_cpu - g_ref|| / max(||g_ref||, 1e-12) <= 1e-3`` and, elementwise,
  ``|g_cpu - g_ref| <= 1e-3 |g_ref| + 1e-4 max|g_ref|`` (an atol relative to the tensor's scale, as
  components near zero carry the absolute rounding of the large ones).
The projection is the reference's float64 computation rounded to float32, so culling, radii,
means2d, depths and conics must be equal, not close; so must the tile lists. Float32 differences come from summation order and from exp/log rounding: a pair
within rounding of the 1/255 threshold could flip (~1e-7 per pair); none does in these scenes.

The kernel is compiled once per machine (~15 s, then cached by torch); ``cpu_kernel`` loads it once per
session and skips the parity tests where no compiler is available (``LUCID_CPU_KERNEL=require`` makes
that an error instead).
"""

import pytest
import torch

from threestudio_lucid.compat import find
from threestudio_lucid.errors import ConfigError
from threestudio_lucid.renderer import cpu_backend
from threestudio_lucid.renderer.gaussian_rasterizer import RASTERIZER_BACKENDS
from threestudio_lucid.renderer.reference import (
    bin_tiles,
    composite_tiles,
    project_gaussians,
    rasterize_reference,
)

from rasterizer_scenes import (
    FakeGaussians,
    F32,
    F64,
    assert_grads_match,
    assert_images_match,
    batch,
    camera,
    render_and_grad,
    scene,
)


@pytest.fixture(scope="session")
def cpu_kernel():
    ops = cpu_backend.load_kernel()
    if ops is None:
        pytest.skip(f"the CPU rasterizer kernel is unavailable: {cpu_backend._STATE.error}")
    return ops


SCENES = {
    # name: (n, width, height, sh_degree, background, tile_size, scene kwargs)
    "few-sh0-background-odd-size": (80, 53, 37, 0, (0.2, 0.7, 0.4), 16, {}),
    "busy-sh1": (250, 64, 64, 1, None, 16, {}),
    "opaque-sh3-early-termination": (500, 80, 64, 3, (1.0, 1.0, 1.0), 16, dict(opaque=60, extent=(1.0, 0.8, 1.0))),
    "near-plane-and-ewa-clamp-sh2": (300, 72, 40, 2, (0.1, 0.2, 0.3), 16, dict(near=True)),
    "tile-8-sh1": (120, 45, 29, 1, (0.3, 0.3, 0.9), 8, {}),
    "tile-32-sh0-opaque": (300, 70, 50, 0, None, 32, dict(opaque=40)),  # 1024 pixels per tile: 10 lane bits
}


@pytest.mark.parametrize("name", list(SCENES))
def test_cpu_matches_reference_values_and_gradients(cpu_kernel, name):
    n, width, height, sh_degree, bg, tile_size, kw = SCENES[name]
    params = scene(n, seed=len(name), **kw)
    cam = camera(width, height, focal=0.9 * width)
    background = None if bg is None else torch.tensor(bg)
    args = dict(sh_degree=sh_degree, background=background, tile_size=tile_size)
    out, grads = render_and_grad(cpu_backend.rasterize_cpu, params, cam, **args)
    ref, ref_grads = render_and_grad(rasterize_reference, params, cam, **args)

    assert ref["visibility"].sum() > n // 3 and ref["alpha"].max() > 0.5  # a real scene
    if kw.get("near"):
        depths = ref["depths"]
        assert ((depths <= 0.2) & ~ref["visibility"]).sum() > 20 and (depths > 0.2).sum() > 100
    if kw.get("opaque"):
        assert (ref["alpha"] > 0.999).sum() > 100  # T < 1e-3 under 0.99-alpha splats: the 1e-4 stop cuts lists
    assert_images_match(out, ref, atol=1e-4)
    assert_grads_match(grads, ref_grads, rtol=1e-3)
    assert grads["opacities"].abs().max() > 0 and torch.all(grads["screen_points"][:, 2] == 0)


def test_colors_instead_of_sh_and_two_column_screen_points(cpu_kernel):
    params = scene(250, seed=4)
    cam = camera(40, 48, focal=40.0)
    args = dict(sh_degree=0, use_colors=True, screen_cols=2, background=torch.tensor([0.5, 0.5, 0.5]))
    out, grads = render_and_grad(cpu_backend.rasterize_cpu, params, cam, **args)
    ref, ref_grads = render_and_grad(rasterize_reference, params, cam, **args)
    assert_images_match(out, ref, atol=1e-4)
    assert_grads_match(grads, ref_grads, rtol=1e-3)


def test_float64_agrees_to_rounding(cpu_kernel):
    params = scene(200, seed=9, dtype=F64, opaque=30)
    cam = camera(40, 33, focal=36.0, dtype=F64)
    out, grads = render_and_grad(cpu_backend.rasterize_cpu, params, cam, sh_degree=2)
    ref, ref_grads = render_and_grad(rasterize_reference, params, cam, sh_degree=2)
    assert out["rgb"].dtype == F64
    assert_images_match(out, ref, atol=1e-10)
    assert_grads_match(grads, ref_grads, rtol=1e-8)


def views_loss(out_images, weights):
    return sum((img * w).sum() for img, w in zip(out_images, weights))


@pytest.mark.parametrize("shared_scales", [True, False])
def test_all_views_in_one_call_match_the_reference_view_by_view(cpu_kernel, shared_scales):
    # one kernel call for three views (per-view SH degrees, per-view scales as the scale-noise
    # augmentation makes them) == three reference renders: values, and gradients summed over views
    params = scene(300, seed=21, opaque=20)
    cams = [camera(48, 40, focal=44.0, angle=a) for a in (0.1, 0.5, -0.4)]
    degrees = [3, 0, 1]
    g = torch.Generator().manual_seed(4)
    noise = [1.0 + 0.1 * torch.randn(300, 3, generator=g) for _ in cams]
    weights = [torch.rand(40, 48, 5, generator=g) for _ in cams]
    results = []
    for batched in (True, False):
        leaves = [t.clone().requires_grad_() for t in params]
        screens = [torch.zeros(300, 3, requires_grad=True) for _ in cams]
        scales = [leaves[2] if shared_scales else leaves[2] * n for n in noise]
        if batched:
            out = cpu_backend.rasterize_cpu_views(leaves[0], leaves[1], scales, leaves[3], cams, features=leaves[4],
                                                  sh_degrees=degrees, screen_points=screens)
            images = torch.cat([out["rgb"], out["depth"], out["alpha"]], dim=-1).unbind(0)
            radii = out["radii"]
        else:
            outs = [rasterize_reference(leaves[0], leaves[1], scales[i], leaves[3], cam, features=leaves[4],
                                        sh_degree=degrees[i], screen_points=screens[i]) for i, cam in enumerate(cams)]
            images = [torch.cat([o["rgb"], o["depth"], o["alpha"]], dim=-1) for o in outs]
            radii = [o["radii"] for o in outs]
        views_loss(images, weights).backward()
        grads = {name: t.grad for name, t in zip(("means", "quats", "scales", "opacities", "features"), leaves)}
        grads.update({f"screen{i}": sp.grad for i, sp in enumerate(screens)})
        results.append(([img.detach() for img in images], radii, grads))
    (images, radii, grads), (ref_images, ref_radii, ref_grads) = results
    for img, ref, r, rr in zip(images, ref_images, radii, ref_radii):
        assert (img - ref).abs().max() <= 1e-4
        assert torch.equal(r, rr)
    assert_grads_match(grads, ref_grads, rtol=1e-3)


@pytest.mark.parametrize("near_plane", [0.2, -1.0])
def test_depth_order_with_ties_and_a_near_plane_below_zero(cpu_kernel, near_plane):
    # the kernel sorts float32 depths by their bits (a radix sort), which orders positive floats only: equal
    # depths must keep the index order (torch's stable sort) and negative ones (near plane < 0) the values
    params = scene(200, seed=17, near=True)
    params[0][100:] = params[0][:100]  # exact duplicates: equal depths, different colours and opacities
    cam = camera(40, 36, focal=38.0)
    results = []
    for rasterize in (cpu_backend.rasterize_cpu, rasterize_reference):
        leaves = [t.clone() for t in params]
        results.append(rasterize(*leaves[:4], cam, features=leaves[4], sh_degree=1, near_plane=near_plane))
    got, ref = results
    assert int(ref["visibility"].sum()) > 100
    if near_plane < 0:
        assert bool((ref["depths"][ref["visibility"]] < 0).any())
    assert_images_match(got, ref, atol=1e-4)


def test_per_gaussian_outputs_carry_gradients_too(cpu_kernel):
    # means2d, depths and conics are differentiable outputs, as in the reference
    params = scene(60, seed=13, dtype=F64)
    cam = camera(30, 26, focal=30.0, dtype=F64)
    grads = []
    for rasterize in (cpu_backend.rasterize_cpu, rasterize_reference):
        leaves = [t.clone().requires_grad_() for t in params]
        out = rasterize(*leaves[:4], cam, features=leaves[4], sh_degree=1)
        visible = out["visibility"]
        loss = (out["means2d"][visible] ** 2).sum() * 1e-3 + out["depths"][visible].sum() + out["conics"][visible].sum()
        loss.backward()
        grads.append([t.grad for t in leaves[:3]])
    for got, ref in zip(*grads):
        assert torch.allclose(got, ref, rtol=1e-9, atol=1e-12 * ref.abs().max())


def test_needle_like_gaussians_are_never_skipped_by_the_pixel_boxes(cpu_kernel):
    # axis ratios up to ~10^5: ill-conditioned conics, where the kernel's early-reject boxes are
    # tightest relative to float rounding. Float32 images must still match; gradients are compared
    # in float64 (in float32 this conditioning amplifies rounding in both backends alike).
    g = torch.Generator().manual_seed(5)
    params = scene(300, seed=5, dtype=F64)
    params[2][:, 0] *= torch.exp(2.5 * torch.randn(300, generator=g, dtype=F64))
    params[2][:, 1] *= 1e-3 ** torch.rand(300, generator=g, dtype=F64)
    for dtype in (F32, F64):
        cam = camera(57, 43, focal=46.0, dtype=dtype)
        cast = [t.to(dtype) for t in params]
        out, grads = render_and_grad(cpu_backend.rasterize_cpu, cast, cam, sh_degree=1)
        ref, ref_grads = render_and_grad(rasterize_reference, cast, cam, sh_degree=1)
        assert_images_match(out, ref, atol=1e-4 if dtype == F32 else 1e-10)
        if dtype == F64:
            assert_grads_match(grads, ref_grads, rtol=1e-6)


def test_gradient_passes_straight_through_the_0_99_clamp(cpu_kernel):
    cam = camera(1, 1, focal=10.0)
    cam.world_view = torch.eye(4)
    cam.campos = torch.zeros(3)
    opac = torch.tensor([1.0], requires_grad=True)
    out = cpu_backend.rasterize_cpu(torch.tensor([[0.0, 0.0, 2.0]]), torch.tensor([[1.0, 0.0, 0.0, 0.0]]),
                                    torch.full((1, 3), 0.1), opac, cam, colors=torch.full((1, 3), 0.5))
    assert torch.allclose(out["alpha"], torch.tensor(0.99))
    out["alpha"].sum().backward()
    assert torch.allclose(opac.grad, torch.tensor([1.0]))


def test_nothing_visible_and_no_gaussians(cpu_kernel):
    cam = camera(20, 16, focal=20.0)
    means = torch.tensor([[0.0, 0.0, -9.0]], requires_grad=True)
    sp = torch.zeros(1, 3, requires_grad=True)
    out = cpu_backend.rasterize_cpu(means, torch.tensor([[1.0, 0.0, 0.0, 0.0]]), torch.full((1, 3), 0.1),
                                    torch.tensor([0.5]), cam, colors=torch.full((1, 3), 0.5),
                                    background=torch.ones(3), screen_points=sp)
    assert torch.all(out["rgb"] == 1) and torch.all(out["alpha"] == 0) and out["radii"].tolist() == [0]
    out["rgb"].sum().backward()
    assert torch.all(means.grad == 0) and torch.all(sp.grad == 0)

    empty = torch.zeros(0, 3)
    out = cpu_backend.rasterize_cpu(empty, torch.zeros(0, 4), empty, torch.zeros(0), cam, colors=empty)
    assert out["rgb"].shape == (16, 20, 3) and torch.all(out["alpha"] == 0)


def test_compositing_op_matches_reference_for_any_channel_count(cpu_kernel):
    params = scene(150, seed=2, dtype=F64)
    cam = camera(37, 50, focal=40.0, dtype=F64)
    proj = project_gaussians(*params[:3], cam)
    bins = bin_tiles(proj.means2d, proj.radii, proj.depths, cam.width, cam.height)
    feats = torch.randn(150, 7, dtype=F64, generator=torch.Generator().manual_seed(0))
    inputs = [proj.means2d.detach(), proj.conics.detach(), params[3], feats]
    weights = torch.randn(cam.height, cam.width, 7, dtype=F64)
    results = []
    for composite in (cpu_backend.composite_tiles_cpu, composite_tiles):
        leaves = [t.clone().requires_grad_() for t in inputs]
        image = composite(*leaves, bins, cam.width, cam.height)
        (image * weights).sum().backward()
        results.append((image, [t.grad for t in leaves]))
    (image, grads), (ref_image, ref_grads) = results
    assert torch.allclose(image, ref_image, atol=1e-12)
    for got, ref in zip(grads, ref_grads):
        assert torch.allclose(got, ref, rtol=1e-9, atol=1e-10 * ref.abs().max())


def test_results_do_not_depend_on_the_thread_count(cpu_kernel):
    params = scene(500, seed=6, opaque=50)
    cam = camera(64, 48, focal=55.0)
    threads = torch.get_num_threads()
    runs = []
    try:
        for n_threads in (1, 3):
            torch.set_num_threads(n_threads)
            runs.append(render_and_grad(cpu_backend.rasterize_cpu, params, cam, sh_degree=1))
    finally:
        torch.set_num_threads(threads)
    (out1, grads1), (out3, grads3) = runs
    for key in ("rgb", "depth", "alpha"):
        assert torch.equal(out1[key], out3[key])
    for name in grads1:
        assert torch.equal(grads1[name], grads3[name]), name


def test_kernel_rejects_inconsistent_inputs(cpu_kernel):
    means2d, conics, opac, feats = torch.zeros(2, 2), torch.zeros(2, 3), torch.zeros(2), torch.zeros(2, 5)
    offsets = torch.tensor([0, 1], dtype=torch.long)  # one 16x16 tile
    with pytest.raises(RuntimeError, match="offsets must run from 0"):
        cpu_kernel.composite_forward(means2d, conics, opac, feats, torch.tensor([0, 1]), offsets,
                                     16, 16, 16, 0.99, 1 / 255, 1e-4)
    with pytest.raises(RuntimeError, match="index the N Gaussians"):
        cpu_kernel.composite_forward(means2d, conics, opac, feats, torch.tensor([5]), offsets,
                                     16, 16, 16, 0.99, 1 / 255, 1e-4)
    # a record packs the list position with the pixel's place in its tile: 256^2 pixels leave 15 bits
    n = 1 << 15
    means2d, conics, opac, feats = torch.zeros(n, 2), torch.zeros(n, 3), torch.zeros(n), torch.zeros(n, 5)
    with pytest.raises(RuntimeError, match="a tile lists 32768 Gaussians, more than the 32768 tiles of 256 pixels "
                                           "can hold: use a smaller tile_size"):
        cpu_kernel.composite_forward(means2d, conics, opac, feats, torch.arange(n), torch.tensor([0, n]),
                                     256, 256, 256, 0.99, 1 / 255, 1e-4)


# ---------------------------------------------------------------------------------------------
# build fallback and the auto backend
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def fresh_kernel_state(monkeypatch):
    """A process that has not tried to load the kernel yet; warnings and info lines recorded."""
    monkeypatch.setattr(cpu_backend, "_STATE", cpu_backend._KernelState())
    messages = {"warn": [], "info": []}
    monkeypatch.setattr(cpu_backend, "warn", lambda msg, *a, **k: messages["warn"].append(msg))
    monkeypatch.setattr(cpu_backend, "info", lambda msg, *a, **k: messages["info"].append(msg))
    return messages


@pytest.fixture
def failing_build(monkeypatch, fresh_kernel_state):
    calls = []

    def fail():
        calls.append(1)
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(cpu_backend, "_build_and_load", fail)
    fresh_kernel_state["build_calls"] = calls
    return fresh_kernel_state


def test_failed_build_falls_back_to_the_reference_with_one_warning(failing_build, monkeypatch):
    monkeypatch.delenv(cpu_backend.KERNEL_SWITCH, raising=False)
    params = scene(50, seed=3)
    cam = camera(24, 20, focal=22.0)
    for _ in range(3):
        out = RASTERIZER_BACKENDS["cpu"](*params[:4], cam, features=params[4], sh_degree=3)
    ref = rasterize_reference(*params[:4], cam, features=params[4], sh_degree=3)
    assert torch.equal(out["rgb"], ref["rgb"])
    assert len(failing_build["warn"]) == 1 and "Ninja is required" in failing_build["warn"][0]
    assert "'reference'" in failing_build["warn"][0]
    assert len(failing_build["build_calls"]) == 1  # tried once per process
    # the batched entry the renderer uses falls back the same way, view by view
    views = RASTERIZER_BACKENDS["cpu"].views(*params[:2], [params[2]] * 2, params[3], [cam, cam],
                                              features=params[4], sh_degrees=[3, 3], near_plane=0.2, tile_size=16)
    assert torch.equal(views["rgb"][1], ref["rgb"]) and len(failing_build["warn"]) == 1

    RASTERIZER_BACKENDS["auto"](*params[:4], cam, features=params[4], sh_degree=3)
    assert cpu_backend.auto_backend_name(torch.device("cpu")) == "reference"
    assert [m for m in failing_build["info"] if "'auto'" in m and "'reference'" in m]


def test_require_switch_turns_a_failed_build_into_an_error(failing_build, monkeypatch):
    monkeypatch.setenv(cpu_backend.KERNEL_SWITCH, "require")
    params = scene(5, seed=3)
    for _ in range(2):  # every call, not only the one that tried the build
        with pytest.raises(ConfigError, match="LUCID_CPU_KERNEL=require.*Ninja is required"):
            cpu_backend.rasterize_cpu(*params[:4], camera(8, 8, 8.0), features=params[4])
    assert failing_build["warn"] == []


def test_off_switch_never_builds(failing_build, monkeypatch):
    monkeypatch.setenv(cpu_backend.KERNEL_SWITCH, "0")
    assert not cpu_backend.kernel_available()
    assert failing_build["build_calls"] == [] and "disabled" in cpu_backend._STATE.error


def test_auto_picks_the_cpu_kernel_and_logs_once(cpu_kernel, fresh_kernel_state):
    params = scene(60, seed=8)
    cam = camera(30, 22, focal=28.0)
    for _ in range(2):
        out = RASTERIZER_BACKENDS["auto"](*params[:4], cam, features=params[4], sh_degree=1)
    assert cpu_backend.auto_backend_name(torch.device("cpu")) == "cpu"
    assert len([m for m in fresh_kernel_state["info"] if "'auto'" in m]) == 1
    ref = rasterize_reference(*params[:4], cam, features=params[4], sh_degree=1)
    assert (out["rgb"] - ref["rgb"]).abs().max() <= 1e-4


@pytest.mark.parametrize("backend", ["cpu", "auto"])
def test_renderer_component_with_the_fast_backend(cpu_kernel, backend):
    outputs, grads = [], []
    for name in (backend, "reference"):
        geometry = FakeGaussians(n=40, sh_degree=1)
        bg = find("solid-color-background")({"color": [0.2, 0.4, 0.6]})
        renderer = find("lucid-gaussian-rasterizer")({"backend": name}, geometry=geometry, material=None,
                                                     background=bg)
        out = renderer(**batch(20, 28))
        (out["comp_rgb"].sum() + out["comp_depth"].sum()).backward()
        outputs.append(out)
        grads.append([p.grad for p in geometry.parameters()] + [p.grad for p in out["viewspace_points"]])
    fast, ref = outputs
    for key in ("comp_rgb", "comp_depth", "comp_mask"):
        assert (fast[key] - ref[key]).abs().max() <= 1e-4, key
    for got, expected in zip(*grads):
        assert ((got - expected).norm() / expected.norm().clamp_min(1e-12)) <= 1e-3


@pytest.mark.parametrize("tile_size", [16, 8])
def test_binning_equals_the_reference_binning(cpu_kernel, tile_size):
    params = scene(400, seed=12, near=True)
    cam = camera(70, 45, focal=60.0)
    proj = project_gaussians(*params[:3], cam, tile_size=tile_size)
    expected = bin_tiles(proj.means2d, proj.radii, proj.depths, 70, 45, tile_size)
    got = cpu_backend.bin_tiles_cpu(proj.means2d, proj.radii, proj.depths, 70, 45, tile_size)
    assert expected.gauss_ids.numel() > 400
    for a, b in zip(got, expected):
        assert a == b if isinstance(a, int) else torch.equal(a, b)
