"""PLY in and out for Gaussian splats, in the layout of the INRIA 3DGS code (read by common splat viewers).

One ``vertex`` element, every property float32, in this order:
``x y z nx ny nz f_dc_0..2 f_rest_0..(3(K-1)-1) opacity scale_0..2 rot_0..3`` where K = (degree+1)^2.
Values are the raw, pre-activation parameters: opacity is a logit, scales are logs, the rotation is the
unnormalised quaternion (w, x, y, z). Normals are zeros. The SH coefficients are written channel-major:
``features_rest [N, K-1, 3]`` is transposed to ``[N, 3, K-1]`` and flattened, so f_rest_0..K-2 are the red
coefficients, then green, then blue (``f_dc`` likewise, with one coefficient per channel).

Plain point clouds (``x y z`` with optional ``red green blue``) are read by :func:`read_point_cloud_ply`
for the ``ply`` initialiser.
"""
import io
import math
import os

import numpy as np
import torch

from ..atomic_files import write_bytes
from ..errors import ConfigError, NonFiniteError

BASE_PROPERTIES = ("x", "y", "z", "nx", "ny", "nz")
GAUSSIAN_REQUIRED = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                     "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")


def gaussian_ply_property_names(num_rest_coeffs: int):
    """Property names in file order for ``num_rest_coeffs`` = K - 1 higher-order SH coefficients per channel."""
    names = list(BASE_PROPERTIES)
    names += [f"f_dc_{i}" for i in range(3)]
    names += [f"f_rest_{i}" for i in range(3 * num_rest_coeffs)]
    names.append("opacity")
    names += [f"scale_{i}" for i in range(3)]
    names += [f"rot_{i}" for i in range(4)]
    return names


def _np32(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


def write_gaussian_ply(path: str, xyz, features_dc, features_rest, opacity, scaling, rotation) -> str:
    """Write raw Gaussian parameters (shapes [N,3], [N,1,3], [N,K-1,3], [N,1], [N,3], [N,4]) to ``path``.

    The file is made in memory and written atomically: a kill leaves the previous PLY or none, a full
    disk raises ``StorageError``."""
    from plyfile import PlyData, PlyElement

    xyz = _np32(xyz).reshape(-1, 3)
    n = xyz.shape[0]
    f_dc = _np32(features_dc).reshape(n, -1, 3)
    f_rest = _np32(features_rest).reshape(n, -1, 3)
    columns = [
        xyz,
        np.zeros((n, 3), dtype=np.float32),
        f_dc.transpose(0, 2, 1).reshape(n, -1),
        f_rest.transpose(0, 2, 1).reshape(n, -1),
        _np32(opacity).reshape(n, 1),
        _np32(scaling).reshape(n, 3),
        _np32(rotation).reshape(n, 4),
    ]
    data = np.concatenate(columns, axis=1)
    names = gaussian_ply_property_names(f_rest.shape[1])
    bad = ~np.isfinite(data)
    if bad.any():  # a diverged run: never hand NaN/inf to a viewer or the next run
        columns_bad = sorted({names[j] for j in np.nonzero(bad.any(axis=0))[0]})
        raise NonFiniteError(
            f"refusing to write '{path}': {int(bad.any(axis=1).sum())} of {n} Gaussians have non-finite values "
            f"({', '.join(columns_bad[:6])}{', ...' if len(columns_bad) > 6 else ''})"
        )
    assert data.shape[1] == len(names)
    vertices = np.empty(n, dtype=[(name, "f4") for name in names])
    for i, name in enumerate(names):
        vertices[name] = data[:, i]
    buffer = io.BytesIO()
    PlyData([PlyElement.describe(vertices, "vertex")]).write(buffer)
    write_bytes(path, buffer.getbuffer())
    return path


def _read_vertices(path: str):
    from plyfile import PlyData

    if not path or not os.path.isfile(path):
        raise ConfigError(f"PLY file '{path}' not found: give the path of an existing .ply file")
    try:
        ply = PlyData.read(path)
        vertex = ply["vertex"]
    except KeyError:
        raise ConfigError(f"PLY file '{path}' has no 'vertex' element: give a point-cloud or 3DGS .ply") from None
    except Exception as e:  # plyfile raises several exception types for malformed files
        raise ConfigError(f"PLY file '{path}' could not be read ({type(e).__name__}: {e}): give a valid .ply") from None
    names = [p.name for p in vertex.properties]
    return vertex, names


def _check_finite(path: str, vertex, names) -> None:
    """A PLY with NaN/inf (e.g. from a diverged run) must not seed a run: name the file and the columns."""
    bad = [n for n in names if not np.isfinite(np.asarray(vertex[n], dtype=np.float64)).all()]
    if bad:
        count = int(np.logical_or.reduce([~np.isfinite(np.asarray(vertex[n], dtype=np.float64)) for n in bad]).sum())
        raise ConfigError(
            f"PLY file '{path}' has non-finite values (NaN or inf) in {', '.join(bad[:6])}"
            f"{', ...' if len(bad) > 6 else ''} at {count} vertices: it cannot initialise Gaussians; "
            "use a PLY from a run that did not diverge, or remove those vertices"
        )


def is_gaussian_ply(path: str) -> bool:
    """True when ``path`` holds 3DGS Gaussians (it has f_dc, opacity, scale and rot properties)."""
    _, names = _read_vertices(path)
    return all(n in names for n in GAUSSIAN_REQUIRED)


def _indexed(names, prefix):
    found = [n for n in names if n.startswith(prefix) and n[len(prefix):].isdigit()]
    return sorted(found, key=lambda n: int(n[len(prefix):]))


def read_gaussian_ply(path: str):
    """Read a 3DGS PLY. Returns float32 numpy arrays ``xyz [N,3]``, ``features_dc [N,1,3]``,
    ``features_rest [N,K-1,3]``, ``opacity [N,1]``, ``scaling [N,3]``, ``rotation [N,4]`` and the file's
    ``sh_degree``."""
    vertex, names = _read_vertices(path)
    missing = [n for n in GAUSSIAN_REQUIRED if n not in names]
    if missing:
        raise ConfigError(
            f"PLY file '{path}' is not a 3DGS Gaussian PLY (missing {', '.join(missing)}): "
            "export it with the 3DGS layout, or use it as a point cloud (init_type: ply reads x,y,z[,red,green,blue])"
        )

    def col(name):
        return np.asarray(vertex[name], dtype=np.float32)

    def stack(cols):
        return np.stack([col(c) for c in cols], axis=1) if cols else None

    n = len(col("x"))
    if n == 0:
        raise ConfigError(f"PLY file '{path}' has no vertices (0 Gaussians): give a PLY with at least one Gaussian "
                          "(system.geometry.init_ply_path, e.g. a run's save/point_cloud.ply), or another init_type")
    rest_names = _indexed(names, "f_rest_")
    if len(rest_names) % 3 != 0 or [int(r[7:]) for r in rest_names] != list(range(len(rest_names))):
        raise ConfigError(f"PLY file '{path}' has {len(rest_names)} f_rest_* properties: expected 3*((d+1)^2-1) "
                          "consecutive ones (d = 0..3)")
    k_rest = len(rest_names) // 3
    degree = round(math.sqrt(k_rest + 1)) - 1
    if (degree + 1) ** 2 != k_rest + 1:
        raise ConfigError(f"PLY file '{path}' has {k_rest} SH coefficients per channel beyond DC, which is not "
                          "(d+1)^2-1 for any degree d")
    f_rest = stack(rest_names) if rest_names else np.zeros((n, 0), dtype=np.float32)
    _check_finite(path, vertex, ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"] + rest_names
                  + _indexed(names, "scale_") + _indexed(names, "rot_"))
    return {
        "xyz": stack(["x", "y", "z"]),
        "features_dc": stack(["f_dc_0", "f_dc_1", "f_dc_2"]).reshape(n, 3, 1).transpose(0, 2, 1).copy(),
        "features_rest": f_rest.reshape(n, 3, k_rest).transpose(0, 2, 1).copy(),
        "opacity": col("opacity").reshape(n, 1),
        "scaling": stack(_indexed(names, "scale_")),
        "rotation": stack(_indexed(names, "rot_")),
        "sh_degree": degree,
    }


def read_point_cloud_ply(path: str):
    """Read ``x y z`` and, when present, ``red green blue`` (uint8 -> /255, floats as they are).

    Returns ``(points [N,3] float32 tensor, colors [N,3] float32 tensor or None)``.
    """
    vertex, names = _read_vertices(path)
    if not all(c in names for c in ("x", "y", "z")):
        raise ConfigError(f"PLY file '{path}' has no x, y, z vertex properties: give a point cloud")
    _check_finite(path, vertex, ["x", "y", "z"])
    pts = np.stack([np.asarray(vertex[c], dtype=np.float64) for c in ("x", "y", "z")], axis=1)
    colors = None
    if all(c in names for c in ("red", "green", "blue")):
        raw = [np.asarray(vertex[c]) for c in ("red", "green", "blue")]
        rgb = np.stack(raw, axis=1).astype(np.float64)
        if np.issubdtype(raw[0].dtype, np.integer):
            rgb = rgb / float(np.iinfo(raw[0].dtype).max)
        colors = torch.from_numpy(rgb).float()
    if pts.shape[0] == 0:
        raise ConfigError(f"PLY file '{path}' has no vertices: give a non-empty point cloud "
                          "(system.geometry.init_ply_path), or another init_type")
    return torch.from_numpy(pts).float(), colors
