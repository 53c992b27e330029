"""kill -9 in the middle of a write leaves the previous complete file or the new one, never a partial one.

A writer process saves, over and over, alternating two distinct versions: a large checkpoint through the
CheckpointIO the system installs, the splats' PLY, and a textured mesh export (texture png, mtl, obj,
glb) through the system's own writer. It is killed with SIGKILL after a random delay, many times, and as
many times while it waits just before one of its renames (so that kills land mid-write however fast the
disk is: a fast one finishes most writes before a random kill); after each kill every file is absent
(nothing written yet) or loads completely and equals one of the two versions. Temporaries a killed writer
leaves are hidden names no reader takes for a result; the next write into their folder removes them. The
writer is a fork of this process (imports are paid once).

``test_kill_9_during_lucid_launch_export_leaves_only_complete_files`` (slow) does the same to a real
``lucid-launch --export``."""
import glob
import os
import random
import re
import select
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image
from plyfile import PlyData

from cpu_runs import cpu_run_args
from threestudio_lucid.atomic_files import is_temporary
from threestudio_lucid.checkpoint_io import AtomicCheckpointIO
from threestudio_lucid.geometry.ply_io import read_gaussian_ply, write_gaussian_ply
from threestudio_lucid.host.utils.saving import SaverMixin
from threestudio_lucid.system.gaussian_system import GaussianSplattingSystem

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")


class Saver(SaverMixin):
    def __init__(self, save_dir):
        self.set_save_dir(str(save_dir))


def version(k: int, n_splats: int = 30_000):
    """Version k (0 or 1) of every file: each value says which version it is."""
    value = float(k + 1)
    mesh = trimesh.creation.box(extents=(value, value, value))
    mesh.visual = trimesh.visual.TextureVisuals(uv=np.random.default_rng(k).random((len(mesh.vertices), 2)),
                                                image=Image.new("RGB", (256, 256), (0, 0, 100 * (k + 1))))
    return {
        "checkpoint": {"global_step": k, "state_dict": {"w": torch.full((4_000_000,), value)}},
        "splats": dict(xyz=torch.full((n_splats, 3), value), features_dc=torch.zeros(n_splats, 1, 3),
                       features_rest=torch.zeros(n_splats, 3, 3), opacity=torch.zeros(n_splats, 1),
                       scaling=torch.zeros(n_splats, 3), rotation=torch.zeros(n_splats, 4)),
        "mesh": mesh,
    }


def write_forever(root, versions):
    """The writer's loop (runs in a forked child until it is killed)."""
    checkpoint_io = AtomicCheckpointIO()
    saver = Saver(root / "save")
    k = 0
    while True:
        v = versions[k % 2]
        checkpoint_io.save_checkpoint(v["checkpoint"], root / "ckpts" / "last.ckpt")
        write_gaussian_ply(str(root / "save" / "point_cloud.ply"), **v["splats"])
        GaussianSplattingSystem.save_trimesh(saver, "it1-export/model", v["mesh"], ["obj", "glb"])
        k += 1


def start_writer(root, versions, cycles=None, pause_at_rename=None):
    """Fork the writer; returns its pid and a pipe's read end.

    ``pause_at_rename=n``: the writer stops before its n-th rename of a finished temporary over its target
    (the temporary written and fsynced, the target still the previous version), says so on the pipe and
    waits to be killed: a kill there lands in the middle of a write on any machine, however fast its disk."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: write until killed (or for `cycles` rounds), never return into pytest
        try:
            os.close(read_end)
            if pause_at_rename is not None:
                rename, renames = os.replace, [0]

                def replace_then_pause(src, dst, *args, **kwargs):
                    if is_temporary(os.path.basename(os.fspath(src))):
                        renames[0] += 1
                        if renames[0] == pause_at_rename:
                            os.write(write_end, b"paused")
                            time.sleep(120)
                    return rename(src, dst, *args, **kwargs)

                os.replace = replace_then_pause
            if cycles is None:
                write_forever(root, versions)
            checkpoint_io, saver = AtomicCheckpointIO(), Saver(root / "save")
            for k in range(cycles):
                v = versions[k % 2]
                checkpoint_io.save_checkpoint(v["checkpoint"], root / "ckpts" / "last.ckpt")
                write_gaussian_ply(str(root / "save" / "point_cloud.ply"), **v["splats"])
                GaussianSplattingSystem.save_trimesh(saver, "it1-export/model", v["mesh"], ["obj", "glb"])
        finally:
            os._exit(0)
    os.close(write_end)
    return pid, read_end


def check_files(root):
    """Every target absent or complete and equal to version 0 or 1; returns the temporaries seen."""
    ckpt = root / "ckpts" / "last.ckpt"
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        w = state["state_dict"]["w"]
        assert w.shape == (4_000_000,) and bool((w == state["global_step"] + 1).all())
    ply = root / "save" / "point_cloud.ply"
    if ply.exists():
        xyz = read_gaussian_ply(str(ply))["xyz"]
        assert xyz.shape == (30_000, 3) and float(xyz.min()) == float(xyz.max()) in (1.0, 2.0)
    export = root / "save" / "it1-export"
    for name in ("model.obj", "model.glb"):
        if (export / name).exists():
            mesh = trimesh.load(export / name, force="mesh")
            assert len(mesh.faces) == 12 and float(mesh.extents[0]) in (1.0, 2.0), name
    if (export / "model.obj").exists():
        assert "newmtl material_0" in (export / "model.mtl").read_text()  # written before the obj
    if (export / "material_0.png").exists():
        with Image.open(export / "material_0.png") as image:
            assert image.getpixel((0, 0)) in ((0, 0, 100), (0, 0, 200))
    temporaries = []
    for folder, _, files in os.walk(root):
        for name in files:
            if name.startswith("."):
                assert is_temporary(name), name
                assert not re.search(r"(\d+)\.png", name) and "last" not in name
                temporaries.append(os.path.join(folder, name))
            else:
                assert name in ("last.ckpt", "point_cloud.ply", "model.obj", "model.mtl", "material_0.png",
                                "model.glb"), name
    return temporaries


def kill_many_times(root, kills, seed):
    """``kills`` writers killed at random moments, then as many killed while paused before a rename (at a
    random one of the first 12: every file of the first two rounds can be the one). Every paused kill leaves
    a temporary; how many random ones do depends on the disk's speed, so they are not counted."""
    versions = [version(0), version(1)]
    rng = random.Random(seed)
    for kill in range(2 * kills):
        paused = kill >= kills
        pid, pipe = start_writer(root, versions, pause_at_rename=rng.randint(1, 12) if paused else None)
        try:
            if paused:
                ready, _, _ = select.select([pipe], [], [], 120)
                assert ready and os.read(pipe, 16) == b"paused", "the writer never reached the rename it was to pause at"
            else:
                time.sleep(rng.uniform(0.0, 0.5))
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(pipe)
        temporaries = check_files(root)
        assert temporaries or not paused, "a writer killed before its rename left no temporary"
    # a writer that runs to the end: it removes what the killed ones left in the folders it writes
    pid, pipe = start_writer(root, versions, cycles=2)
    _, status = os.waitpid(pid, 0)
    os.close(pipe)
    assert os.waitstatus_to_exitcode(status) == 0
    assert check_files(root) == []
    assert (root / "ckpts" / "last.ckpt").exists() and (root / "save" / "it1-export" / "model.obj").exists()


def test_kill_9_mid_write_leaves_the_old_or_the_new_file(tmp_path):
    kill_many_times(tmp_path, kills=6, seed=0)


@pytest.mark.slow
def test_kill_9_mid_write_many_times(tmp_path):
    kill_many_times(tmp_path, kills=30, seed=1)


@pytest.mark.slow
def test_kill_9_during_lucid_launch_export_leaves_only_complete_files(tmp_path, tiny_sd_path):
    """A real `lucid-launch --export` (textured mesh + splats), killed at random points once it has
    begun writing its export folder: every file under save/ parses (OBJ, PLY, PNG, GLB)."""
    from threestudio_lucid.host import launch

    os.chdir(tmp_path)
    common = ["trainer.val_check_interval=1000", "system.geometry.init_num_pts=3000"]
    assert launch.main(cpu_run_args("lucid-sds-cpu.yaml", tiny_sd_path, 2, *common, "tag=trained",
                                    "use_timestamp=false")) == 0
    ckpt = tmp_path / "outputs" / "lucid-sds-cpu" / "trained" / "ckpts" / "last.ckpt"
    args = cpu_run_args("lucid-sds-cpu.yaml", tiny_sd_path, 2, *common, f"resume={ckpt}", "tag=export",
                        "system.exporter.resolution=96", "system.exporter.texture=true",
                        "system.exporter.texture_size=512", "system.exporter.min_opacity=0.0")
    args[args.index("--train")] = "--export"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_WAIT_POLICY="PASSIVE")
    rng = random.Random(2)
    seen = []
    delays = [(0.0, 0.1), (0.1, 0.6), (0.6, 1.5), (1.5, 3.0)]  # seconds after its first write began
    for attempt in range(len(delays)):
        before = set(glob.glob(str(tmp_path / "outputs" / "lucid-sds-cpu" / "export@*")))
        proc = subprocess.Popen([sys.executable, "-m", "threestudio_lucid.host.launch", *args], cwd=tmp_path, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 240
            while True:
                runs = set(glob.glob(str(tmp_path / "outputs" / "lucid-sds-cpu" / "export@*"))) - before
                export = glob.glob(os.path.join(next(iter(runs)), "save", "it*-export")) if runs else []
                if export and os.listdir(export[0]):  # the first file (or its temporary) is being written
                    break
                assert proc.poll() is None, f"the export ended (code {proc.returncode}) before it wrote anything"
                assert time.time() < deadline
                time.sleep(0.01)
            time.sleep(rng.uniform(*delays[attempt]))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        (run,) = runs
        seen.append(sorted(os.listdir(export[0])))
        for folder, _, files in os.walk(os.path.join(run, "save")):
            for name in files:
                path = os.path.join(folder, name)
                if name.startswith("."):
                    assert is_temporary(name), path
                elif name.endswith(".obj") or name.endswith(".glb"):
                    assert len(trimesh.load(path, force="mesh").faces) > 0, path
                elif name.endswith(".ply"):
                    assert len(PlyData.read(path)["vertex"]) > 0, path
                elif name.endswith(".png"):
                    with Image.open(path) as image:
                        image.load()
                elif name.endswith(".mtl"):
                    assert "newmtl" in open(path).read(), path
                else:
                    raise AssertionError(f"unexpected file {path}")
    assert len({tuple(names) for names in seen}) > 1, seen  # the kills landed at different points
