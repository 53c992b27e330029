"""Numbers that must never be lost or silently wrong, at the component level: densification statistics
travel with the checkpoint, no PLY is written or read with NaN/inf, NaN guidance gradients are counted,
and the camera stream of the data modules is checkpointed."""
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "geometry"))
from gaussian_factories import random_gaussians  # noqa: E402

from threestudio_lucid.errors import ConfigError, NonFiniteError  # noqa: E402
from threestudio_lucid.geometry import GaussianSplatting  # noqa: E402

SMALL = {"init_num_pts": 64, "init_type": "ball", "init_radius": 0.5,
         "densify_from_iter": 0, "densify_until_iter": 1000, "densification_interval": 100}


def make(**overrides):
    torch.manual_seed(0)
    return GaussianSplatting({**SMALL, **overrides})


def accumulate(geometry, step, seed):
    g = torch.Generator().manual_seed(seed)
    n = geometry.num_points
    grad = torch.rand(n, 3, generator=g)
    vis = torch.rand(n, generator=g) > 0.3
    radii = (torch.rand(n, generator=g) * 20).int()
    screen = torch.zeros(n, 3, requires_grad=True)
    screen.grad = grad
    geometry.update_states(step, [vis], [radii], [screen])


def test_densification_statistics_are_in_the_checkpoint_and_come_back():
    src = make()
    src.set_gaussians(random_gaussians(97, seed=1))
    for step in (1, 2, 3):
        accumulate(src, step, seed=step)
    stats = src.densifier.stats
    assert stats.denom.sum() > 0 and stats.grad_accum.sum() > 0 and stats.max_radii2D.max() > 0
    state = src.state_dict()

    dst = make()
    dst.load_state_dict(state)
    for name in ("grad_accum", "denom", "max_radii2D"):
        torch.testing.assert_close(getattr(dst.densifier.stats, name), getattr(stats, name), rtol=0, atol=0)
    assert dst._last_states_step == 3
    # a checkpoint written before the statistics were saved still loads (statistics start at zero)
    old = {k: v for k, v in state.items() if k != "_extra_state"}
    legacy = make()
    legacy.load_state_dict(old)
    assert legacy.num_points == 97 and legacy.densifier.stats.denom.sum() == 0


def test_no_ply_is_written_with_non_finite_values(tmp_path):
    g = make()
    with torch.no_grad():
        g._scaling[3, 1] = float("nan")
        g._xyz[5, 0] = float("inf")
    path = tmp_path / "point_cloud.ply"
    with pytest.raises(NonFiniteError, match=r"refusing to write .*point_cloud.ply.*2 of 64 Gaussians.*scale_1.*x"):
        g.save_ply(str(path))
    assert not path.exists()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_gaussian_ply_with_non_finite_values_cannot_initialise_a_run(tmp_path, bad):
    params = random_gaussians(20, seed=2)
    params["opacity"][4, 0] = bad
    path = str(tmp_path / "diverged.ply")
    _write_unchecked(path, params)
    with pytest.raises(ConfigError, match=r"diverged.ply' has non-finite values \(NaN or inf\) in opacity at 1 vertices"):
        make(init_type="ply", init_ply_path=path)


def test_a_point_cloud_ply_with_nan_cannot_initialise_a_run(tmp_path):
    from plyfile import PlyData, PlyElement

    points = np.zeros(5, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    points["y"][2] = np.nan
    path = str(tmp_path / "cloud.ply")
    PlyData([PlyElement.describe(points, "vertex")]).write(path)
    with pytest.raises(ConfigError, match=r"cloud.ply' has non-finite values \(NaN or inf\) in y at 1 vertices"):
        make(init_type="ply", init_ply_path=path, init_num_pts=5)


def _write_unchecked(path, params):
    """A PLY as a diverged run of another tool would write it (plyfile directly, no checks)."""
    from plyfile import PlyData, PlyElement

    from threestudio_lucid.geometry.ply_io import gaussian_ply_property_names

    n = params["xyz"].shape[0]
    cols = [params["xyz"], torch.zeros(n, 3), params["f_dc"].reshape(n, 3), params["f_rest"].reshape(n, -1),
            params["opacity"].reshape(n, 1), params["scaling"], params["rotation"]]
    data = torch.cat([c.float() for c in cols], dim=1).numpy()
    names = gaussian_ply_property_names(params["f_rest"].shape[1])
    vertices = np.empty(n, dtype=[(name, "f4") for name in names])
    for i, name in enumerate(names):
        vertices[name] = data[:, i]
    PlyData([PlyElement.describe(vertices, "vertex")]).write(path)
