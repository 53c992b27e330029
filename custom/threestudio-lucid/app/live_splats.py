"""The running job's splats for the live 3D view: the live PLY the run writes as it trains, or its
newest checkpoint, whichever is newer.

- ``save/live/<ply_name>``: the plugin's system writes the current Gaussians there every
  ``system.live_ply_every_n_steps`` steps, atomically (``system/live_splats.py``; the app starts its runs
  with it on, one snapshot every 2 s at most). A file opened there is always a complete PLY; its step
  is in ``<ply_name>.json`` beside it (:func:`live_step`), when that sidecar describes the very file
  opened (an older run has none; the caption then omits the step);
- ``ckpts/*.ckpt``: what every run has (a run started without the live PLY, e.g. from the command line):
  the Gaussians of the state dict (``geometry._xyz``, ``_features_dc``, ``_opacity``, ``_scaling``,
  ``_rotation``; memory-mapped, ``weights_only``), one every ``checkpoint.every_n_train_steps``.

Either is read only when the page asks for a version it has not seen, and answered as an INRIA-layout
PLY (degree-0 colour only, the most opaque ``max_splats`` when there are more), the same format as
``save/point_cloud.ply``, so the page's one PLY reader shows all three. One conversion per version,
cached. Both files are looked up under the app's ``--outputs`` only (``access.py``: a link out of it
is not followed).
"""
import io
import json
import os
import threading
from typing import Optional, Tuple

import numpy as np

from . import access, run_reader

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


def ply_gaussians(data: bytes):
    """``{name: np.ndarray}`` of an INRIA-layout PLY (``save_ply``'s), as :func:`gaussians_of` gives them."""
    from plyfile import PlyData

    vertex = PlyData.read(io.BytesIO(data))["vertex"].data

    def column(*names):
        return np.stack([np.asarray(vertex[n], dtype=np.float32) for n in names], axis=1)

    return {
        "_xyz": column("x", "y", "z"),
        "_features_dc": column("f_dc_0", "f_dc_1", "f_dc_2"),
        "_opacity": column("opacity"),
        "_scaling": column("scale_0", "scale_1", "scale_2"),
        "_rotation": column("rot_0", "rot_1", "rot_2", "rot_3"),
    }


def live_ply_name(trial_dir: str) -> str:
    """The run's ``system.ply_name`` (its parsed.yaml), when it is a plain file name."""
    name = (run_reader.parsed_config(trial_dir).get("system") or {}).get("ply_name")
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
        return "point_cloud.ply"
    return name


def live_step(sidecar: Optional[str], ply_stat: os.stat_result) -> Optional[int]:
    """The step in the live PLY's sidecar (``{"step", "time", "file", "ply_mtime_ns", "ply_size",
    "ply_inode"}``, written by ``system/live_splats.py`` after the PLY), when it describes the PLY whose
    ``os.fstat`` is ``ply_stat``; None when the sidecar is missing, unreadable, or of another snapshot
    (read between the writer's two renames)."""
    if sidecar is None:
        return None
    try:
        with open(sidecar, "rb") as f:
            record = json.loads(f.read(4096))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    step = record.get("step")
    same = (record.get("ply_mtime_ns"), record.get("ply_size"), record.get("ply_inode")) == (
        ply_stat.st_mtime_ns, ply_stat.st_size, ply_stat.st_ino)
    if not same or isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return None
    return step


class LiveSplats:
    """Per run folder, the PLY of its newest live snapshot or checkpoint, converted once. ``root``: the
    folder the files must be in (the app's ``--outputs``; None: anywhere)."""

    def __init__(self, max_splats: int = 200_000, root: Optional[str] = None):
        self.max_splats = max_splats
        self.root = root
        self._cache = {}
        self._lock = threading.Lock()

    def _allowed(self, path: Optional[str]) -> Optional[str]:
        if path is None or self.root is None:
            return path
        rel = access.relative_inside(self.root, path)
        return access.resolve_under(self.root, rel) if rel else None

    def newest(self, trial_dir: str) -> Optional[Tuple[str, str, os.stat_result]]:
        """``(kind, path, stat)`` of the newer of the live PLY (kind ``live``) and the newest
        checkpoint (``checkpoint``), or None when there is neither."""
        found = []
        for kind, path in (("live", os.path.join(trial_dir, "save", "live", live_ply_name(trial_dir))),
                           ("checkpoint", newest_checkpoint(trial_dir))):
            path = self._allowed(path)
            if path is None:
                continue
            try:
                found.append((os.stat(path), kind, path))
            except OSError:
                continue
        if not found:
            return None
        stat, kind, path = max(found, key=lambda f: f[0].st_mtime_ns)
        return kind, path, stat

    @staticmethod
    def _tag(kind: str, path: str, stat: os.stat_result) -> str:
        return f"{kind}:{os.path.basename(path)}:{int(stat.st_mtime_ns)}:{stat.st_size}"

    def version(self, trial_dir: str) -> Optional[str]:
        """A tag that changes with each new snapshot or checkpoint (the page fetches only then)."""
        newest = self.newest(trial_dir)
        return self._tag(*newest) if newest else None

    def get(self, trial_dir: str) -> Optional[Tuple[str, Optional[int], bytes]]:
        """``(version, step, ply)`` of the newest readable source (``step``: the checkpoint's, or the
        live snapshot's from its sidecar, None when that is not known), or None when there is none. A
        checkpoint being written right now cannot be read: the previous answer is kept. (The live PLY
        is replaced by a rename: an open file is always whole, and its version and step are taken
        from the file that was opened.)"""
        newest = self.newest(trial_dir)
        if newest is None:
            return None
        version = self._tag(*newest)
        kind, path, _stat = newest
        sidecar = self._allowed(path + ".json") if kind == "live" else None
        with self._lock:
            cached = self._cache.get(trial_dir)
            if cached and cached[0] == version:
                if kind == "live" and cached[1] is None:  # the sidecar may have come since (its rename is second)
                    step = live_step(sidecar, cached[3])
                    if step is not None:
                        cached = self._cache[trial_dir] = (cached[0], step, cached[2], cached[3])
                return cached[:3]
            try:
                if kind == "live":
                    with open(path, "rb") as f:
                        stat = os.fstat(f.fileno())
                        version = self._tag(kind, path, stat)
                        data = f.read()
                    params, step = ply_gaussians(data), live_step(sidecar, stat)
                else:
                    stat = None
                    params, step = gaussians_of(path)
                answer = (version, step, ply_bytes(params, self.max_splats), stat)
            except Exception:
                return cached[:3] if cached else None
            self._cache[trial_dir] = answer
            return answer[:3]
