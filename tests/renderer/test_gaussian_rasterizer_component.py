"""lucid-gaussian-rasterizer: batch loop, background compositing, densification outputs, backends."""
import pytest
import torch

from rasterizer_scenes import batch, make_renderer
from threestudio_lucid.compat import find
from threestudio_lucid.errors import ConfigError
from threestudio_lucid.renderer.camera import camera_from_threestudio
from threestudio_lucid.renderer.gaussian_rasterizer import GaussianRasterizer
from threestudio_lucid.renderer.reference import rasterize_reference


def test_registered_name_finds_the_renderer():
    assert find("lucid-gaussian-rasterizer") is GaussianRasterizer


def test_outputs_have_threestudio_keys_and_shapes_and_composite_the_background():
    renderer, geometry = make_renderer()
    b = batch()
    out = renderer(**b)
    assert out["comp_rgb"].shape == (2, 20, 28, 3)
    assert out["comp_depth"].shape == (2, 20, 28, 1) and out["comp_mask"].shape == (2, 20, 28, 1)
    n = geometry.get_xyz.shape[0]
    for key in ("viewspace_points", "visibility_filter", "radii"):
        assert isinstance(out[key], list) and len(out[key]) == 2
    assert all(p.shape == (n, 3) and p.is_leaf and p.requires_grad for p in out["viewspace_points"])
    assert all(v.dtype == torch.bool and v.shape == (n,) for v in out["visibility_filter"])
    assert all(r.shape == (n,) and not r.is_floating_point() for r in out["radii"])

    bg = torch.tensor([0.2, 0.4, 0.6])
    empty = out["comp_mask"][..., 0] == 0
    assert empty.any() and (~empty).any()
    assert torch.allclose(out["comp_rgb"][empty], bg.expand(int(empty.sum()), 3))

    # each view is the reference rasterization composited over the background
    for i in range(2):
        camera = camera_from_threestudio(b["c2w"][i], b["fovy"][i], 20, 28)
        ref = rasterize_reference(
            geometry.get_xyz, geometry.get_rotation, geometry.get_scaling, geometry.get_opacity[:, 0], camera,
            features=geometry.get_features, sh_degree=1, background=bg,
        )
        assert torch.allclose(out["comp_rgb"][i], ref["rgb"], atol=1e-6)
        assert torch.allclose(out["comp_mask"][i], ref["alpha"], atol=1e-6)
        assert torch.allclose(out["comp_depth"][i], ref["depth"], atol=1e-6)
        assert torch.equal(out["radii"][i], ref["radii"])


def test_backward_reaches_the_geometry_and_the_viewspace_points():
    renderer, geometry = make_renderer()
    out = renderer.batch_forward(batch())
    (out["comp_rgb"].sum() + out["comp_depth"].sum()).backward()
    for p in geometry.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    for points, visible in zip(out["viewspace_points"], out["visibility_filter"]):
        assert points.grad.shape == points.shape
        assert torch.all(points.grad[~visible] == 0) and points.grad[visible, :2].abs().sum() > 0
        assert torch.all(points.grad[:, 2] == 0)


def test_bg_inversion_only_in_training():
    renderer, _ = make_renderer(bg_inversion_prob=1.0)
    b = batch(azimuths=(0.0,))
    renderer.train()
    trained = renderer(**b)
    renderer.eval()
    evaluated = renderer(**b)
    empty = evaluated["comp_mask"][..., 0] == 0
    assert torch.allclose(trained["comp_rgb"][empty], torch.tensor([0.8, 0.6, 0.4]).expand(int(empty.sum()), 3))
    assert torch.allclose(evaluated["comp_rgb"][empty], torch.tensor([0.2, 0.4, 0.6]).expand(int(empty.sum()), 3))


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"known backends: .*reference"):
        make_renderer(backend="no-such-backend")


def test_unknown_config_key_is_rejected():
    with pytest.raises(TypeError):
        make_renderer(invert_bg_prob=1.0)
