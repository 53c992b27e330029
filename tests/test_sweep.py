"""lucid-sweep: a real sweep of 2 prompts x 2 toy configs x 1 seed on a local Ray with two CPU workers,
resumed after a run is lost; and its input errors."""
import json
import os
import shutil

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
            "trainer.enable_progress_bar=false"]
    return ["--out", str(out), "--prompts", "a penguin", "a red cube",
            "--config", os.path.join(CONFIGS, "lucid-sds-toy.yaml"),
            "--config", f"{os.path.join(CONFIGS, 'lucid-ism-toy.yaml')} system.guidance.warmup_iter=1",
            "--seeds", "0", "--num-cpus", "2", "--cpus-per-task", "1",
            *[a for o in tiny for a in ("--override", o)]]


def test_a_sweep_runs_on_ray_writes_its_manifest_and_resumes_only_what_is_missing(world, tmp_path, monkeypatch, capsys):
    pytest.importorskip("ray")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "sweep"
    assert sweep.main(sweep_args(out, world)) == 0
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
    printed = capsys.readouterr().out
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
        (["--prompts", "a cat", "--config", sds, "--threestudio", str(tmp_path)], "holds no launch.py"),
    ]
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
