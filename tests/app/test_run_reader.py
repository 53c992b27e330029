"""What the page reads from a launch's console and a run folder."""
import os

import pytest

from threestudio_lucid.app import run_reader

BAR = "\rEpoch 0:  57%|█████▋    | 855/1500 [00:19<00:14, 44.84it/s, train/loss=3.590, gauss_num=3442.0]"


def test_progress_is_the_last_training_bar_and_the_phase_the_last_bar():
    console = ("Seed set to 0\n" + BAR.replace("855", "854") + BAR + "\nValidation DataLoader 0:  50%|█████     | "
               "1/2 [00:00<00:00, 109.63it/s]\x1b[A")
    p = run_reader.progress_of(console)
    assert p == {"step": 855, "total": 1500, "rate": 44.84, "elapsed": 19.0, "remaining": 14.0, "phase": "validation"}
    slow = run_reader.progress_of("Epoch 0:   1%|          | 3/400 [01:02<2:17:40, 20.81s/it, train/loss=1.0]")
    assert slow["rate"] == pytest.approx(1 / 20.81) and slow["remaining"] == 2 * 3600 + 17 * 60 + 40
    # a resumed run's bar has no total: the run's max_steps is the total, the time left follows the rate
    resumed = run_reader.progress_of("Training: |          | 892/? [00:15<00:00, 55.77it/s, train/loss=3.54]", 1500)
    assert resumed["total"] == 1500 and resumed["remaining"] == pytest.approx((1500 - 892) / 55.77)
    assert run_reader.progress_of("Seed set to 0\nINFO Loading Stable Diffusion") is None


def test_the_error_is_one_line_never_a_traceback():
    launcher = "INFO loading\nerror: trainer.max_steps=0 on the command line: 0 steps trains nothing\n"
    assert run_reader.error_line(launcher) == "error: trainer.max_steps=0 on the command line: 0 steps trains nothing"
    crash = "Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n    boom()\nRuntimeError: CUDA out of memory\n"
    assert run_reader.error_line(crash) == "RuntimeError: CUDA out of memory"
    assert run_reader.console_lines("a\rb\rc\nnext\n\n") == ["c", "next"]


def touch(path, data=b""):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def test_a_run_folder_is_read_for_its_newest_images_video_splats_and_checkpoints(tmp_path):
    run = tmp_path / "lucid-ism-toy" / "a_penguin@20261207-000000"
    touch(run / "configs" / "parsed.yaml", b"name: lucid-ism-toy\nsystem:\n  prompt_processor:\n    prompt: a penguin\n"
                                         b"  guidance_type: lucid-ism-guidance\ntrainer:\n  max_steps: 400\n")
    for name in ("it5-0.png", "it10-0.png", "it10-1.png", "it10-test.mp4", "it5-test.mp4", "toy_world_eval.png"):
        touch(run / "save" / name)
    touch(run / "save" / "toy_world_scores.json", b'{"object": "penguin", "psnr": 20.5, "renders": [1, 2]}')
    touch(run / "save" / "it10-export" / "model.obj")
    touch(run / "save" / "it10-export" / "model.ply")
    touch(run / "csv_logs" / "version_0" / "metrics.csv", b"step,train/loss\n0,\n0,5.0\n1,4.0\n2,3.5\n")
    touch(run / "csv_logs" / "version_1" / "metrics.csv", b"step,train/loss\n2,3.0\n3,2.0\n")
    for i, name in enumerate(("epoch=0-step=5.ckpt", "last.ckpt", "interrupted-step=7.ckpt")):
        touch(run / "ckpts" / name)
        os.utime(run / "ckpts" / name, (1000 + i, 1000 + i))
    r = run_reader.results(str(run))
    assert [os.path.basename(p) for p in r["images"]] == ["it10-0.png", "it10-1.png"] and r["image_step"] == 10
    assert os.path.basename(r["video"]) == "it10-test.mp4" and r["splats"] is None
    assert r["scores"] == {"object": "penguin", "psnr": 20.5}
    assert r["loss"] == [(0, 5.0), (1, 4.0), (2, 3.0), (3, 2.0)]  # the resumed version wins at step 2
    assert os.path.basename(r["resume_from"]) == "interrupted-step=7.ckpt"
    assert r["exports"][0]["step"] == 10 and set(r["exports"][0]["files"]) == {"obj", "ply"}
    touch(run / "save" / "it7-interrupted" / "point_cloud.ply")
    assert run_reader.splats_file(str(run)).endswith("it7-interrupted/point_cloud.ply")
    touch(run / "save" / "point_cloud.ply")
    assert run_reader.splats_file(str(run)) == str(run / "save" / "point_cloud.ply")
    assert run_reader.find_run_folders(str(tmp_path)) == [str(run)]
    s = run_reader.summary(str(run))
    assert (s["prompt"], s["name"], s["max_steps"], s["state"]) == ("a penguin", "lucid-ism-toy", 400, "done")


def threestudio_obj_export(folder, texture=True, map_kd="texture_kd.jpg"):
    """The files of threestudio's mesh exporter (format obj-mtl, ``save_obj``/``_save_mtl``) in ``folder``:
    model.obj naming model.mtl, and the MTL's map_Kd (or its Kd without a texture)."""
    touch(folder / "model.obj", b"mtllib model.mtl\ng object\nusemtl default\nv 0 0 0\nv 1 0 0\nv 0 1 0\n"
                                b"vt 0 1\nvt 1 1\nvt 0 0\nf 1/1/ 2/2/ 3/3/\n")
    lines = ["newmtl default", "Ka 0.0 0.0 0.0", f"map_Kd {map_kd}" if texture else "Kd 0.2 0.4 0.6", "Ks 0.0 0.0 0.0"]
    touch(folder / "model.mtl", ("\n".join(lines) + "\n").encode())
    if texture and map_kd == "texture_kd.jpg":
        touch(folder / map_kd, b"\xff\xd8 a jpeg")


def test_the_mesh_view_is_the_ply_with_faces_else_the_obj_with_its_mtl_texture_or_kd(tmp_path):
    export = tmp_path / "run" / "save" / "it30-export"
    threestudio_obj_export(export)
    files = run_reader.exports(str(tmp_path / "run"))[0]["files"]
    assert set(files) == {"obj", "mtl", "texture_kd.jpg"}
    view = run_reader.mesh_view(files)
    assert (view["kind"], view["path"], view["kd"]) == ("obj", str(export / "model.obj"), None)
    assert (view["mtl"], view["texture"]) == (str(export / "model.mtl"), str(export / "texture_kd.jpg"))
    # a PLY without faces (a point cloud) is not the mesh; one with faces is, before the OBJ
    touch(export / "model.ply", b"ply\nformat binary_little_endian 1.0\nelement vertex 3\nproperty float x\n"
                                b"element face 0\nproperty list uchar int vertex_indices\nend_header\n")
    assert run_reader.mesh_view(run_reader.exports(str(tmp_path / "run"))[0]["files"])["kind"] == "obj"
    touch(export / "model.ply", b"ply\nformat binary_little_endian 1.0\nelement vertex 3\nproperty float x\n"
                                b"element face 1\nproperty list uchar int vertex_indices\nend_header\n")
    view = run_reader.mesh_view(run_reader.exports(str(tmp_path / "run"))[0]["files"])
    assert (view["kind"], view["path"], view["mtl"]) == ("ply", str(export / "model.ply"), None)
    # threestudio's "obj" format (vertex colours, no MTL), and an MTL with Kd only
    other = tmp_path / "other"
    touch(other / "model.obj", b"v 0 0 0 1 0 0\nv 1 0 0 1 0 0\nv 0 1 0 1 0 0\nf 1// 2// 3//\n")
    assert run_reader.mesh_view({"obj": str(other / "model.obj")}) == {
        "kind": "obj", "path": str(other / "model.obj"), "mtl": None, "texture": None, "kd": None}
    threestudio_obj_export(other, texture=False)
    assert run_reader.mesh_view({"obj": str(other / "model.obj")})["kd"] == [0.2, 0.4, 0.6]
    assert run_reader.mesh_view({"glb": str(other / "model.glb")}) is None


@pytest.mark.parametrize("map_kd", ["../../secret.jpg", "/etc/passwd", "out.jpg", ".hidden.jpg", "sub/../texture_kd.jpg"])
def test_an_mtl_names_only_files_in_its_own_folder(tmp_path, map_kd):
    export = tmp_path / "run" / "save" / "it30-export"
    touch(tmp_path / "secret.jpg", b"secret")
    threestudio_obj_export(export, map_kd=map_kd)
    touch(export / "texture_kd.jpg", b"\xff\xd8 a jpeg")  # there, but not by that name
    os.symlink(tmp_path / "secret.jpg", export / "out.jpg")  # a link out of the folder
    touch(export / ".hidden.jpg", b"hidden")
    view = run_reader.mesh_view({"obj": str(export / "model.obj")})
    assert view["mtl"] == str(export / "model.mtl") and view["texture"] is None


def test_every_step_with_validation_images_is_listed_oldest_first_with_its_views_in_order(tmp_path):
    run = tmp_path / "run"
    for name in ("it40-0.png", "it5-1.png", "it5-0.png", "it100-10.png", "it100-2.png", "it40-test.mp4",
                 "progress.mp4", "toy_world_eval.png", "it7-interrupted.png"):
        touch(run / "save" / name)
    touch(run / "save" / "it60-test" / "0.png")  # the test orbit's frames are not validation images
    steps = run_reader.validation_steps(str(run))
    assert [(step, [os.path.basename(p) for p in paths]) for step, paths in steps] == [
        (5, ["it5-0.png", "it5-1.png"]), (40, ["it40-0.png"]), (100, ["it100-2.png", "it100-10.png"])]
    r = run_reader.results(str(run))
    assert r["image_step"] == 100 and r["images"] == steps[-1][1] and r["image_steps"] == steps
    assert r["progress_video"]["path"] == str(run / "save" / "progress.mp4")
    assert run_reader.validation_steps(str(tmp_path / "missing")) == []


def test_resume_keeps_the_interrupted_checkpoint_unless_a_later_state_was_saved_after_it(tmp_path):
    import torch

    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()

    def save(name, step, when):
        path = ckpts / name
        torch.save({"global_step": step, "state_dict": {}}, str(path))
        os.utime(path, (when, when))
        return str(path)

    step_ckpt = save("epoch=0-step=100.ckpt", 100, 1000)
    interrupted = save("interrupted-step=130.ckpt", 130, 1010)
    assert run_reader.resume_checkpoint(str(tmp_path)) == interrupted
    # a Stop before the run's first checkpoint: Lightning writes last.ckpt at the end, after the interrupted
    # one, with the same state; the interrupted one (its name says the step) is what Resume continues from
    save("last.ckpt", 130, 1011)
    assert run_reader.resume_checkpoint(str(tmp_path)) == interrupted
    # a later state saved after it (a resumed run went on): last.ckpt
    last = save("last.ckpt", 200, 1020)
    assert run_reader.resume_checkpoint(str(tmp_path)) == last
    # no interrupted checkpoint: last.ckpt, else the newest
    os.remove(interrupted)
    assert run_reader.resume_checkpoint(str(tmp_path)) == last
    os.remove(last)
    assert run_reader.resume_checkpoint(str(tmp_path)) == step_ckpt
