"""A user's session end to end, as subprocesses: train, then ``--export`` the checkpoint with the mesh
exporter's options on the command line; the files load back; the console holds nothing a user cannot
act on (no library warnings, notices or tips)."""
import os
import re
import subprocess
import sys

import numpy as np
import trimesh

CONFIG = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "custom", "threestudio-lucid",
                                      "configs", "lucid-sds-cpu.yaml"))

# what a library prints when it warns or advertises: the path of its source line, or these words
NOISE = re.compile(r"site-packages|Warning|warning|deprecated|Tip:|torchvision|def training_step|TPU")


def launch(cwd, *args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "threestudio_lucid.host.launch", "--config", CONFIG, *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    return output


def test_train_then_export_a_textured_mesh_with_a_clean_console(tmp_path, tiny_sd_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)  # as in a threestudio checkout: code snapshots work
    common = [
        "system.prompt_processor.prompt=a small cube",
        f"system.prompt_processor.pretrained_model_name_or_path={tiny_sd_path}",
        f"system.guidance.pretrained_model_name_or_path={tiny_sd_path}",
        "data.width=16", "data.height=16", "data.eval_width=16", "data.eval_height=16",
        "data.n_val_views=1", "data.n_test_views=2", "system.geometry.init_num_pts=300",
        "trainer.max_steps=2", "trainer.val_check_interval=2", "use_timestamp=false",
    ]
    trained = launch(tmp_path, "--train", "--gpu", "0", *common)
    trial = tmp_path / "outputs" / "lucid-sds-cpu" / "a_small_cube"
    exported = launch(tmp_path, "--export", "--gpu", "0", *common, f"resume={trial / 'ckpts' / 'last.ckpt'}",
                      "system.exporter.resolution=40", "system.exporter.texture=true",
                      "system.exporter.texture_size=64", "system.exporter.save_name=cube")
    for output in (trained, exported):
        noise = [line for line in output.splitlines() if NOISE.search(line)]
        assert not noise, "\n".join(noise)
    assert "Mesh from 300 splats" in exported and "watertight" in exported

    export_dirs = [d for d in (tmp_path / "outputs" / "lucid-sds-cpu").iterdir() if d.name != "a_small_cube"]
    (export,) = [d / "save" / "it2-export" for d in export_dirs]
    names = set(os.listdir(export))
    assert {"cube.obj", "cube.mtl", "cube.ply", "cube.glb", "point_cloud.ply"} <= names
    assert any(n.endswith(".png") for n in names)  # the baked texture beside the OBJ
    glb = trimesh.load(export / "cube.glb", force="mesh")
    assert isinstance(glb.visual, trimesh.visual.TextureVisuals) and glb.visual.uv.shape == (len(glb.vertices), 2)
    obj = trimesh.load(export / "cube.obj", force="mesh")
    assert len(obj.faces) == len(glb.faces) > 0
    # PLY holds no texture: it carries the vertex colours, the splats' colour (init grey 0.5 after 2 steps)
    ply = trimesh.load(export / "cube.ply", force="mesh")
    assert ply.is_watertight and ply.volume > 0
    colors = ply.visual.vertex_colors[:, :3] / 255.0
    assert np.abs(colors - colors.mean(0)).max() < 0.2 and 0.3 < colors.mean() < 0.7
