"""The splats' density and colour field, block by block, against a dense sum over every Gaussian."""
import math

import pytest
import torch

from threestudio_lucid.exporter.splat_field import SplatField, color_at, sample_trilinear
from threestudio_lucid.renderer.reference import quat_scale_to_covariance


def random_field(n=60, seed=0, cutoff=3.0):
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 3, generator=g) * 1.2 - 0.6
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1)
    scales = torch.rand(n, 3, generator=g) * 0.12 + 0.01  # anisotropic, rotated, up to block-straddling
    opacities = torch.rand(n, generator=g) * 0.9 + 0.1
    colors = torch.rand(n, 3, generator=g)
    return SplatField.from_gaussians(means, quats, scales, opacities, colors, cutoff=cutoff)


def dense(field: SplatField, points: torch.Tensor, cutoff: float):
    """sum_i o_i exp(-q_i / 2) over every Gaussian with q_i <= cutoff^2, in float64."""
    cov = quat_scale_to_covariance(field.quats.double(), field.scales.double().clamp_min(field.min_scale))
    d = points.double()[:, None, :] - field.means.double()[None]
    q = torch.einsum("pni,nij,pnj->pn", d, torch.linalg.inv(cov), d)
    w = torch.exp(-0.5 * q) * (q <= cutoff ** 2)
    o = field.opacities.double()
    density = w @ o
    color_sum = w @ (o[:, None] * field.colors.double())
    return density, color_sum / density.clamp_min(1e-300)[:, None]


def grid_points(lo, spacing, shape):
    idx = torch.stack(torch.meshgrid(*(torch.arange(s) for s in shape), indexing="ij"), -1).reshape(-1, 3)
    return lo + spacing * idx.float()


@pytest.mark.parametrize("max_pairs", [1 << 22, 2000])  # whole groups at once; tiny chunks and x-slabs
def test_the_grid_equals_the_dense_sum_within_the_cutoff(max_pairs):
    field = random_field(cutoff=3.0)
    lo, spacing, shape = torch.tensor([-0.8, -0.75, -0.7]), 0.04, (41, 38, 36)
    density, color_sum = field.to_grid(lo, spacing, shape, max_pairs=max_pairs)
    expected, expected_color = dense(field, grid_points(lo, spacing, shape), cutoff=3.0)
    assert density.shape == shape and color_sum.shape == (*shape, 3)
    torch.testing.assert_close(density.reshape(-1).double(), expected, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(color_sum.reshape(-1, 3).double(), expected_color * expected[:, None], atol=2e-5, rtol=1e-4)
    assert float(expected.max()) > 1.0  # the splats overlap: a real test of the sums


def test_a_grid_that_holds_only_part_of_the_splats_gets_their_part():
    field = random_field(seed=4)
    lo, spacing, shape = torch.tensor([0.0, -0.2, 0.1]), 0.03, (12, 9, 14)
    density, _ = field.to_grid(lo, spacing, shape)
    expected, _ = dense(field, grid_points(lo, spacing, shape), cutoff=3.0)
    torch.testing.assert_close(density.reshape(-1).double(), expected, atol=2e-5, rtol=1e-4)


def test_colour_between_grid_points_is_the_interpolated_opacity_weighted_mean():
    field = random_field(seed=1).with_min_scale(0.04)  # splats at least as wide as the grid spacing
    lo, spacing, shape = torch.tensor([-0.8, -0.8, -0.8]), 0.02, (81, 81, 81)
    density, color_sum = field.to_grid(lo, spacing, shape)
    # at grid points the interpolation is exact
    at = lo + spacing * torch.round((field.means[:5] - lo) / spacing)  # grid points near five splats
    exact_density, exact_color = dense(field, at, cutoff=3.0)
    torch.testing.assert_close(color_at(density, color_sum, lo, spacing, at).double(), exact_color, atol=1e-5, rtol=1e-4)
    # between them, close to the exact colour where the splats are dense enough to matter
    g = torch.Generator().manual_seed(2)
    points = field.means[torch.randint(0, field.num_gaussians, (2000,), generator=g)] + 0.05 * torch.randn(2000, 3, generator=g)
    expected_density, expected_color = dense(field, points, cutoff=3.0)
    reached = expected_density > 0.1
    assert reached.float().mean() > 0.5
    error = (color_at(density, color_sum, lo, spacing, points).double() - expected_color)[reached].abs()
    assert float(error.max()) < 0.05 and float(error.mean()) < 0.005


def test_a_point_no_splat_reaches_gets_the_mean_colour():
    field = random_field(seed=3)
    lo, spacing, shape = torch.tensor([-0.8, -0.8, -0.8]), 0.05, (33, 33, 33)
    density, color_sum = field.to_grid(lo, spacing, shape)
    corner = lo[None] + 0.001
    assert float(sample_trilinear(density[..., None], lo, spacing, corner)) == 0.0
    mean = color_sum.reshape(-1, 3).sum(0) / density.sum()
    torch.testing.assert_close(color_at(density, color_sum, lo, spacing, corner)[0], mean)


def test_min_scale_widens_only_the_thin_axes():
    means = torch.zeros(2, 3)
    quats = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0]])
    scales = torch.tensor([[0.1, 0.1, 1e-4], [0.1, 0.1, 0.1]])
    field = SplatField.from_gaussians(means, quats, scales, torch.ones(2), torch.ones(2, 3)).with_min_scale(0.02)
    # extents = cutoff * per-axis std: the thin axis is now 0.02 wide, the rest untouched
    torch.testing.assert_close(field.extents, 3 * torch.tensor([[0.1, 0.1, 0.02], [0.1, 0.1, 0.1]]))
    # the peak stays: a ray through the centre still sees the splat's opacity
    density, _ = field.to_grid(torch.full((3,), -0.05), 0.05, (3, 3, 3))
    assert float(density[1, 1, 1]) == pytest.approx(2.0)


def test_min_opacity_leaves_faint_splats_out_and_an_empty_field_says_so():
    means, quats = torch.zeros(3, 3), torch.tensor([[1.0, 0, 0, 0]]).expand(3, 4)
    field = SplatField.from_gaussians(means, quats, torch.full((3, 3), 0.1), torch.tensor([0.001, 0.2, 0.9]),
                                      torch.ones(3, 3), min_opacity=0.005)
    assert field.num_gaussians == 2
    empty = SplatField.from_gaussians(means, quats, torch.full((3, 3), 0.1), torch.zeros(3), torch.ones(3, 3),
                                      min_opacity=0.005)
    with pytest.raises(ValueError, match="empty"):
        empty.bounds()


def test_density_of_one_gaussian_follows_its_axes():
    """A rotated anisotropic Gaussian: density falls by exp(-1/2) one standard deviation along each of its
    own axes (the quadratic form by monomials is exact, not an approximation)."""
    angle = math.radians(30)
    quat = torch.tensor([[math.cos(angle / 2), 0.0, 0.0, math.sin(angle / 2)]])  # 30 degrees about z
    scales = torch.tensor([[0.2, 0.05, 0.1]])
    field = SplatField.from_gaussians(torch.tensor([[0.3, -0.2, 0.1]]), quat, scales, torch.ones(1), torch.ones(1, 3))
    axes = torch.tensor([[math.cos(angle), math.sin(angle), 0.0], [-math.sin(angle), math.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    for axis in range(3):  # a grid with one point one standard deviation along the axis
        point = torch.tensor([0.3, -0.2, 0.1]) + scales[0, axis] * axes[axis]
        density, _ = field.to_grid(point, 1.0, (1, 1, 1))
        assert float(density) == pytest.approx(math.exp(-0.5), abs=1e-5)
