"""PLY export / import in the INRIA 3DGS layout, and the ply initialiser."""
import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from threestudio_lucid.errors import ConfigError
from threestudio_lucid.geometry import GaussianSplatting
from threestudio_lucid.geometry.ply_io import gaussian_ply_property_names, read_gaussian_ply
from gaussian_factories import random_gaussians


def make(**cfg):
    torch.manual_seed(0)
    return GaussianSplatting({"init_num_pts": 16, **cfg})


def inria_names(sh_degree):
    k = (sh_degree + 1) ** 2 - 1
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(3 * k)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


@pytest.mark.parametrize("sh_degree", [0, 2, 3])
def test_ply_round_trip_is_bit_exact(tmp_path, sh_degree):
    src = make(sh_degree=sh_degree)
    src.set_gaussians(random_gaussians(123, sh_degree))
    path = src.save_ply(str(tmp_path / "sub" / "point_cloud.ply"))
    dst = make(sh_degree=sh_degree)
    assert dst.num_points == 16
    dst.load_ply(path)
    assert dst.num_points == 123
    for name, p in src.gaussian_parameters().items():
        assert torch.equal(dst.gaussian_parameters()[name].detach(), p.detach()), name
    # the loaded parameters are what the optimizer trains
    params = dst.gaussian_parameters()
    assert all(grp["params"][0] is params[grp["name"]] for grp in dst.optimizer.param_groups)


def test_ply_uses_the_inria_layout(tmp_path):
    src = make(sh_degree=1)
    gauss = random_gaussians(7, 1, seed=4)
    src.set_gaussians(gauss)
    path = src.save_ply(str(tmp_path / "g.ply"))
    ply = PlyData.read(path)
    assert [e.name for e in ply.elements] == ["vertex"]
    vertex = ply["vertex"]
    names = [p.name for p in vertex.properties]
    assert names == inria_names(1) == gaussian_ply_property_names(3)
    assert all(vertex[n].dtype == np.float32 for n in names)
    assert not ply.text  # binary, as INRIA writes

    def col(n):
        return torch.from_numpy(np.asarray(vertex[n]).copy())

    assert torch.equal(col("x"), gauss["xyz"][:, 0]) and torch.equal(col("z"), gauss["xyz"][:, 2])
    assert torch.equal(col("nx"), torch.zeros(7))
    for c in range(3):
        assert torch.equal(col(f"f_dc_{c}"), gauss["f_dc"][:, 0, c])
        for j in range(3):  # channel-major: f_rest_{c*(K-1)+j} = features_rest[:, j, c]
            assert torch.equal(col(f"f_rest_{c * 3 + j}"), gauss["f_rest"][:, j, c])
    assert torch.equal(col("opacity"), gauss["opacity"][:, 0])  # raw logit
    assert torch.equal(col("scale_1"), gauss["scaling"][:, 1])  # raw log-scale
    assert torch.equal(col("rot_0"), gauss["rotation"][:, 0])  # raw w, not normalised


def test_ply_init_from_a_gaussian_file(tmp_path):
    src = make()
    src.set_gaussians(random_gaussians(40, 0, seed=5))
    path = src.save_ply(str(tmp_path / "init.ply"))
    g = make(init_type="ply", init_ply_path=path)
    assert g.num_points == 40
    assert torch.equal(g._scaling.detach(), src._scaling.detach())


def test_ply_init_from_a_point_cloud(tmp_path):
    pts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], dtype=np.float32)
    rgb = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [51, 102, 153], [0, 0, 0]], dtype=np.uint8)
    vertices = np.empty(5, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"),
                                  ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    for i, n in enumerate("xyz"):
        vertices[n] = pts[:, i]
    for i, n in enumerate(("red", "green", "blue")):
        vertices[n] = rgb[:, i]
    path = str(tmp_path / "cloud.ply")
    PlyData([PlyElement.describe(vertices, "vertex")], text=True).write(path)

    g = make(init_type="ply", init_ply_path=path, init_use_source_colors=True)
    assert g.num_points == 5 and torch.equal(g._xyz.detach(), torch.from_numpy(pts))
    colour = g._features_dc.detach()[:, 0] * 0.28209479177387814 + 0.5
    assert torch.allclose(colour, torch.from_numpy(rgb.astype(np.float32) / 255), atol=1e-6)
    # mean squared distance to the 3 nearest neighbours of the origin: (1 + 1 + 1) / 3
    assert torch.allclose(g._scaling.detach()[0], torch.zeros(3), atol=1e-6)
    grey = make(init_type="ply", init_ply_path=path)  # default: the configured grey
    assert torch.allclose(grey._features_dc.detach(), torch.zeros(5, 1, 3), atol=1e-7)


def test_lower_sh_degree_file_loads_with_zero_higher_bands(tmp_path):
    src = make(sh_degree=0)
    src.set_gaussians(random_gaussians(9, 0))
    path = src.save_ply(str(tmp_path / "d0.ply"))
    dst = make(sh_degree=2)
    dst.load_ply(path)
    assert dst._features_rest.shape == (9, 8, 3) and torch.equal(dst._features_rest.detach(), torch.zeros(9, 8, 3))
    assert torch.equal(dst._features_dc.detach(), src._features_dc.detach())
    assert read_gaussian_ply(path)["sh_degree"] == 0


def test_missing_and_invalid_files_are_config_errors(tmp_path):
    g = make()
    missing = str(tmp_path / "nope.ply")
    with pytest.raises(ConfigError, match="nope.ply"):
        g.load_ply(missing)
    garbage = tmp_path / "garbage.ply"
    garbage.write_text("this is not a ply file\n")
    with pytest.raises(ConfigError, match="garbage.ply"):
        g.load_ply(str(garbage))
    with pytest.raises(ConfigError, match="garbage.ply"):
        make(init_type="ply", init_ply_path=str(garbage))
    # a point cloud is not a Gaussian PLY
    cloud = np.zeros(3, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    path = str(tmp_path / "cloud.ply")
    PlyData([PlyElement.describe(cloud, "vertex")]).write(path)
    with pytest.raises(ConfigError, match="cloud.ply.*not a 3DGS"):
        g.load_ply(path)


@pytest.mark.parametrize("kind", ["gaussians", "point cloud"])
def test_a_ply_with_no_vertices_is_one_config_error_naming_the_file(tmp_path, kind):
    names = inria_names(0) if kind == "gaussians" else ["x", "y", "z"]
    path = str(tmp_path / "empty.ply")
    PlyData([PlyElement.describe(np.empty(0, dtype=[(n, "f4") for n in names]), "vertex")]).write(path)
    with pytest.raises(ConfigError, match=r"empty\.ply' has no vertices.*init_ply_path") as error:
        make(init_type="ply", init_ply_path=path)
    assert "\n" not in str(error.value)
    if kind == "gaussians":
        with pytest.raises(ConfigError, match=r"empty\.ply' has no vertices \(0 Gaussians\)"):
            make().load_ply(path)
