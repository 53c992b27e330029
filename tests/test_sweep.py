"""lucid-sweep: a real sweep of 2 prompts x 2 toy configs x 1 seed on a local Ray with two CPU workers,
resumed after a run is lost; and its input errors."""
import json
import os

import pytest

from threestudio_lucid import sweep
from threestudio_lucid.toy_world.pipeline import build_toy_world

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "custom", "threestudio-lucid",
                       "configs")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("toy-cache"))
    os.environ["LUCID_TOY_WORLD_CACHE"] = cache
    path = build_toy_world(tmp_path_factory.mktemp("world") / "toy", objects=["cube", "penguin"], image_size=32,
                           n_azimuths=4, elevations_deg=[0.0, 30.0], n_eval_views=2, bandwidth=0.2, cache_dir=cache)
    return str(path)


def sweep_args(out, world):
    tiny = [f"system.prompt_processor.pretrained_model_name_or_path={world}",
            f"system.guidance.pretrained_model_name_or_path={world}",
            "data.width=32", "data.height=32", "data.eval_width=32", "data.eval_height=32", "data.batch_size=1",
            "data.n_val_views=1", "data.n_test_views=2", "system.geometry.init_num_pts=300",
            "trainer.max_steps=3", "trainer.val_check_interval=3", "checkpoint.every_n_train_steps=3",
            "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1"]
    return ["--out", str(out), "--prompts", "a penguin", "a red cube",
            "--config", os.path.join(CONFIGS, "lucid-sds-toy.yaml"),
            "--config", f"{os.path.join(CONFIGS, 'lucid-ism-toy.yaml')} system.guidance.warmup_iter=1",
            "--seeds", "0", "--num-cpus", "2", "--cpus-per-task", "1",
            *[a for o in tiny for a in ("--override", o)]]


@pytest.fixture(scope="module")
def swept(world, tmp_path_factory):
    """The sweep, run once for the module: (its folder, what it printed)."""
    pytest.importorskip("ray")
    base = tmp_path_factory.mktemp("sweep-run")
    cwd = os.getcwd()
    os.chdir(base)
    try:
        out = base / "sweep"
        import contextlib
        import io

        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert sweep.main(sweep_args(out, world)) == 0
    finally:
        os.chdir(cwd)
    return out, printed.getvalue()


def test_a_sweep_runs_on_ray_writes_its_manifest_and_resumes_only_what_is_missing(world, swept, monkeypatch, capsys):
    out, printed = swept
    monkeypatch.chdir(out.parent)
    manifest = json.loads((out / "sweep.json").read_text())
    runs = {r["run_id"]: r for r in manifest["runs"]}
    assert sorted(runs) == ["lucid-ism-toy/a_penguin-seed0", "lucid-ism-toy/a_red_cube-seed0",
                            "lucid-sds-toy/a_penguin-seed0", "lucid-sds-toy/a_red_cube-seed0"]
    for run in runs.values():
        assert run["state"] == "done" and run["seconds"] > 0, run
        trial = run["trial_dir"]
        # each run is a complete launch: checkpoint, splats and its toy-world scores
        assert os.path.isfile(os.path.join(trial, "ckpts", "last.ckpt"))
        assert os.path.isfile(os.path.join(trial, "save", "point_cloud.ply"))
        scores = json.load(open(os.path.join(trial, "save", "toy_world_scores.json")))
        assert scores["object"] == ("penguin" if "penguin" in run["prompt"] else "cube")
        assert f"system.prompt_processor.prompt={run['prompt']}" in run["command"]
    assert "system.guidance.warmup_iter=1" in runs["lucid-ism-toy/a_penguin-seed0"]["command"]
    assert "system.guidance.warmup_iter=1" not in runs["lucid-sds-toy/a_penguin-seed0"]["command"]
    assert "4 to run" in printed and "[4/4]" in printed and "4/4 done, 0 failed" in printed

    # a lost run (its status gone, as after a kill mid-run) is the only one run again, from its checkpoint
    lost = runs["lucid-sds-toy/a_red_cube-seed0"]["trial_dir"]
    os.remove(runs["lucid-sds-toy/a_red_cube-seed0"]["status"])
    before = {rid: os.path.getmtime(r["status"]) for rid, r in runs.items() if r["trial_dir"] != lost}
    assert sweep.main(sweep_args(out, world)) == 0
    printed = capsys.readouterr().out
    assert "3 already finished, 1 to run" in printed and "[1/1] lucid-sds-toy/a_red_cube-seed0: done" in printed
    rerun = json.loads((out / "sweep.json").read_text())
    (again,) = [r for r in rerun["runs"] if r["trial_dir"] == lost]
    assert again["state"] == "done" and any(c.startswith("resume=") for c in again["command"])
    for rid, r in runs.items():
        if r["trial_dir"] != lost:
            assert os.path.getmtime(r["status"]) == before[rid]

    # a third time: nothing to do
    assert sweep.main(sweep_args(out, world)) == 0
    assert "4 already finished, 0 to run" in capsys.readouterr().out


def test_a_failed_run_is_listed_with_its_error_line_and_the_exit_code_says_so(world, tmp_path, monkeypatch, capsys):
    pytest.importorskip("ray")
    monkeypatch.chdir(tmp_path)
    args = sweep_args(tmp_path / "sweep", world)
    args[args.index("--prompts") + 2] = "a green cone"  # not an object of this world: its launch fails
    args = args[:args.index("--config") + 2] + args[args.index("--seeds"):]  # one config
    assert sweep.main(args) == 1
    printed = capsys.readouterr().out
    assert "1/2 done, 1 failed" in printed
    assert "failed lucid-sds-toy/a_green_cone-seed0: error: system.prompt_processor.prompt" in printed
    manifest = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    failed = [r for r in manifest["runs"] if r["state"] == "failed"]
    assert len(failed) == 1 and "names no object of this toy world" in failed[0]["error"]


def test_inputs_are_checked_before_anything_runs(tmp_path, capsys):
    sds = os.path.join(CONFIGS, "lucid-sds-toy.yaml")
    cases = [
        (["--prompts", "a cat"], "no configs: give --config PATH"),
        (["--config", sds], "no prompts"),
        (["--prompts", "a cat", "--config", str(tmp_path / "missing.yaml")], "missing.yaml' does not exist"),
        (["--prompts", "a cat", "--config", f"{sds} oops"], "'oops' is not an override KEY=VALUE"),
        (["--prompts", "a cat", "a-cat", "--config", sds], "share the folder name 'a_cat'"),
        (["--prompts", "a cat", "--config", sds, "--prompts-file", str(tmp_path / "none.txt")], "none.txt' does not exist"),
        (["--config", sds, "--prompts-file", str(tmp_path / "blank.txt")], "blank.txt' holds no prompts (it is empty"),
        (["--prompts", "a cat", "--config", sds, "--threestudio", str(tmp_path)], "holds no launch.py"),
    ]
    (tmp_path / "blank.txt").write_text("\n# prompts go here\n   \n")
    baseline = tmp_path / "dreamfusion-sd.yaml"
    baseline.write_text("system_type: dreamfusion-system\n")
    cases.append((["--prompts", "a cat", "--config", str(baseline)], "is a threestudio baseline"))
    for argv, message in cases:
        assert sweep.main(["--out", str(tmp_path / "out"), *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, (argv, err)
    assert not (tmp_path / "out" / "sweep.json").exists()


def test_dry_run_lists_the_commands_and_a_baseline_goes_through_the_checkouts_launch_py(tmp_path, capsys):
    checkout = tmp_path / "threestudio"
    (checkout / "configs").mkdir(parents=True)
    (checkout / "launch.py").write_text("")
    (checkout / "configs" / "dreamfusion-sd.yaml").write_text("system_type: dreamfusion-system\n")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# DreamFusion gallery\na hamburger\n\na corgi\n")
    assert sweep.main(["--out", str(tmp_path / "out"), "--prompts-file", str(prompts), "--threestudio", str(checkout),
                       "--config", "configs/dreamfusion-sd.yaml system.guidance.guidance_scale=50",
                       "--config", os.path.join(CONFIGS, "lucid-ism.yaml"), "--seeds", "0", "1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "8 runs (2 configs x 2 prompts x 2 seeds), 0 already finished, 8 to run" in out
    lines = [line for line in out.splitlines() if line.startswith("  ")]
    assert len(lines) == 8
    baseline = [line for line in lines if "dreamfusion-sd/a_corgi-seed1" in line][0]
    assert f"{checkout}/launch.py --config configs/dreamfusion-sd.yaml --train" in baseline
    assert "seed=1" in baseline and "system.guidance.guidance_scale=50" in baseline and "use_timestamp=false" in baseline
    plugin = [line for line in lines if "lucid-ism/a_hamburger-seed0" in line][0]
    assert "lucid-launch --config" in plugin and "'system.prompt_processor.prompt=a hamburger'" in plugin


# ---------------------------------------------------------------------------------------------
# lucid-report on that sweep
# ---------------------------------------------------------------------------------------------
def chromium():
    import shutil

    for name in ("chromium", "chromium-headless-shell", "chromium-browser", "google-chrome", "headless_shell"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def tiny_clip(folder):
    """A real transformers CLIP (random weights) with its processor, saved like a hub folder."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from threestudio_lucid.tiny_pipeline import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    config = CLIPConfig(
        text_config=dict(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    import torch

    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(folder)
    return str(folder)


def test_the_report_of_the_sweep_shows_every_run_side_by_side_in_a_real_browser(swept, tmp_path):
    from threestudio_lucid import report

    out, _ = swept
    page = tmp_path / "report"
    clip = tiny_clip(tmp_path / "clip")
    assert report.main([str(out), "--out", str(page), "--clip", clip]) == 0
    text = (page / "index.html").read_text()
    manifest = json.loads((out / "sweep.json").read_text())
    for run in manifest["runs"]:
        assert f"data-run='{run['trial_dir']}'" in text
    assert text.count("<section class='prompt'>") == 2 and text.count("<video") == 4
    for column in ("psnr", "iou", "sharpness", "janus", "clip", "time s", "last step", "Gaussians"):
        assert f"<th>{column}</th>" in text
    assert "<th>exp_dir</th>" not in text and "<th>seed</th>" in text  # the run's identity is not a difference
    # the two methods differ in their guidance type: that is a config difference the table shows
    assert "<th>system.guidance_type</th>" in text
    assets = sorted(os.listdir(page / "assets"))
    assert sum(a.endswith(".mp4") for a in assets) == 4 and sum(a.endswith("-curves.png") for a in assets) == 2

    browser = chromium()
    if browser is None:
        pytest.skip("no Chromium on this machine: scripts/setup.sh installs chromium-headless-shell with apt")
    import subprocess

    url = (page / "index.html").as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert dom.count("class=\"run\"") == 4 and dom.count("<tr>") >= 2 + 4  # two header rows, four runs
    shot = tmp_path / "report.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1200,1400", url], capture_output=True,
                   timeout=120)
    import imageio.v2 as imageio
    import numpy as np

    pixels = imageio.imread(shot).astype(np.float32)
    assert pixels.shape[0] >= 1000 and pixels.std() > 10.0  # not a blank page


def test_a_sweep_killed_mid_way_finishes_only_what_was_missing(world, tmp_path):
    """The real thing: the sweep process is killed (SIGKILL) once its first run has finished; its Ray
    workers and their launches end with it, and the same command then runs only the other runs."""
    pytest.importorskip("ray")
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "sweep"
    argv = sweep_args(out, world)
    argv = argv[:argv.index("--config") + 2] + argv[argv.index("--seeds"):]  # one config: 2 runs
    argv[argv.index("--num-cpus") + 1] = "1"  # one at a time, so the second is running when the kill comes
    proc = subprocess.Popen([sys.executable, "-m", "threestudio_lucid.sweep", *argv], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    statuses = out / "logs" / "lucid-sds-toy"
    deadline = time.time() + 300
    while time.time() < deadline and not (statuses.is_dir() and any(p.suffix == ".json" for p in statuses.iterdir())):
        time.sleep(0.5)
    assert proc.poll() is None, proc.stdout.read().decode()
    # the second run's launch is under way once its log is opened (a fixed wait could outlast a fast run)
    while time.time() < deadline and len([p for p in statuses.iterdir() if p.suffix == ".log"]) < 2:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read().decode()
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and everything it started in its session
    proc.wait()
    (done,) = [p.stem for p in statuses.iterdir() if p.suffix == ".json"]
    time.sleep(2.0)
    again = subprocess.run([sys.executable, "-m", "threestudio_lucid.sweep", *argv], cwd=tmp_path,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 already finished, 1 to run" in again.stdout
    missing = {"a_penguin-seed0", "a_red_cube-seed0"} - {done}
    assert f"[1/1] lucid-sds-toy/{missing.pop()}: done" in again.stdout
    manifest = json.loads((out / "sweep.json").read_text())
    assert [r["state"] for r in manifest["runs"]] == ["done", "done"]
