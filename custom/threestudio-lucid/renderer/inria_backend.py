"""The ``inria`` rasterizer backend: the original 3DGS rasterizer (graphdeco-inria
``diff-gaussian-rasterization``, CUDA, built from the user's own checkout) behind the backend
interface of ``reference.rasterize_reference``, which specifies exactly its algorithm.

``render_with_inria`` is the adapter; it takes the imported module as an argument (the tests hand it
a CPU stand-in that checks the calls against the library's conventions). What it maps:

- camera: ``inria_matrices`` (``camera.py``): transposed world-to-view and full projection matrices,
  ``campos``, ``tanfovx/y``; ``scale_modifier=1``, ``prefiltered=False``, and
  ``antialiasing=False`` where the settings have that field (later upstream versions).
- pass 1: SH coefficients (``shs``, evaluated by the library at ``sh_degree``) or ``colors_precomp``
  over a black background -> premultiplied colour and ``radii``.
- pass 2: ``colors_precomp = [z, 1, 0]`` per Gaussian (``z`` its view depth, differentiable) ->
  ``depth = sum w_i z_i`` and ``alpha = sum w_i`` with gradients through the library's own backward.
  The library computes neither in pass 1: upstream returns ``(color, radii)``; forks return depth
  and alpha (ashawkey's, used by DreamGaussian and threestudio-3dgs) or inverse depth (later
  upstream), and several of them discard those outputs' gradients. So every variant is called the
  same way and only the first two outputs are read: the backend works with any of them installed.
- ``screen_points`` is passed as ``means2D`` ([N, 3], padded if [N, 2]) to both passes; the
  library writes d loss / d NDC-xy into its gradient, the units the densification thresholds
  assume. Its values are ignored by the library (zeros in practice), as the reference documents.
- background: composited here, ``rgb + (1 - alpha) bg``, the library's ``C + T bg``.

Cost: the library renders one camera per call, so a batch is a loop over its views (no host sync in
it), each rasterized twice (the passes above). One pass would do only with a fork whose depth and
alpha outputs carry gradients, which the installed library cannot be relied on to have; gsplat (the
``auto`` choice) renders all views in one call instead.
The library hard-codes the near plane (0.2) and 16-pixel tiles, so other values of
``renderer.near_plane`` / ``renderer.tile_size`` are an error here rather than silently ignored.
"""
from typing import Any, Dict, Optional

import torch
from torch import Tensor

from ..errors import ConfigError
from .camera import GaussianCamera, inria_matrices
from .gaussian_rasterizer import register_backend
from .optional_library import OptionalLibrary
from .precision import rasterize_in_fp32
from .reference import NEAR_PLANE, TILE_SIZE, check_inputs

INRIA = OptionalLibrary(
    "inria",
    "diff_gaussian_rasterization",
    "build it from a checkout of https://github.com/graphdeco-inria/diff-gaussian-rasterization "
    "(or a fork) with `pip install ./diff-gaussian-rasterization` (needs nvcc)",
)


def check_settings(near_plane: float, tile_size: int) -> None:
    """The renderer settings the library hard-codes (checked when the renderer is configured)."""
    if abs(near_plane - NEAR_PLANE) > 1e-9:
        raise ConfigError(
            f"system.renderer.near_plane={near_plane} is not supported by backend 'inria' (its near plane is fixed at "
            f"{NEAR_PLANE}); use {NEAR_PLANE} or another backend"
        )
    if tile_size != TILE_SIZE:
        raise ConfigError(
            f"system.renderer.tile_size={tile_size} is not supported by backend 'inria' (its tiles are fixed at "
            f"{TILE_SIZE}); use {TILE_SIZE} or another backend"
        )


@rasterize_in_fp32
def render_with_inria(
    library: Any,
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
    """One view with ``library`` (``diff_gaussian_rasterization`` or a fork; see the module
    docstring); the reference's arguments and output keys (no ``means2d`` / ``conics``, which the
    library keeps internal)."""
    check_settings(near_plane, tile_size)
    opacities = check_inputs(means, quats, scales, opacities, features, colors, screen_points)[:, None]
    n = means.shape[0]
    # the CUDA code reads every tensor as float (data<float>()) on the Gaussians' device: cast and move
    # here, whatever the inputs' dtype and the camera's device
    f32 = dict(device=means.device, dtype=torch.float32)
    camera = camera.on(means.device)
    means, quats, scales, opacities = (t.to(**f32) for t in (means, quats, scales, opacities))
    features = None if features is None else features.to(**f32)
    colors = None if colors is None else colors.to(**f32)
    world_view, full_proj, campos = (m.to(**f32).contiguous() for m in inria_matrices(camera))
    settings = dict(
        image_height=int(camera.height),
        image_width=int(camera.width),
        tanfovx=float(camera.tanfovx),
        tanfovy=float(camera.tanfovy),
        bg=torch.zeros(3, **f32),
        scale_modifier=1.0,
        viewmatrix=world_view,
        projmatrix=full_proj,
        sh_degree=int(sh_degree),
        campos=campos,
        prefiltered=False,
        debug=False,
    )
    fields = library.GaussianRasterizationSettings._fields
    if "antialiasing" in fields:
        settings["antialiasing"] = False
    settings = {key: value for key, value in settings.items() if key in fields}  # e.g. forks without `debug`
    missing = [f for f in fields if f not in settings]
    if missing:
        raise ConfigError(
            f"system.renderer.backend='inria': the installed diff_gaussian_rasterization wants settings this adapter "
            f"does not know ({', '.join(missing)}); install the upstream version or one of the forks it documents"
        )
    rasterizer = library.GaussianRasterizer(raster_settings=library.GaussianRasterizationSettings(**settings))

    if screen_points is None:
        means2d = torch.zeros(n, 3, **f32)
    elif screen_points.shape[1] == 2:  # pad, keeping screen_points in the graph
        means2d = torch.cat([screen_points, torch.zeros_like(screen_points[:, :1])], dim=1).to(**f32)
    else:
        means2d = screen_points.to(**f32)
    shape_args = dict(means3D=means, means2D=means2d, opacities=opacities, scales=scales, rotations=quats)

    if features is not None:
        out = rasterizer(shs=features, colors_precomp=None, **shape_args)
    else:
        out = rasterizer(shs=None, colors_precomp=colors, **shape_args)
    color, radii = out[0], out[1]

    view_z = camera.world_to_camera(means)[:, 2]
    depth_and_one = torch.stack([view_z, torch.ones_like(view_z), torch.zeros_like(view_z)], dim=-1)
    aux = rasterizer(shs=None, colors_precomp=depth_and_one, **shape_args)[0]

    rgb = color.permute(1, 2, 0)
    depth, alpha = aux[0][..., None], aux[1][..., None]
    if background is not None:
        rgb = rgb + (1.0 - alpha) * background.to(rgb)
    return {
        "rgb": rgb,
        "alpha": alpha,
        "depth": depth,
        "radii": radii.int(),
        "visibility": radii > 0,
        "depths": view_z.detach(),
    }


def rasterize_inria(means: Tensor, *args, **kwargs) -> Dict[str, Tensor]:
    """The ``inria`` backend: ``render_with_inria`` with ``diff_gaussian_rasterization``."""
    library = INRIA.require(means)
    return render_with_inria(library, means, *args, **kwargs)


rasterize_inria.is_available = INRIA.available  # consulted by "auto"
rasterize_inria.library = INRIA  # checked when the renderer is configured
rasterize_inria.check_settings = check_settings  # likewise
register_backend("inria", rasterize_inria)
