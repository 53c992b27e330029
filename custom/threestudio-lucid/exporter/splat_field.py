"""The splats as a 3D field: opacity-weighted Gaussians summed at any point, and their colour there.

    density(x) = sum_i o_i g_i(x),   colour(x) = sum_i o_i g_i(x) c_i / density(x),
    g_i(x) = exp(-1/2 (x - mu_i)^T Sigma_i^-1 (x - mu_i))   (peak 1, so a ray through mu_i sees alpha o_i)

with c_i the view-independent colour (the SH DC term). A Gaussian thinner than the sampling grid would
fall between its samples and leave a hole (trained surfaces are made of flat splats), so axes thinner
than ``min_scale`` are widened to it, the peak kept: a ray through the centre still sees alpha o_i.
Gaussians already wider are left as they are, so the surface does not move with the grid.

Evaluation is local and chunked: each Gaussian is evaluated only on the grid points inside its own
``cutoff``-sigma box, ``max_pairs`` (point, Gaussian) pairs at a time, and added into the grid; so the
work is the splats' total footprint and the memory beyond the grid is bounded. Colours between grid
points (mesh vertices, texels) are interpolated from the density and colour-sum grids.
"""
import dataclasses
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..geometry.gaussian_splatting import sh_dc_to_rgb
from ..renderer.reference import quat_scale_to_covariance


@dataclass
class SplatField:
    means: Tensor  # [N, 3]
    quats: Tensor  # [N, 4] (w, x, y, z), normalised
    scales: Tensor  # [N, 3] standard deviations along the Gaussian's own axes, as trained
    opacities: Tensor  # [N]
    colors: Tensor  # [N, 3] in [0, 1]
    cutoff: float = 3.0  # Gaussians are evaluated within this many standard deviations
    min_scale: float = 0.0  # thinner axes are widened to this (world units)

    def __post_init__(self):
        cov = quat_scale_to_covariance(self.quats.double(), self.scales.double().clamp_min(self.min_scale))
        self.precisions = torch.linalg.inv(cov).float()  # [N, 3, 3]
        # half-size of each Gaussian's cutoff box along the world axes
        self.extents = (self.cutoff * torch.diagonal(cov, dim1=-2, dim2=-1).sqrt()).float()

    @staticmethod
    def from_gaussians(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
                       cutoff: float = 3.0, min_opacity: float = 0.0) -> "SplatField":
        """Gaussians with opacity at least ``min_opacity``; ``scales`` are standard deviations."""
        keep = opacities.reshape(-1) >= min_opacity
        return SplatField(
            means=means[keep].float(),
            quats=torch.nn.functional.normalize(quats[keep].float(), dim=-1),
            scales=scales[keep].float(),
            opacities=opacities.reshape(-1)[keep].float(),
            colors=colors[keep].float().clamp(0.0, 1.0),
            cutoff=cutoff,
        )

    @staticmethod
    def from_geometry(geometry, cutoff: float = 3.0, min_opacity: float = 0.0) -> "SplatField":
        """The field of a ``lucid-gaussian-splatting`` geometry (colour from its SH DC coefficients)."""
        with torch.no_grad():
            return SplatField.from_gaussians(
                geometry.get_xyz, geometry.get_rotation, geometry.get_scaling, geometry.get_opacity,
                sh_dc_to_rgb(geometry.get_features[:, 0, :]), cutoff=cutoff, min_opacity=min_opacity,
            )

    def with_min_scale(self, min_scale: float) -> "SplatField":
        """The same splats with every axis at least ``min_scale`` (world units) wide."""
        return dataclasses.replace(self, min_scale=float(min_scale))

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[0]

    def bounds(self) -> Tuple[Tensor, Tensor]:
        """The box that holds every Gaussian's cutoff box."""
        if self.num_gaussians == 0:
            raise ValueError("the splat field is empty: no Gaussian is opaque enough to export")
        return (self.means - self.extents).min(0).values, (self.means + self.extents).max(0).values

    # ---------------------------------------------------------------------------------------------
    # evaluation
    # ---------------------------------------------------------------------------------------------
    def to_grid(self, lo: Tensor, spacing: float, shape: Tuple[int, int, int], max_pairs: int = 1 << 22,
                with_color: bool = True) -> Tuple[Tensor, Optional[Tensor]]:
        """Density [X, Y, Z] and the colour sum sum_i o_i g_i c_i [X, Y, Z, 3] at the grid points
        ``lo + spacing * (i, j, k)``, ``0 <= (i, j, k) < shape``. Each Gaussian is evaluated on the grid
        points inside its own cutoff box (padded to a cube of side w cells; Gaussians grouped by w),
        ``max_pairs`` (point, Gaussian) pairs at a time, and scattered into the grid."""
        device = self.means.device
        lo = lo.to(device, torch.float32)
        size = torch.tensor(shape, device=device)
        c_lo = torch.ceil((self.means - self.extents - lo) / spacing).long().clamp_min(0)
        c_hi = torch.minimum(torch.floor((self.means + self.extents - lo) / spacing).long(), size - 1)
        side = (c_hi - c_lo + 1).max(-1).values
        n_cells = shape[0] * shape[1] * shape[2]
        density = torch.zeros(n_cells, device=device)
        color = torch.zeros(n_cells, 3, device=device) if with_color else None
        for w in torch.unique(side[(c_hi >= c_lo).all(-1)]).tolist():
            gauss = torch.nonzero((side == w) & (c_hi >= c_lo).all(-1)).reshape(-1)
            r = torch.arange(w, device=device)
            window = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
            # a window larger than max_pairs goes in slabs of whole x-planes
            slab = max(1, min(w, max_pairs // (w * w)))
            per_chunk = max(1, max_pairs // (slab * w * w))
            for x0 in range(0, w, slab):
                part = window[x0 * w * w:(x0 + slab) * w * w]
                for start in range(0, gauss.shape[0], per_chunk):
                    self._scatter(gauss[start:start + per_chunk], part, c_lo, c_hi, lo, spacing, shape, density, color)
        density = density.reshape(shape)
        return density, (color.reshape(*shape, 3) if with_color else None)

    def _scatter(self, ids, offsets, c_lo, c_hi, lo, spacing, shape, density, color) -> None:
        cells = c_lo[ids][:, None, :] + offsets[None]  # [K, P, 3]
        valid = (cells <= c_hi[ids][:, None, :]).all(-1)
        d = lo + spacing * cells.float() - self.means[ids][:, None, :]
        q = ((d @ self.precisions[ids]) * d).sum(-1)
        valid &= q <= self.cutoff ** 2
        w = torch.exp(-0.5 * q[valid]) * self.opacities[ids][:, None].expand_as(q)[valid]
        flat = ((cells[..., 0] * shape[1] + cells[..., 1]) * shape[2] + cells[..., 2])[valid]
        density.index_add_(0, flat, w)
        if color is not None:
            color.index_add_(0, flat, w[:, None] * self.colors[ids][:, None, :].expand(-1, cells.shape[1], -1)[valid])


def sample_trilinear(grid: Tensor, lo: Tensor, spacing: float, points: Tensor) -> Tensor:
    """Trilinear interpolation of a grid [X, Y, Z, C] (sample (i, j, k) at ``lo + spacing * (i, j, k)``)
    at ``points`` [P, 3]: [P, C]. Points outside are clamped to the grid's edge."""
    shape = torch.tensor(grid.shape[:3], device=grid.device)
    u = ((points.to(grid.device, torch.float32) - lo.to(grid.device, torch.float32)) / spacing)
    u = torch.minimum(u.clamp_min(0), (shape - 1).float())
    i0 = torch.minimum(u.floor().long(), (shape - 2).clamp_min(0))
    f = u - i0.float()
    out = 0
    for corner in range(8):
        bit = torch.tensor([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1], device=grid.device)
        idx = torch.minimum(i0 + bit, shape - 1)
        weight = torch.where(bit.bool(), f, 1 - f).prod(-1, keepdim=True)
        out = out + weight * grid[idx[:, 0], idx[:, 1], idx[:, 2]]
    return out


def color_at(density: Tensor, color_sum: Tensor, lo: Tensor, spacing: float, points: Tensor) -> Tensor:
    """The field's colour at ``points`` [P, 3] from its grids: interpolated colour sum over interpolated
    density; where no splat reaches, the grid's mean colour."""
    values = sample_trilinear(torch.cat([density[..., None], color_sum], -1), lo, spacing, points)
    fallback = color_sum.reshape(-1, 3).sum(0) / density.sum().clamp_min(1e-12)
    reached = values[:, :1] > 1e-8
    return torch.where(reached, values[:, 1:] / values[:, :1].clamp_min(1e-12), fallback).clamp(0.0, 1.0)
