"""The running job's splats for the live 3D view, from the newest checkpoint it wrote.

Training is not touched: the launcher already writes ``ckpts/*.ckpt`` every
``checkpoint.every_n_train_steps``; the app reads the Gaussians (``geometry._xyz``, ``_features_dc``,
``_opacity``, ``_scaling``, ``_rotation`` of the state dict; memory-mapped, ``weights_only``) when the
page asks for a checkpoint it has not seen, and answers with an INRIA-layout PLY (degree-0 colour
only, the brightest ``max_splats`` when there are more), the same format as ``save/point_cloud.ply``,
so the page's one PLY reader shows both. One conversion per checkpoint, cached.
"""
import io
import os
import threading
from typing import Optional, Tuple

import numpy as np

from . import run_reader

GEOMETRY = ("_xyz", "_features_dc", "_opacity", "_scaling", "_rotation")


def newest_checkpoint(trial_dir: str) -> Optional[str]:
    """The most recently written step checkpoint (``last.ckpt`` only when it is the only one)."""
    ckpts = run_reader.checkpoints(trial_dir)
    named = [c for c in ckpts if not os.path.basename(c).startswith("last")]
    return (named or ckpts or [None])[0]


def gaussians_of(path: str):
    """``{name: np.ndarray}`` of the geometry's parameters in a Lightning checkpoint."""
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    state = ckpt["state_dict"]
    out = {}
    for name in GEOMETRY:
        key = next((k for k in state if k.endswith("geometry." + name)), None)
        if key is None:
            raise KeyError(f"{os.path.basename(path)} holds no geometry.{name}")
        out[name] = state[key].detach().to(torch.float32).numpy()
    return out, ckpt.get("global_step")


def ply_bytes(params, max_splats: int) -> bytes:
    from plyfile import PlyData, PlyElement

    xyz = params["_xyz"].reshape(-1, 3)
    n = xyz.shape[0]
    dc = params["_features_dc"].reshape(n, -1)[:, :3]
    opacity = params["_opacity"].reshape(n, 1)
    scaling = params["_scaling"].reshape(n, 3)
    rotation = params["_rotation"].reshape(n, 4)
    keep = np.arange(n)
    if n > max_splats:
        keep = np.sort(np.argsort(-opacity[:, 0])[:max_splats])
    names = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
             "rot_0", "rot_1", "rot_2", "rot_3"]
    columns = np.concatenate([xyz, dc, opacity, scaling, rotation], axis=1)[keep].astype(np.float32)
    vertex = np.empty(len(keep), dtype=[(name, "f4") for name in names])
    for i, name in enumerate(names):
        vertex[name] = columns[:, i]
    buffer = io.BytesIO()
    PlyData([PlyElement.describe(vertex, "vertex")], byte_order="<").write(buffer)
    return buffer.getvalue()


class LiveSplats:
    """Per run folder, the PLY of its newest checkpoint, converted once."""

    def __init__(self, max_splats: int = 200_000):
        self.max_splats = max_splats
        self._cache = {}
        self._lock = threading.Lock()

    @staticmethod
    def version(trial_dir: str) -> Optional[str]:
        """A tag that changes with each new checkpoint (the page fetches only then)."""
        path = newest_checkpoint(trial_dir)
        if path is None:
            return None
        try:
            stat = os.stat(path)
        except OSError:
            return None
        return f"{os.path.basename(path)}:{int(stat.st_mtime_ns)}:{stat.st_size}"

    def get(self, trial_dir: str) -> Optional[Tuple[str, Optional[int], bytes]]:
        """``(version, step, ply)`` of the newest readable checkpoint, or None when there is none.
        A checkpoint being written right now cannot be read: the previous answer is kept."""
        version = self.version(trial_dir)
        if version is None:
            return None
        with self._lock:
            cached = self._cache.get(trial_dir)
            if cached and cached[0] == version:
                return cached
            try:
                params, step = gaussians_of(newest_checkpoint(trial_dir))
                answer = (version, step, ply_bytes(params, self.max_splats))
            except Exception:
                return cached
            self._cache[trial_dir] = answer
            return answer
