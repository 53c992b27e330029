"""The live 3D view: the newest checkpoint's Gaussians as a splat PLY, converted once per checkpoint."""
import io
import os

import numpy as np
import torch
from plyfile import PlyData

from threestudio_lucid.app.live_splats import LiveSplats


def checkpoint(path, n, step, seed=0):
    g = torch.Generator().manual_seed(seed)
    state = {
        "geometry._xyz": torch.randn(n, 3, generator=g), "geometry._features_dc": torch.randn(n, 1, 3, generator=g),
        "geometry._features_rest": torch.zeros(n, 15, 3), "geometry._opacity": torch.arange(n, dtype=torch.float32)[:, None],
        "geometry._scaling": torch.randn(n, 3, generator=g), "geometry._rotation": torch.randn(n, 4, generator=g),
        "renderer.bbox": torch.zeros(2, 3),
    }
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"state_dict": state, "global_step": step, "epoch": 0}, path)
    return state


def test_the_newest_checkpoint_becomes_a_splat_ply_once(tmp_path):
    run = tmp_path / "run"
    live = LiveSplats(max_splats=3)
    assert live.get(str(run)) is None  # no checkpoint yet
    state = checkpoint(str(run / "ckpts" / "epoch=0-step=10.ckpt"), 5, 10)
    version, step, body = live.get(str(run))
    assert step == 10 and version.startswith("epoch=0-step=10.ckpt:")
    vertex = PlyData.read(io.BytesIO(body))["vertex"]
    assert len(vertex) == 3  # the three most opaque of five
    assert np.allclose(vertex["opacity"], [2.0, 3.0, 4.0])
    assert np.allclose(vertex["x"], state["geometry._xyz"][2:, 0].numpy())
    assert np.allclose(vertex["f_dc_1"], state["geometry._features_dc"][2:, 0, 1].numpy())
    assert live.get(str(run))[2] is body  # converted once
    # a checkpoint being written cannot be read yet: the last answer stays
    (run / "ckpts" / "epoch=0-step=20.ckpt").write_bytes(b"PK\x03\x04 half written")
    os.utime(run / "ckpts" / "epoch=0-step=20.ckpt", (2e9, 2e9))
    assert live.get(str(run))[2] is body
    checkpoint(str(run / "ckpts" / "epoch=0-step=20.ckpt"), 2, 20)
    os.utime(run / "ckpts" / "epoch=0-step=20.ckpt", (2e9, 2e9))
    assert live.get(str(run))[1] == 20
