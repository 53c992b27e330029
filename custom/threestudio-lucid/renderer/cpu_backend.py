"""The fast CPU rasterizer backend ``cpu``, and the ``auto`` backend that picks the fastest one.

``cpu`` renders exactly what the reference (``reference.py``, the specification) renders. All views of
a batch are one kernel call and one autograd node (``RasterizeViewsCPU``), structured like inria's
rasterizer (``cpu_kernel/gaussian_rasterizer_cpu.cpp``):

- forward, C++: per view and Gaussian, the reference's projection (culling, EWA covariances, conics,
  radii, means2d, computed in float64 and rounded as the reference rounds them, so they are the
  reference's values) and the SH colours; per view, the depth order and the (tile, Gaussian) lists
  (equal to ``reference.bin_tiles``); then the tiles of all views, spread over the threads: per pixel,
  front to back, the 1/255 skip and the T < 1e-4 stop, saving each contribution (12 bytes in
  float32: ~30 MB for 20k Gaussians at 256^2, ~300 MB for 100k at 512^2; the buffers are recycled
  from one call to the next);
- backward, C++: the contributions back to front (inria's ``backward.cu`` scheme; the gradient passes
  straight through the 0.99 clamp) into per-(tile, Gaussian) rows summed per Gaussian in a fixed
  order (no atomics; the same bits for any thread count), then the analytic backward of the SH
  colours and the projection, with the reference's rules (clamped EWA direction constant, culled
  z = 1, colour clamp mask), summed over the views in order. No gradient reaches the camera (as in
  inria).
Outputs and gradients equal the reference's up to float rounding (``tests/renderer/test_cpu_backend.py``);
threads are torch's intra-op threads. ``scripts/bench_rasterizers.py`` compares the speed with the
other backends, ``scripts/bench_cpu_kernel.py`` with a git ref's kernel (ns per blend, and a limit).

Build: the kernel is compiled by ``torch.utils.cpp_extension.load`` on first use (``-O3
-ffp-contract=off -fopenmp``, and ``-mavx2`` where torch reports AVX2; ~15 s with g++ and ninja) and
cached in torch's extensions folder (``TORCH_EXTENSIONS_DIR``, default
``~/.cache/torch_extensions/<py>_cpu/lucid_rasterizer_cpu_<hash>``); later processes load it in under
a second. ``<hash>`` (:func:`kernel_build_name`) hashes the source text, the compiler flags and the torch
version, so two checkouts (or an edited source) never rebuild each other's kernel nor wait on each
other's lock, and identical sources share one build. The ``torch.ops`` namespace stays
``lucid_rasterizer_cpu`` (set in the source). The environment variable ``LUCID_CPU_KERNEL`` controls it:
unset or ``1`` builds on first use; ``0`` never builds (the ``reference`` backend is used, silently
for ``auto``); ``require`` turns a failed build into a ``ConfigError`` instead of a fallback.
Concurrent first uses wait for one build (torch's lock file in that folder; a build killed midway
can leave the file behind, and later builds then wait until it is deleted).

Fallback: when the kernel cannot be built (no compiler, no ninja, a failed build), ``backend: cpu``
warns once, with the reason, and renders with the reference backend -- a training run still works,
only slower. ``backend: auto`` picks, per device type, the first available of ``AUTO_PREFERENCE``
(the C++ kernel on CPU; gsplat, then inria, on CUDA) and otherwise ``reference``, and logs its
choice once.
"""
import hashlib
import os
import sys
import threading
from typing import Any, Callable, Dict, Optional, Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..compat import info, warn
from ..errors import ConfigError
from .camera import GaussianCamera
from .gaussian_rasterizer import RASTERIZER_BACKENDS, rasterize_views_one_by_one, register_backend
from .precision import rasterize_in_fp32
from .reference import (
    ALPHA_MAX,
    ALPHA_MIN,
    FOV_CLAMP,
    LOW_PASS,
    MIN_DISCRIMINANT,
    NEAR_PLANE,
    RADIUS_SIGMAS,
    T_MIN,
    TILE_SIZE,
    TileBins,
    check_views,
    rasterize_reference,
    tile_rects,
    view_outputs,
)

KERNEL_NAME = "lucid_rasterizer_cpu"  # torch.ops namespace (TORCH_LIBRARY in the source); prefix of the build name
KERNEL_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_kernel", "gaussian_rasterizer_cpu.cpp")
KERNEL_SWITCH = "LUCID_CPU_KERNEL"

# auto: per device type, backend names in order of preference; the first that is registered and
# available wins, else "reference". The CUDA backends (gsplat_backend.py, inria_backend.py) are always
# registered and available where their library imports and a CUDA device exists.
AUTO_PREFERENCE: Dict[str, tuple] = {"cpu": ("cpu",), "cuda": ("gsplat", "inria")}


# ---------------------------------------------------------------------------------------------
# building / loading the kernel
# ---------------------------------------------------------------------------------------------
class _KernelState:
    def __init__(self):
        self.lock = threading.Lock()
        self.tried = False
        self.ops = None  # torch.ops.lucid_rasterizer_cpu once loaded
        self.error: Optional[str] = None  # why it is unavailable
        self.exception: Optional[BaseException] = None  # the build error, chained to ConfigErrors
        self.warned = False
        self.auto_choice: Dict[str, str] = {}


_STATE = _KernelState()


def _compiler_flags():
    if sys.platform == "win32":
        return ["/O2", "/openmp"], []
    # -ffp-contract=off: no fused multiply-adds the source does not write, so the kernel rounds as the
    # reference does on every machine (arm64 compilers fuse by default)
    flags = ["-O3", "-ffp-contract=off"]
    if _cpu_has_avx2():  # the kernel is built where it runs; AVX2 is ~5% faster (8-wide vectors)
        flags.append("-mavx2")
    if sys.platform == "darwin":  # Apple clang has no -fopenmp: one thread, still far ahead of torch
        return flags, []
    return flags + ["-fopenmp"], ["-fopenmp"]


def _cpu_has_avx2() -> bool:
    get_capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    try:
        return get_capability is not None and get_capability() in ("AVX2", "AVX512")
    except Exception:  # a torch without the query: build for the baseline
        return False


def kernel_build_name(source: bytes, cflags, ldflags) -> str:
    """The extension's name, hence its build folder and lock: ``lucid_rasterizer_cpu_<16 hex>`` from the
    source text, the flags and the torch version (a kernel built against another torch must not be
    loaded). torch keys its build folder by name only and rebuilds in place when the source differs,
    so a name shared by two checkouts made them rebuild each other's kernel, waiting on one lock."""
    if isinstance(source, str):
        source = source.encode("utf-8")
    digest = hashlib.sha256(source)
    digest.update(repr((list(cflags), list(ldflags), torch.__version__, sys.version_info[:2])).encode())
    return f"{KERNEL_NAME}_{digest.hexdigest()[:16]}"


def _build_and_load():
    from torch.utils import cpp_extension

    if not os.path.exists(KERNEL_SOURCE):
        raise FileNotFoundError(f"{KERNEL_SOURCE} is missing (an install without the package's .cpp data)")
    cflags, ldflags = _compiler_flags()
    with open(KERNEL_SOURCE, "rb") as f:
        name = kernel_build_name(f.read(), cflags, ldflags)
    try:  # where load() builds: TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions/<py>_<accelerator>/<name>
        build_dir = cpp_extension._get_build_directory(name, verbose=False)
    except Exception:  # a private helper; only used for this message
        build_dir = os.path.join(cpp_extension.get_default_build_root(), "...", name)
    if not os.path.exists(os.path.join(build_dir, f"{name}.so")):
        info(f"lucid: compiling the CPU rasterizer kernel in {build_dir} (once per machine, ~15-60 s)")
    cpp_extension.load(
        name=name,
        sources=[KERNEL_SOURCE],
        extra_cflags=cflags,
        extra_ldflags=ldflags,
        is_python_module=False,
        verbose=False,
    )
    return getattr(torch.ops, KERNEL_NAME)


def load_kernel(strict: bool = False):
    """The kernel's ``torch.ops`` namespace, building it on the first call of the process; None if it
    is unavailable. Raises ``ConfigError`` instead when ``strict`` or ``LUCID_CPU_KERNEL=require``.
    The build is tried once per process."""
    state = _STATE
    if state.ops is not None:  # loaded: no lock, no environment lookup (called several times a step)
        return state.ops
    switch = os.environ.get(KERNEL_SWITCH, "1").strip().lower()
    with state.lock:
        if not state.tried:
            state.tried = True
            if switch in ("0", "off", "false", "no"):
                state.error = f"disabled by {KERNEL_SWITCH}={os.environ[KERNEL_SWITCH]}"
            else:
                try:
                    state.ops = _build_and_load()
                except Exception as exc:  # no compiler, no ninja, compile or link error
                    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
                    state.error = f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:500]
                    state.exception = exc
    if state.ops is None and (strict or switch == "require"):
        why = f"{KERNEL_SWITCH}=require but " if switch == "require" else ""
        raise ConfigError(f"{why}the CPU rasterizer kernel is unavailable ({state.error})") from state.exception
    return state.ops


def kernel_available() -> bool:
    """Whether the C++ kernel is usable in this process (builds it on the first call)."""
    return load_kernel() is not None


# ---------------------------------------------------------------------------------------------
# the differentiable compositing op
# ---------------------------------------------------------------------------------------------
class CompositeTilesCPU(torch.autograd.Function):
    """``reference.composite_tiles`` on untiled output: [H, W, D] sums ``sum_i alpha_i T_i f_i``
    (premultiplied) per pixel, with inria's analytic backward. Inputs are contiguous, of one float
    dtype; ``gauss_ids`` / ``offsets`` from ``bin_tiles``."""

    @staticmethod
    def forward(ctx, means2d, conics, opacities, features, gauss_ids, offsets, width, height, tile_size):
        ops = load_kernel(strict=True)
        image, *pixel_state = ops.composite_forward(
            means2d, conics, opacities, features, gauss_ids, offsets,
            width, height, tile_size, ALPHA_MAX, ALPHA_MIN, T_MIN,
        )
        ctx.save_for_backward(means2d, conics, opacities, features, gauss_ids, offsets, *pixel_state)
        ctx.image_size = (width, height, tile_size)
        return image

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_image):
        width, height, tile_size = ctx.image_size
        inputs, (spans, *buffers) = ctx.saved_tensors[:6], ctx.saved_tensors[6:]
        grads = load_kernel(strict=True).composite_backward(
            *inputs, spans, buffers, grad_image.contiguous(), width, height, tile_size,
            ALPHA_MAX, ALPHA_MIN, T_MIN,
        )
        return (*grads, None, None, None, None, None)


def bin_tiles_cpu(means2d: Tensor, radii: Tensor, depths: Tensor, width: int, height: int,
                  tile_size: int = TILE_SIZE) -> TileBins:
    """``reference.bin_tiles`` with the list building in C++: the tile rectangles are the reference's
    ``tile_rects`` and the depth order its stable sort, then a counting sort by tile (which keeps the
    depth order within a tile) replaces the [M]-sized repeat/sort/gather passes. Equal output."""
    n_tx = (width + tile_size - 1) // tile_size
    n_ty = (height + tile_size - 1) // tile_size
    with torch.no_grad():
        x0, y0, x1, y1 = tile_rects(means2d, radii, width, height, tile_size)
        visible = torch.nonzero(radii > 0).squeeze(1)
        order = visible[torch.sort(depths.detach()[visible], stable=True).indices]
        gauss_ids, tile_ids, offsets = load_kernel(strict=True).bin_tiles(
            order.contiguous(), x0.contiguous(), y0.contiguous(), x1.contiguous(), y1.contiguous(), n_tx, n_ty
        )
    return TileBins(gauss_ids, tile_ids, offsets, n_tx, n_ty)


def composite_tiles_cpu(means2d, conics, opacities, features, bins, width, height, tile_size=TILE_SIZE):
    """Drop-in for ``reference.composite_tiles`` running the C++ kernel: [H, W, D]."""
    dtype = torch.promote_types(features.dtype, means2d.dtype)
    if dtype not in (torch.float32, torch.float64):
        dtype = torch.float32
    return CompositeTilesCPU.apply(
        means2d.to(dtype).contiguous(),
        conics.to(dtype).contiguous(),
        opacities.to(dtype).contiguous(),
        features.to(dtype).contiguous(),
        bins.gauss_ids.contiguous(),
        bins.offsets.contiguous(),
        int(width),
        int(height),
        int(tile_size),
    )


# ---------------------------------------------------------------------------------------------
# the backends
# ---------------------------------------------------------------------------------------------
def _warn_fallback_once(reason: str) -> None:
    if not _STATE.warned:
        _STATE.warned = True
        hint = "" if reason.startswith("disabled") else (
            f" It needs a C++ compiler and ninja (pip install ninja); set {KERNEL_SWITCH}=0 to skip the build, "
            f"{KERNEL_SWITCH}=require to make this an error."
        )
        warn(
            f"system.renderer.backend='cpu': the C++ rasterizer kernel is unavailable ({reason}); rendering with "
            f"the 'reference' torch backend instead (same images, far slower).{hint}"
        )


def camera_params(cameras: Sequence[GaussianCamera], near_plane: float) -> Tensor:
    """float64 [V, 25]: per camera the values the kernel reads (see ``CameraParams`` in the C++ file):
    world-to-view rotation and translation, centre, focal lengths, EWA clamp limits, near plane, half
    image size, low-pass, principal point. One host transfer for all views."""
    world_view = torch.stack([c.world_view.detach() for c in cameras]).to(device="cpu", dtype=torch.float64)
    campos = torch.stack([c.campos.detach().reshape(3) for c in cameras]).to(device="cpu", dtype=torch.float64)
    scalars = torch.tensor(
        [[c.fx, c.fy, FOV_CLAMP * c.tanfovx, FOV_CLAMP * c.tanfovy, near_plane, 0.5 * c.width, 0.5 * c.height,
          LOW_PASS, c.cx, c.cy] for c in cameras],
        dtype=torch.float64,
    )
    return torch.cat([world_view[:, :3, :3].reshape(-1, 9), world_view[:, :3, 3], campos, scalars], dim=1).contiguous()


class RasterizeViewsCPU(torch.autograd.Function):
    """All views of a batch as one autograd node and one kernel call each way (see the module
    docstring). Inputs: ``scales`` [S, N, 3] (S = 1 shared, or one per view), ``screen`` [V, N, 2] or
    None, ``cameras`` from ``camera_params``, ``sh_degrees`` int64 [V]. Outputs: rgb [V, H, W, 3], depth
    and alpha [V, H, W, 1] (sums), means2d [V, N, 2], depths [V, N], conics [V, N, 3], radii [V, N];
    gradients of means2d / depths / conics used elsewhere are added in. rgb, depth and alpha are outputs
    of their own: as slices of one image, autograd's backward of each slice filled and added a zero
    image of all five channels (1.4 of 2.7 ms of a 256x256 view's backward with 10 Gaussians)."""

    @staticmethod
    def forward(ctx, means, quats, scales, opacities, sh_or_colors, screen, cameras, sh_degrees, use_sh, width,
                height, tile_size):
        ops = load_kernel(strict=True)
        dtype = means.dtype
        inputs = [means.contiguous()] + [t.detach().to(dtype).contiguous() for t in (quats, scales, opacities, sh_or_colors)]
        screen_in = screen.detach().to(dtype).contiguous() if screen is not None else means.new_empty(0)
        image, means2d, depths, conics, radii, *state = ops.rasterize_forward(
            inputs[0].detach(), *inputs[1:], screen_in, cameras, sh_degrees, use_sh, width, height, tile_size,
            ALPHA_MAX, ALPHA_MIN, T_MIN, MIN_DISCRIMINANT, RADIUS_SIGMAS,
        )
        ctx.save_for_backward(*inputs, cameras, sh_degrees, *state)
        ctx.settings = (use_sh, width, height, tile_size)
        ctx.dtypes = [t.dtype for t in (quats, scales, opacities, sh_or_colors)]
        ctx.screen_dtype = None if screen is None else screen.dtype
        ctx.mark_non_differentiable(radii)
        rgb, depth, alpha = (image[..., i:j].contiguous() for i, j in ((0, 3), (3, 4), (4, 5)))
        return rgb, depth, alpha, means2d, depths, conics, radii

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_rgb, grad_depth, grad_alpha, grad_means2d, grad_depths, grad_conics, _grad_radii):
        use_sh, width, height, tile_size = ctx.settings
        means, quats, scales, opacities, sh_or_colors, cameras, sh_degrees, *state = ctx.saved_tensors
        entries, (spans, *buffers) = state[:10], state[10:]
        n_views = cameras.shape[0]
        grad_image = torch.cat([means.new_zeros(n_views, height, width, channels) if g is None else g.to(means.dtype)
                                for g, channels in ((grad_rgb, 3), (grad_depth, 1), (grad_alpha, 1))], dim=-1)
        none = means.new_empty(0)
        g_means, g_quats, g_scales, g_opacities, g_colors, g_screen = load_kernel(strict=True).rasterize_backward(
            means, quats, scales, opacities, sh_or_colors, cameras, sh_degrees, use_sh, *entries, spans, buffers,
            grad_image.contiguous(),
            none if grad_means2d is None else grad_means2d, none if grad_conics is None else grad_conics,
            none if grad_depths is None else grad_depths, width, height, tile_size, ALPHA_MAX, ALPHA_MIN, T_MIN,
        )
        grads = [g.to(dtype) for g, dtype in zip((g_quats, g_scales, g_opacities, g_colors), ctx.dtypes)]
        g_screen = None if ctx.screen_dtype is None else g_screen.to(ctx.screen_dtype)
        return (g_means, *grads, g_screen, None, None, None, None, None, None)


def _kernel_dtype(*tensors: Optional[Tensor]) -> torch.dtype:
    dtype = torch.promote_types(tensors[0].dtype, tensors[1].dtype)
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def rasterize_cpu_views(
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
    """All views in one kernel call (the batched interface of ``gaussian_rasterizer.rasterize_views``):
    ``scales`` and ``sh_degrees`` per view (the renderer's augmentations), ``screen_points`` per view
    [N, 2 or 3] leaves (or None). Returns
    ``rgb`` [V, H, W, 3] (premultiplied), ``depth`` and ``alpha`` [V, H, W, 1], and per-view lists
    ``radii``, ``visibility``, ``means2d``, ``depths``, ``conics``."""
    opacities, width, height = check_views(means, quats, scales, opacities, features, colors, screen_points, cameras)
    use_sh = features is not None
    n_views = len(cameras)
    sh_or_colors = features if use_sh else colors
    for degree in sh_degrees:
        if use_sh and not 0 <= degree <= 3:
            raise ValueError(f"SH degree must be in 0..3, got {degree}")
        if use_sh and features.shape[-2] < (degree + 1) ** 2:
            raise ValueError(f"SH degree {degree} needs {(degree + 1) ** 2} coefficients, got {features.shape[-2]}")
    dtype = _kernel_dtype(means, sh_or_colors)
    shared = all(s is scales[0] for s in scales)
    scales_in = scales[0][None] if shared else torch.stack(list(scales))
    screen = None
    if screen_points is not None:
        screen = torch.stack([sp[:, :2] for sp in screen_points])  # a third column gets zero gradient
    rgb, depth, alpha, means2d, depths, conics, radii = RasterizeViewsCPU.apply(
        means.to(dtype), quats, scales_in, opacities, sh_or_colors, screen, camera_params(cameras, near_plane),
        torch.tensor(list(sh_degrees) if use_sh else [0] * n_views, dtype=torch.long), use_sh, int(width),
        int(height), int(tile_size),
    )
    radii = list(radii.unbind(0))
    return {"rgb": rgb, "depth": depth, "alpha": alpha, "radii": radii,
            "visibility": [r > 0 for r in radii], "means2d": list(means2d.unbind(0)),
            "depths": list(depths.unbind(0)), "conics": list(conics.unbind(0))}


@rasterize_in_fp32
def rasterize_cpu(
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
    """``rasterize_reference`` in C++ (see the module docstring): same arguments, same outputs
    (``rgb``, ``alpha``, ``depth``, ``radii``, ``visibility``, ``means2d``, ``depths``, ``conics``),
    same gradients up to float rounding, except none to the camera (as inria). Falls back to the
    reference (one warning) without the kernel."""
    kwargs = dict(features=features, colors=colors, sh_degree=sh_degree, background=background,
                  screen_points=screen_points, near_plane=near_plane, tile_size=tile_size)
    if means.device.type != "cpu":
        raise ConfigError(
            f"system.renderer.backend='cpu' renders CPU tensors, got {means.device}; use backend 'auto' or a CUDA backend"
        )
    if load_kernel() is None:
        _warn_fallback_once(_STATE.error)
        return rasterize_reference(means, quats, scales, opacities, camera, **kwargs)
    out = rasterize_cpu_views(
        means, quats, [scales], opacities, [camera], features=features, colors=colors, sh_degrees=[sh_degree],
        screen_points=None if screen_points is None else [screen_points], near_plane=near_plane, tile_size=tile_size,
    )
    image = torch.cat([out["rgb"][0], out["depth"][0], out["alpha"][0]], dim=-1)
    return view_outputs(image, background, out["radii"][0], out["means2d"][0], out["depths"][0], out["conics"][0])


@rasterize_in_fp32
def _views_cpu(means: Tensor, *args, **kwargs) -> Dict[str, Any]:
    if means.device.type != "cpu":
        raise ConfigError(
            f"system.renderer.backend='cpu' renders CPU tensors, got {means.device}; use backend 'auto' or a CUDA backend"
        )
    if load_kernel() is None:
        _warn_fallback_once(_STATE.error)
        return rasterize_views_one_by_one(rasterize_reference, means, *args, **kwargs)
    return rasterize_cpu_views(means, *args, **kwargs)


rasterize_cpu.is_available = kernel_available  # consulted by "auto"
rasterize_cpu.views = _views_cpu  # all views of a batch in one call


def auto_backend_name(device: torch.device) -> str:
    """The backend ``auto`` uses for tensors on ``device``: the first available name of
    ``AUTO_PREFERENCE[device.type]``, else ``reference``. Decided once per device type, logged once."""
    kind = torch.device(device).type
    if kind not in _STATE.auto_choice:
        choice = "reference"
        for name in AUTO_PREFERENCE.get(kind, ()):
            backend = RASTERIZER_BACKENDS.get(name)
            available: Callable[[], bool] = getattr(backend, "is_available", lambda: True)
            if backend is not None and available():
                choice = name
                break
        _STATE.auto_choice[kind] = choice
        reason = "" if choice != "reference" or kind != "cpu" else f" (the C++ kernel is unavailable: {_STATE.error})"
        info(f"system.renderer.backend='auto': rendering {kind} tensors with the '{choice}' backend{reason}")
    return _STATE.auto_choice[kind]


def rasterize_auto(means: Tensor, *args, **kwargs) -> Dict[str, Tensor]:
    """The fastest available backend for ``means.device`` (see ``auto_backend_name``)."""
    return RASTERIZER_BACKENDS[auto_backend_name(means.device)](means, *args, **kwargs)


def _views_auto(means: Tensor, *args, **kwargs) -> Dict[str, Any]:
    backend = RASTERIZER_BACKENDS[auto_backend_name(means.device)]
    views = getattr(backend, "views", None)
    if views is not None:
        return views(means, *args, **kwargs)
    return rasterize_views_one_by_one(backend, means, *args, **kwargs)


rasterize_auto.views = _views_auto
register_backend("cpu", rasterize_cpu)
register_backend("auto", rasterize_auto)
