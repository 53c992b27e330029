"""Run by test_full_disk.py on a small real tmpfs: each writer writes a first version, the disk is then
filled to a few kB, and its second version must end in StorageError with the first version complete and
no temporary left. One line per writer goes to the report: ``name<TAB>message``.

Usage: python full_disk_writers.py DISK REPORT"""
import os
import shutil
import sys

import numpy as np
import torch
import trimesh
from PIL import Image

from threestudio_lucid.atomic_files import is_temporary
from threestudio_lucid.checkpoint_io import AtomicCheckpointIO
from threestudio_lucid.errors import StorageError
from threestudio_lucid.geometry.ply_io import read_gaussian_ply, write_gaussian_ply
from threestudio_lucid.host.models.prompt_processors.stable_diffusion_prompt_processor import _save_embedding
from threestudio_lucid.host.utils.saving import SaverMixin
from threestudio_lucid.system.gaussian_system import GaussianSplattingSystem
from threestudio_lucid.toy_world.evaluate import write_scores


class Saver(SaverMixin):
    def __init__(self, save_dir):
        self.set_save_dir(save_dir)


def fill(disk: str, leave: int) -> None:
    free = shutil.disk_usage(disk).free
    with open(os.path.join(disk, "filler"), "wb") as f:
        f.write(b"\0" * max(free - leave, 0))


def splats(value, n=2000):
    return dict(xyz=torch.full((n, 3), value), features_dc=torch.zeros(n, 1, 3), features_rest=torch.zeros(n, 0, 3),
                opacity=torch.zeros(n, 1), scaling=torch.zeros(n, 3), rotation=torch.zeros(n, 4))


def box(scale, rgb):
    mesh = trimesh.creation.box(extents=(scale, scale, scale))
    uv = np.random.default_rng(0).random((len(mesh.vertices), 2))
    mesh.visual = trimesh.visual.TextureVisuals(uv=uv, image=Image.new("RGB", (64, 64), rgb))
    return mesh


def frames(saver, value):
    rng = np.random.default_rng(int(value))
    for i in range(20):
        saver.save_image(f"it2-test/{i}.png", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))


def main(disk: str, report: str) -> int:
    root = os.path.join(disk, "run")
    saver = Saver(os.path.join(root, "save"))
    ckpt = os.path.join(root, "ckpts", "last.ckpt")
    ply = os.path.join(root, "save", "point_cloud.ply")
    scores = os.path.join(root, "save", "toy_world_scores.json")
    cache = os.path.join(root, "cache", "entry.pt")

    def mp4(value):
        if value == 1.0:  # the frames once: the second video is made from the same frames
            frames(saver, 1)
        saver.save_img_sequence("it2-test", "it2-test", r"(\d+)\.png", save_format="mp4", fps=int(10 * value))

    cases = [
        ("checkpoint", lambda v: AtomicCheckpointIO().save_checkpoint({"v": v, "w": torch.full((50_000,), v)}, ckpt),
         lambda: torch.load(ckpt)["v"] == 1.0, 1000),
        ("ply", lambda v: write_gaussian_ply(ply, **splats(v)), lambda: read_gaussian_ply(ply)["xyz"].max() == 1.0, 1000),
        ("export", lambda v: GaussianSplattingSystem.save_trimesh(saver, "it2-export/model", box(v, (0, 0, int(v * 100))),
                                                                  ["obj", "glb"]),
         lambda: trimesh.load(os.path.join(root, "save", "it2-export", "model.glb"), force="mesh").extents[0] == 1.0, 100),
        ("mp4", mp4, lambda: os.path.getsize(os.path.join(root, "save", "it2-test.mp4")) > 0, 4096),
        ("scores", lambda v: write_scores({"psnr": v}, scores), lambda: '"psnr": 1.0' in open(scores).read(), 0),
        ("cache", lambda v: _save_embedding(torch.full((77, 768), v), cache), lambda: torch.load(cache).max() == 1.0, 1000),
    ]
    lines = []
    for name, write, first_is_kept, leave in cases:
        write(1.0)
        fill(disk, leave)
        try:
            write(2.0)
        except StorageError as e:
            lines.append(f"{name}\t{e}")
        else:
            lines.append(f"{name}\tno StorageError")
        os.remove(os.path.join(disk, "filler"))
        assert first_is_kept(), name
        for folder, _, files in os.walk(root):
            assert not [f for f in files if is_temporary(f)], (name, folder, files)
    with open(report, "w") as f:
        f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
