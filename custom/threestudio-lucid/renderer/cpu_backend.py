"""The fast CPU rasterizer backend ``cpu``, and the ``auto`` backend that picks the fastest one.

``cpu`` renders exactly what the reference (``reference.py``, the specification) renders; one
autograd node (``RasterizeCPU``) does the whole view, structured like inria's rasterizer:

- forward, torch (no graph recorded): the reference's own ``project_gaussians`` (culling, EWA
  covariances, conics, radii, means2d) and ``tile_rects`` / depth order, and the SH colours
  (``colors_from_sh_basis``: the reference's formulas as basis x coefficients) -- so radii,
  visibility, means2d, depths and conics are the same tensors as the reference's;
- forward, C++ (``cpu_kernel/gaussian_rasterizer_cpu.cpp``): the (tile, Gaussian) lists by a counting
  sort (equal to ``reference.bin_tiles``), then per pixel, front to back, the 1/255 skip and the
  T < 1e-4 stop, saving the final T and each contribution (8 bytes each in float32: ~20 MB for 20k
  Gaussians at 256^2, ~200 MB for 100k at 512^2);
- backward, C++: the contributions back to front (inria's ``backward.cu`` scheme; the gradient passes
  straight through the 0.99 clamp) into per-(tile, Gaussian) buffers summed per Gaussian in a fixed
  order (no atomics; the same bits for any thread count), then the analytic backward of the SH
  colours and the projection, with the reference's rules (clamped EWA direction constant, culled
  z = 1, colour clamp mask). No gradient reaches the camera (as in inria).
Outputs and gradients equal the reference's up to float rounding (``tests/renderer/test_cpu_backend.py``);
threads are torch's intra-op threads. ``scripts/bench_rasterizers.py`` compares the speed.

Build: the kernel is compiled by ``torch.utils.cpp_extension.load`` on first use (``-O3 -fopenmp``,
~15 s with g++ and ninja) and cached in torch's extensions folder (``TORCH_EXTENSIONS_DIR``, default
``~/.cache/torch_extensions/<py>_cpu/lucid_rasterizer_cpu_<hash>``); later processes load it in under a
second. ``<hash>`` (:func:`kernel_build_name`) hashes the source text, the compiler flags and the torch
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
from typing import Callable, Dict, Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..compat import info, warn
from ..errors import ConfigError
from .camera import GaussianCamera
from .gaussian_rasterizer import RASTERIZER_BACKENDS, register_backend
from .reference import (
    ALPHA_MAX,
    ALPHA_MIN,
    FOV_CLAMP,
    LOW_PASS,
    NEAR_PLANE,
    SH_C0,
    SH_C1,
    SH_C2,
    SH_C3,
    T_MIN,
    TILE_SIZE,
    TileBins,
    check_inputs,
    project_gaussians,
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
    if sys.platform == "darwin":  # Apple clang has no -fopenmp: one thread, still far ahead of torch
        return ["-O3"], []
    return ["-O3", "-fopenmp"], ["-fopenmp"]


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
        grads = load_kernel(strict=True).composite_backward(
            *ctx.saved_tensors, grad_image.contiguous(), width, height, tile_size, ALPHA_MAX, ALPHA_MIN, T_MIN
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


def sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """The real SH basis [N, (degree+1)^2] at unit ``dirs`` [N, 3], term for term ``reference.eval_sh``
    (inria's constants and signs): ``eval_sh(degree, sh, dirs) == sum_k sh_basis[:, k] sh[:, k]``."""
    if not 0 <= degree <= 3:
        raise ValueError(f"SH degree must be in 0..3, got {degree}")
    x, y, z = dirs.unbind(-1)
    terms = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        terms += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        terms += [SH_C2[0] * xy, SH_C2[1] * yz, SH_C2[2] * (2.0 * zz - xx - yy), SH_C2[3] * xz, SH_C2[4] * (xx - yy)]
    if degree >= 3:
        terms += [
            SH_C3[0] * y * (3.0 * xx - yy),
            SH_C3[1] * xy * z,
            SH_C3[2] * y * (4.0 * zz - xx - yy),
            SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
            SH_C3[4] * x * (4.0 * zz - xx - yy),
            SH_C3[5] * z * (xx - yy),
            SH_C3[6] * x * (xx - 3.0 * yy),
        ]
    return torch.stack(terms, dim=-1)


def colors_from_sh_basis(means: Tensor, features: Tensor, degree: int, campos: Tensor) -> Tensor:
    """``reference.colors_from_sh`` (``max(SH(normalize(mean - campos)) + 0.5, 0)``), contracted as
    basis [N, K] times coefficients: same values up to summation order, and a backward of a few
    [N, K] ops where the reference's term-by-term sum allocates one full-size ``features`` gradient
    per coefficient (forward+backward 12 ms instead of 37 ms at N = 20k, degree 3, 2 threads)."""
    k = (degree + 1) ** 2
    if features.shape[-2] < k:
        raise ValueError(f"SH degree {degree} needs {k} coefficients, got {features.shape[-2]}")
    d = means - campos.to(means)
    norm = d.norm(dim=-1, keepdim=True)
    dirs = d / torch.where(norm > 0, norm, torch.ones_like(norm))
    basis = sh_basis(degree, dirs)
    return torch.clamp_min((basis[:, :, None] * features[:, :k]).sum(dim=1) + 0.5, 0.0)


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


def _camera_params(camera: GaussianCamera, near_plane: float) -> Tensor:
    """The 23 float64 camera values ``preprocess_backward`` reads (see the C++ file)."""
    wv = camera.world_view.detach().to(device="cpu", dtype=torch.float64)
    values = [
        *wv[:3, :3].reshape(-1).tolist(), *wv[:3, 3].tolist(),
        *camera.campos.detach().to(device="cpu", dtype=torch.float64).reshape(-1).tolist(),
        camera.fx, camera.fy, FOV_CLAMP * camera.tanfovx, FOV_CLAMP * camera.tanfovy, near_plane,
        0.5 * camera.width, 0.5 * camera.height, LOW_PASS,
    ]
    return torch.tensor(values, dtype=torch.float64)


class RasterizeCPU(torch.autograd.Function):
    """The whole ``cpu`` rasterization as one autograd node: forward = the reference's projection
    and tile rectangles, the SH colours, C++ binning and compositing (no autograd graph is recorded);
    backward = the C++ compositing backward, then the C++ projection / SH backward (inria's
    structure). Outputs: image [H, W, 5] (rgb, depth, alpha sums), means2d, depths, conics, radii;
    gradients of means2d / depths / conics used elsewhere are added in."""

    @staticmethod
    def forward(ctx, means, quats, scales, opacities, sh_or_colors, screen_points, camera, sh_degree, use_sh,
                near_plane, tile_size):
        ops = load_kernel(strict=True)
        width, height = camera.width, camera.height
        proj = project_gaussians(means, quats, scales, camera, screen_points, near_plane, tile_size)
        colors = colors_from_sh_basis(means, sh_or_colors, sh_degree, camera.campos) if use_sh else sh_or_colors
        dtype = torch.promote_types(colors.dtype, proj.means2d.dtype)
        if dtype not in (torch.float32, torch.float64):
            dtype = torch.float32
        per_gaussian = torch.cat([colors, proj.depths[:, None].to(colors), torch.ones_like(colors[:, :1])], dim=-1)
        bins = bin_tiles_cpu(proj.means2d, proj.radii, proj.depths, width, height, tile_size)
        kernel_inputs = [t.to(dtype).contiguous() for t in (proj.means2d, proj.conics, opacities, per_gaussian)]
        kernel_inputs += [bins.gauss_ids, bins.offsets]
        image, *pixel_state = ops.composite_forward(
            *kernel_inputs, width, height, tile_size, ALPHA_MAX, ALPHA_MIN, T_MIN
        )
        ctx.save_for_backward(means, quats, scales, sh_or_colors, *kernel_inputs, *pixel_state)
        ctx.settings = (camera, sh_degree, use_sh, near_plane, tile_size)
        ctx.screen_columns = 0 if screen_points is None else screen_points.shape[1]
        ctx.screen_dtype = None if screen_points is None else screen_points.dtype
        ctx.opacity_dtype = opacities.dtype
        ctx.mark_non_differentiable(proj.radii)
        return image, proj.means2d, proj.depths, proj.conics, proj.radii

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_image, grad_means2d, grad_depths, grad_conics, _grad_radii):
        means, quats, scales, sh_or_colors, *kernel_state = ctx.saved_tensors
        per_gaussian = kernel_state[3]
        camera, sh_degree, use_sh, near_plane, tile_size = ctx.settings
        ops = load_kernel(strict=True)
        if grad_image is None:
            grad_image = torch.zeros(camera.height, camera.width, per_gaussian.shape[1], dtype=per_gaussian.dtype)
        g_means2d, g_conics, g_opacities, g_features = ops.composite_backward(
            *kernel_state, grad_image.contiguous(), camera.width, camera.height, tile_size, ALPHA_MAX, ALPHA_MIN, T_MIN
        )
        g_depths = g_features[:, 3]
        if grad_means2d is not None:
            g_means2d = g_means2d + grad_means2d
        if grad_conics is not None:
            g_conics = g_conics + grad_conics
        if grad_depths is not None:
            g_depths = g_depths + grad_depths
        g_colors = g_features[:, :3]
        dtype = means.dtype
        g_means, g_quats, g_scales, g_sh, g_screen = ops.preprocess_backward(
            means.contiguous(), quats.to(dtype).contiguous(), scales.to(dtype).contiguous(),
            sh_or_colors.to(dtype).contiguous() if use_sh else torch.empty(0, dtype=dtype),
            sh_degree, _camera_params(camera, near_plane),
            g_means2d.to(dtype).contiguous(), g_conics.to(dtype).contiguous(), g_depths.to(dtype).contiguous(),
            g_colors.to(dtype).contiguous(),
        )
        g_sh_or_colors = g_sh if use_sh else g_colors
        g_screen_points = None
        if ctx.screen_columns:  # d loss / d NDC xy; a third column is unused
            g_screen_points = torch.cat(
                [g_screen, g_screen.new_zeros(g_screen.shape[0], ctx.screen_columns - 2)], dim=1
            ).to(ctx.screen_dtype)
        return (g_means, g_quats.to(quats.dtype), g_scales.to(scales.dtype), g_opacities.to(ctx.opacity_dtype),
                g_sh_or_colors.to(sh_or_colors.dtype), g_screen_points, None, None, None, None, None)


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

    opacities = check_inputs(means, quats, scales, opacities, features, colors, screen_points)
    use_sh = features is not None
    if use_sh and not 0 <= sh_degree <= 3:
        raise ValueError(f"SH degree must be in 0..3, got {sh_degree}")
    if use_sh and features.shape[-2] < (sh_degree + 1) ** 2:
        raise ValueError(f"SH degree {sh_degree} needs {(sh_degree + 1) ** 2} coefficients, got {features.shape[-2]}")

    image, means2d, depths, conics, radii = RasterizeCPU.apply(
        means, quats, scales, opacities, features if use_sh else colors, screen_points, camera, sh_degree, use_sh,
        near_plane, tile_size,
    )
    return view_outputs(image, background, radii, means2d, depths, conics)


rasterize_cpu.is_available = kernel_available  # consulted by "auto"


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


register_backend("cpu", rasterize_cpu)
register_backend("auto", rasterize_auto)
