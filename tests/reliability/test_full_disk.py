"""A full disk ends in one StorageError line (the file, its folder, the space it needs and the space free
there, the fix), keeps every file written before it complete and leaves no partial file: for
checkpoints, the splats' PLY, the mesh export (obj, mtl, texture png, ply, glb), images, videos, the
toy world's scores and the embedding cache; ``lucid-launch`` prints that line once and exits 2.

In this process the disk is simulated (``simulated_disk.py``: writes fail with ENOSPC once the free
bytes are used). The ``slow`` tests use a real 1 MB tmpfs, mounted in a user + mount namespace
(``unshare -rm``); they are skipped, with the reason, where the machine does not allow that."""
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from cpu_runs import cpu_run_args
from simulated_disk import SimulatedDisk
from threestudio_lucid.atomic_files import is_temporary, size_text
from threestudio_lucid.checkpoint_io import AtomicCheckpointIO
from threestudio_lucid.errors import StorageError
from threestudio_lucid.geometry.ply_io import read_gaussian_ply, write_gaussian_ply
from threestudio_lucid.host.utils.saving import SaverMixin
from threestudio_lucid.system.gaussian_system import GaussianSplattingSystem

HERE = os.path.dirname(os.path.abspath(__file__))


def assert_storage_line(error: StorageError, folder, needs=None):
    message = str(error)
    assert "\n" not in message
    assert f"in '{os.path.abspath(folder)}'" in message, message
    assert re.search(r"it needs (at least )?[\d.]+ (B|kB|MB|GB), [\d.]+ (B|kB|MB|GB) free there", message), message
    if needs is not None:
        assert f"it needs {size_text(needs)}," in message, message
    assert "written before it are kept" in message and "free space there or set exp_root_dir=" in message


def assert_no_partial_files(folder):
    for root, _, files in os.walk(folder):
        assert not [f for f in files if is_temporary(f)], (root, files)


class Saver(SaverMixin):
    def __init__(self, save_dir):
        self.set_save_dir(str(save_dir))


def splats(value: float, n: int = 500):
    return dict(xyz=torch.full((n, 3), value), features_dc=torch.zeros(n, 1, 3), features_rest=torch.zeros(n, 0, 3),
                opacity=torch.zeros(n, 1), scaling=torch.full((n, 3), -3.0), rotation=torch.tensor([[1.0, 0, 0, 0]] * n))


def textured_box(scale: float, rgb):
    mesh = trimesh.creation.box(extents=(scale, scale, scale))
    uv = np.random.default_rng(0).random((len(mesh.vertices), 2))
    mesh.visual = trimesh.visual.TextureVisuals(uv=uv, image=Image.new("RGB", (32, 32), rgb))
    return mesh


def export_sizes(mesh):
    """Sizes of what save_trimesh writes, in its order: texture png, mtl, obj."""
    from trimesh.exchange.obj import export_obj

    text, assets = export_obj(mesh, include_color=True, include_texture=True, return_texture=True,
                              write_texture=False, mtl_name="model.mtl")
    return [len(assets["material_0.png"]), len(assets["model.mtl"]), len(text.encode())]


# ---- each writer, in this process ----
def test_a_checkpoint_that_does_not_fit_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "ckpts" / "last.ckpt"
    checkpoint_io = AtomicCheckpointIO()
    checkpoint_io.save_checkpoint({"global_step": 2, "w": torch.zeros(10_000)}, path)
    new = {"global_step": 4, "w": torch.ones(10_000)}
    buffer = io.BytesIO()
    torch.save(new, buffer)
    SimulatedDisk(monkeypatch, free=20_000)
    with pytest.raises(StorageError) as raised:
        checkpoint_io.save_checkpoint(new, path)
    assert_storage_line(raised.value, path.parent, needs=len(buffer.getvalue()))
    assert torch.load(path)["global_step"] == 2
    assert os.listdir(path.parent) == ["last.ckpt"]


def test_a_ply_that_does_not_fit_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "save" / "point_cloud.ply"
    write_gaussian_ply(str(path), **splats(1.0))
    SimulatedDisk(monkeypatch, free=4096)
    with pytest.raises(StorageError) as raised:
        write_gaussian_ply(str(path), **splats(2.0))
    assert_storage_line(raised.value, path.parent)
    assert np.all(read_gaussian_ply(str(path))["xyz"] == 1.0)
    assert os.listdir(path.parent) == ["point_cloud.ply"]


@pytest.mark.parametrize("files_that_fit", [0, 1, 2, 3])
def test_a_mesh_export_that_does_not_fit_leaves_each_file_complete(tmp_path, monkeypatch, files_that_fit):
    """texture png, mtl, obj, ply, glb (in that order): the disk fills at the first file or after the
    texture, the material or the OBJ; every file there is complete, each the old export or the new."""
    saver = Saver(tmp_path / "save")
    old, new = textured_box(1.0, (200, 0, 0)), textured_box(2.0, (0, 0, 200))
    GaussianSplattingSystem.save_trimesh(saver, "it4-export/model", old, ["obj", "ply", "glb"])
    sizes = export_sizes(new)
    SimulatedDisk(monkeypatch, free=sum(sizes[:files_that_fit]) + 10)
    with pytest.raises(StorageError) as raised:
        GaussianSplattingSystem.save_trimesh(saver, "it4-export/model", new, ["obj", "ply", "glb"])
    folder = tmp_path / "save" / "it4-export"
    assert_storage_line(raised.value, folder)
    assert sorted(os.listdir(folder)) == ["material_0.png", "model.glb", "model.mtl", "model.obj", "model.ply"]
    extents = {fmt: float(trimesh.load(folder / f"model.{fmt}", force="mesh").extents[0]) for fmt in ("obj", "ply", "glb")}
    assert extents == {"obj": 2.0 if files_that_fit == 3 else 1.0, "ply": 1.0, "glb": 1.0}
    assert Image.open(folder / "material_0.png").getpixel((0, 0)) == ((0, 0, 200) if files_that_fit else (200, 0, 0))
    assert "newmtl" in (folder / "model.mtl").read_text()
    assert_no_partial_files(folder)


def test_images_that_do_not_fit_keep_the_previous_ones(tmp_path, monkeypatch):
    saver = Saver(tmp_path / "save")
    grid = [{"type": "rgb", "img": np.zeros((16, 16, 3), np.float32), "kwargs": {"data_format": "HWC"}}]
    saver.save_image_grid("it2-0.png", grid)
    SimulatedDisk(monkeypatch, free=10)
    with pytest.raises(StorageError) as raised:
        saver.save_image_grid("it2-0.png", [{**grid[0], "img": np.ones((16, 16, 3), np.float32)}])
    assert_storage_line(raised.value, tmp_path / "save")
    assert np.asarray(Image.open(tmp_path / "save" / "it2-0.png")).max() == 0
    assert_no_partial_files(tmp_path)


def frames(saver, value):
    for i in range(3):
        saver.save_image(f"it2-test/{i}.png", np.full((16, 16, 3), value, np.uint8))


def test_a_gif_that_does_not_fit_keeps_the_previous_one(tmp_path, monkeypatch):
    saver = Saver(tmp_path / "save")
    frames(saver, 10)
    saver.save_img_sequence("it2-test", "it2-test", r"(\d+)\.png", save_format="gif", fps=10)
    old = (tmp_path / "save" / "it2-test.gif").read_bytes()
    SimulatedDisk(monkeypatch, free=20)
    with pytest.raises(StorageError) as raised:
        saver.save_img_sequence("it2-test-new", "it2-test", r"(\d+)\.png", save_format="gif", fps=10)
    assert_storage_line(raised.value, tmp_path / "save")
    assert (tmp_path / "save" / "it2-test.gif").read_bytes() == old
    assert not (tmp_path / "save" / "it2-test-new.gif").exists()
    assert_no_partial_files(tmp_path)


def test_an_mp4_whose_ffmpeg_runs_out_of_space_keeps_the_previous_one(tmp_path, monkeypatch):
    """ffmpeg writes by path in its own process: what imageio reports when it fails is its log."""
    import imageio

    saver = Saver(tmp_path / "save")
    frames(saver, 10)
    saver.save_img_sequence("it2-test", "it2-test", r"(\d+)\.png", save_format="mp4", fps=10)
    old = (tmp_path / "save" / "it2-test.mp4").read_bytes()

    class FfmpegOnAFullDisk:
        def __init__(self, path, **kwargs):
            self.f = open(path, "wb")

        def append_data(self, frame):
            self.f.write(b"\0" * 2048)
            raise OSError("[Errno 32] Broken pipe\n\nFFMPEG STDERR OUTPUT:\n"
                          "av_interleaved_write_frame(): No space left on device")

        def close(self):
            self.f.close()

    monkeypatch.setattr(imageio.v2, "get_writer", FfmpegOnAFullDisk)
    with pytest.raises(StorageError, match=r"it needs at least 2\.0 kB") as raised:
        saver.save_img_sequence("it2-test", "it2-test", r"(\d+)\.png", save_format="mp4", fps=10)
    assert_storage_line(raised.value, tmp_path / "save")
    assert (tmp_path / "save" / "it2-test.mp4").read_bytes() == old
    assert_no_partial_files(tmp_path)


def test_scores_that_do_not_fit_keep_the_previous_ones(tmp_path, monkeypatch):
    from threestudio_lucid.toy_world.evaluate import write_scores

    path = tmp_path / "save" / "toy_world_scores.json"
    path.parent.mkdir()
    write_scores({"psnr": 20.0, "renders": None}, str(path))
    SimulatedDisk(monkeypatch, free=5)
    with pytest.raises(StorageError) as raised:
        write_scores({"psnr": 30.0, "renders": None}, str(path))
    assert_storage_line(raised.value, path.parent)
    assert '"psnr": 20.0' in path.read_text()
    assert os.listdir(path.parent) == ["toy_world_scores.json"]


def test_an_embedding_cache_entry_that_does_not_fit_is_not_left_half_written(tmp_path, monkeypatch, tiny_sd_path):
    from threestudio_lucid.atomic_files import CACHE_HINT
    from threestudio_lucid.host.models.prompt_processors.stable_diffusion_prompt_processor import _save_embedding
    from threestudio_lucid.personalization import Personalization
    from threestudio_lucid.prompt_processor.stable_diffusion_prompt_processor import EncodingJob, run_encoding_job

    host_entry = tmp_path / "cache" / "host.pt"
    _save_embedding(torch.zeros(77, 8), str(host_entry))
    plugin_entry = tmp_path / "cache" / "plugin.pt"
    SimulatedDisk(monkeypatch, free=100)
    with pytest.raises(StorageError) as raised:
        _save_embedding(torch.ones(77, 8), str(host_entry))
    assert CACHE_HINT in str(raised.value) and f"in '{host_entry.parent}'" in str(raised.value)
    assert torch.load(host_entry).sum() == 0
    personalization = Personalization(model=tiny_sd_path, base_model=None, textual_inversion_paths=(),
                                      lora_path=None, lora_scale=1.0, prefix="system.prompt_processor.")
    job = EncodingJob(personalization, ["a cube"], {}, [str(plugin_entry)], None)
    with pytest.raises(StorageError, match=re.escape(CACHE_HINT)):
        run_encoding_job(job)
    assert os.listdir(host_entry.parent) == ["host.pt"]


def test_a_storage_error_in_the_spawned_encoder_comes_back_as_one(monkeypatch):
    from threestudio_lucid.prompt_processor import stable_diffusion_prompt_processor as processor

    def full(job):
        raise StorageError("cannot write 'x.pt': no space left on the device in '.'")

    monkeypatch.setattr(processor, "run_encoding_job", full)
    results = []

    class Queue:
        put = results.append

    processor._encode_in_child(None, Queue())
    assert results == [("StorageError", "cannot write 'x.pt': no space left on the device in '.'")]


# ---- the launcher ----
def test_lucid_launch_ends_in_one_error_line_and_keeps_the_checkpoints(tmp_path, monkeypatch, tiny_sd_path, capsys):
    """The disk fills at the third checkpoint: exit 2, one `error:` line naming the folder and the space,
    no traceback, the run folder and the two checkpoints before it kept and loadable."""
    from threestudio_lucid.host import launch

    monkeypatch.chdir(tmp_path)
    disk = SimulatedDisk(monkeypatch, free=1 << 40)
    saved = []
    real_save = AtomicCheckpointIO.save_checkpoint

    def save(self, checkpoint, path, storage_options=None):
        if len(saved) == 2:
            disk.free = 0
        real_save(self, checkpoint, path, storage_options)
        saved.append(path)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", save)
    code = launch.main(cpu_run_args("lucid-sds-cpu.yaml", tiny_sd_path, 20, "checkpoint.every_n_train_steps=2",
                                    "checkpoint.save_top_k=-1", "checkpoint.save_last=false",
                                    "trainer.val_check_interval=1000", "trainer.enable_progress_bar=false",
                                    "data.n_test_views=1"))
    captured = capsys.readouterr()
    assert code == 2
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in captured.err + captured.out
    ckpts = os.path.join(os.path.dirname(saved[0]))
    assert f"in '{ckpts}'" in errors[0] and "free there" in errors[0]
    assert sorted(os.listdir(ckpts)) == ["epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt"]
    for path in saved:
        assert torch.load(path, weights_only=False, map_location="cpu")["global_step"] in (2, 4)
    assert_no_partial_files(os.path.dirname(ckpts))


# ---- a real full file system (slow) ----
def tmpfs_unavailable():
    if shutil.which("unshare") is None:
        return "needs util-linux's unshare to mount a small tmpfs in a user + mount namespace"
    with tempfile.TemporaryDirectory() as folder:
        probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs '{folder}'"],
                               capture_output=True, text=True)
    if probe.returncode != 0:
        return ("needs user + mount namespaces to mount a small tmpfs (`unshare -rm mount -t tmpfs` failed: "
                f"{probe.stderr.strip() or probe.returncode})")
    return None


def on_tmpfs(folder, size, command):
    """Run ``command`` (a shell line) with a ``size`` tmpfs mounted on ``folder``, seen only by it."""
    script = f"mount -t tmpfs -o size={size} tmpfs '{folder}' || exit 97\n{command}"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=HERE)
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.mark.slow
def test_each_writer_on_a_real_full_tmpfs(tmp_path):
    reason = tmpfs_unavailable()
    if reason:
        pytest.skip(reason)
    disk, report = tmp_path / "disk", tmp_path / "report.txt"
    disk.mkdir()
    proc = on_tmpfs(disk, "1m", f"{sys.executable} {os.path.join(HERE, 'full_disk_writers.py')} '{disk}' '{report}'")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = report.read_text().splitlines()
    assert len(lines) == 6, lines  # checkpoint, ply, export, mp4, scores, cache
    for line in lines:
        name, message = line.split("\t")
        assert message.startswith("cannot write") and "no space left on the device" in message, line
        assert "free there" in message and "written before it are kept" in message, line


@pytest.mark.slow
def test_lucid_launch_train_on_a_real_full_tmpfs(tmp_path, tiny_sd_path):
    reason = tmpfs_unavailable()
    if reason:
        pytest.skip(reason)
    disk, kept = tmp_path / "disk", tmp_path / "kept"
    disk.mkdir()
    args = cpu_run_args("lucid-sds-cpu.yaml", tiny_sd_path, 400, "checkpoint.every_n_train_steps=2",
                        "checkpoint.save_top_k=-1", f"exp_root_dir={disk}", "trainer.val_check_interval=1000",
                        "trainer.enable_progress_bar=false")
    command = " ".join(f"'{a}'" for a in [sys.executable, "-m", "threestudio_lucid.host.launch", *args])
    proc = on_tmpfs(disk, "700k", f"cd '{tmp_path}'; {command}; code=$?; cp -a '{disk}' '{kept}'; exit $code")
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    assert "no space left on the device in '" + str(disk) in errors[0] and "free there" in errors[0]
    (trial,) = [os.path.join(root) for root, dirs, _ in os.walk(kept) if "ckpts" in dirs]
    ckpts = sorted(os.listdir(os.path.join(trial, "ckpts")))
    assert len(ckpts) >= 2, ckpts
    for name in ckpts:
        state = torch.load(os.path.join(trial, "ckpts", name), weights_only=False, map_location="cpu")
        assert state["global_step"] >= 2
    assert_no_partial_files(kept)
