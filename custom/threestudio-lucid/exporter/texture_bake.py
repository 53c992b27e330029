"""Bake the splats' colour into a UV texture: xatlas charts the mesh, every texel a triangle covers
takes the field's colour at its 3D point, and the texels between charts take the colour of the
nearest covered texel (so filtering and mip-maps do not bleed the background into the seams)."""
import numpy as np
import torch


def texel_points(uv: np.ndarray, faces: np.ndarray, vertices: np.ndarray, size: int):
    """The texels whose centres lie in a triangle of the UV layout: ``(rows, cols, points [T, 3])``,
    each point interpolated from its triangle's corners. UV (0, 0) is the image's bottom-left."""
    tri_uv = torch.as_tensor(uv[faces], dtype=torch.float64)  # [F, 3, 2]
    px = tri_uv[..., 0] * size - 0.5  # texel-centre coordinates: centre of texel c at c
    py = (1.0 - tri_uv[..., 1]) * size - 0.5
    x0 = px.min(1).values.ceil().clamp(0, size - 1).long()
    x1 = px.max(1).values.floor().clamp(0, size - 1).long()
    y0 = py.min(1).values.ceil().clamp(0, size - 1).long()
    y1 = py.max(1).values.floor().clamp(0, size - 1).long()
    w = (x1 - x0 + 1).clamp_min(0)
    h = (y1 - y0 + 1).clamp_min(0)
    face = torch.repeat_interleave(torch.arange(len(faces)), w * h)
    k = torch.arange(face.shape[0]) - (torch.cumsum(w * h, 0) - w * h)[face]
    col = x0[face] + k % w[face]
    row = y0[face] + k // w[face]
    # barycentric coordinates of each texel centre in its triangle
    ax, ay = px[face, 0], py[face, 0]
    e1x, e1y = px[face, 1] - ax, py[face, 1] - ay
    e2x, e2y = px[face, 2] - ax, py[face, 2] - ay
    det = e1x * e2y - e2x * e1y
    ok = det.abs() > 1e-12
    dx, dy = col.double() - ax, row.double() - ay
    b1 = torch.where(ok, (dx * e2y - e2x * dy) / det, -torch.ones_like(det))
    b2 = torch.where(ok, (e1x * dy - dx * e1y) / det, -torch.ones_like(det))
    inside = (b1 >= -1e-9) & (b2 >= -1e-9) & (b1 + b2 <= 1 + 1e-9)
    face, row, col, b1, b2 = face[inside], row[inside], col[inside], b1[inside], b2[inside]
    corners = torch.as_tensor(vertices[faces], dtype=torch.float64)[face]  # [T, 3, 3]
    points = (1 - b1 - b2)[:, None] * corners[:, 0] + b1[:, None] * corners[:, 1] + b2[:, None] * corners[:, 2]
    return row.numpy(), col.numpy(), points.float()


def bake_texture(mesh, colors_of, size: int):
    """A copy of ``mesh`` re-indexed by xatlas's charts, with a ``size`` x ``size`` texture of
    ``colors_of(points [P, 3]) -> rgb [P, 3]`` in [0, 1] (``trimesh.visual.TextureVisuals``)."""
    try:
        import xatlas
    except ImportError as err:
        raise ImportError(
            "system.exporter.texture=true needs the 'xatlas' package (`pip install xatlas`), "
            "or set system.exporter.texture=false for vertex colours only."
        ) from err
    import trimesh
    from PIL import Image
    from scipy.ndimage import distance_transform_edt

    vmapping, faces, uv = xatlas.parametrize(np.asarray(mesh.vertices, dtype=np.float32),
                                             np.asarray(mesh.faces, dtype=np.uint32))
    vertices = np.asarray(mesh.vertices)[vmapping]
    rows, cols, points = texel_points(uv, faces.astype(np.int64), vertices, size)
    image = np.zeros((size, size, 3), dtype=np.float32)
    covered = np.zeros((size, size), dtype=bool)
    image[rows, cols] = colors_of(points.numpy())
    covered[rows, cols] = True
    if covered.any() and not covered.all():
        _, (near_r, near_c) = distance_transform_edt(~covered, return_indices=True)
        image = image[near_r, near_c]
    texture = Image.fromarray(np.round(image * 255).astype(np.uint8))
    material = trimesh.visual.material.SimpleMaterial(image=texture)
    baked = trimesh.Trimesh(vertices=vertices, faces=faces, process=False)
    baked.visual = trimesh.visual.TextureVisuals(uv=uv, image=texture, material=material)
    baked.metadata["vertex_colors"] = np.asarray(mesh.visual.vertex_colors)[vmapping]
    return baked
