"""The plugin under a threestudio launcher, case by case, the same on every host (see conftest).

Each case asserts what a user of threestudio's ``launch.py`` sees: exit code, the trial folder's
files, the metrics the run logged, and that command-line overrides reach the guidance.
"""
import glob
import os

import pytest
import torch

THREESTUDIO_DIR = os.environ.get("THREESTUDIO_DIR", "")  # set: the contract also runs on real threestudio

CONFIGS = "custom/threestudio-lucid/configs"
SHORT_RUN = (
    "trainer.max_steps=3",
    "trainer.log_every_n_steps=1",  # the CPU and toy configs log every 10 steps; these checks read each step
    "trainer.val_check_interval=2",
    "data.n_val_views=1",
    "data.n_test_views=2",
)
TOY_WORLD = (
    "system.prompt_processor.pretrained_model_name_or_path=load/toy-penguin",
    "system.guidance.pretrained_model_name_or_path=load/toy-penguin",
)

# config -> (prompt, overrides, {logged metric: value the overrides must produce})
CASES = {
    "lucid-sds-cpu": (
        "a cat",
        ("system.prompt_processor.use_perp_neg=true", "system.guidance.max_step_percent=0.3"),
        {"train/max_step": 300},
    ),
    "lucid-ism-cpu": (
        "a cat",
        (
            "system.prompt_processor.use_perp_neg=true",
            "system.guidance.delta_t=33",
            "system.guidance.annealing_intervals=false",
        ),
        {"train/delta_t": 33},
    ),
    "lucid-vsd-cpu": (
        "a cat",
        ("system.prompt_processor.use_perp_neg=true", "system.guidance.guidance_scale_lora=0.7"),
        {"train/guidance_scale_lora": 0.7},
    ),
    "lucid-esd-cpu": ("a cat", ("system.guidance.lambda_coeff=0.25",), {"train/lambda_coeff": 0.25, "train/guidance_scale_lora": 0.75}),
    "lucid-sds-toy": ("a penguin", TOY_WORLD + ("system.guidance.guidance_scale=5",), {}),
    "lucid-ism-toy": ("a penguin", TOY_WORLD + ("system.guidance.xs_inv_steps=2",), {}),
    "lucid-vsd-toy": ("a penguin", TOY_WORLD, {}),
    "lucid-esd-toy": ("a penguin", TOY_WORLD + ("system.guidance.lambda_coeff=1.0",), {"train/lambda_coeff": 1.0}),
}

_trained = {}


def train(host, tmp_path_factory, config):
    """Train ``config`` once per host for the session (later cases resume from it)."""
    key = (host.name, config)
    if key not in _trained:
        prompt, overrides, _ = CASES[config]
        exp_root = str(tmp_path_factory.mktemp(f"{host.name}-{config}"))
        _trained[key] = host.launch(
            f"{CONFIGS}/{config}.yaml", "train", f"system.prompt_processor.prompt={prompt}",
            *SHORT_RUN, *overrides, exp_root=exp_root,
        )
    return _trained[key]


def resume(host, trained, config, mode):
    """``--test`` or ``--export`` with ``resume=`` the trained run's last checkpoint (same overrides)."""
    prompt, overrides, _ = CASES[config]
    exp_root = os.path.dirname(os.path.dirname(trained.trial_dir))
    # the exporter's options from the command line, as a user sets them (a coarse grid keeps it quick)
    export_options = ("system.exporter_type=lucid-gaussian-mesh-exporter", "system.exporter.resolution=48",
                      "system.exporter.formats=[obj,glb]") if mode == "export" else ()
    return host.launch(
        f"{CONFIGS}/{config}.yaml", mode, f"system.prompt_processor.prompt={prompt}", *SHORT_RUN, *overrides,
        *export_options, f"resume={trained.path('ckpts', 'last.ckpt')}", exp_root=exp_root,
    )


@pytest.mark.parametrize("config", sorted(CASES))
def test_config_trains_validates_tests_and_exports(host, tmp_path_factory, config):
    run = train(host, tmp_path_factory, config).check()
    assert "other-extension loaded" in run.output  # the plugin loads beside another extension
    assert "Cannot import" not in run.output
    for part in ("ckpts/last.ckpt", "configs/parsed.yaml", "save/point_cloud.ply", "save/it3-test.mp4", "save/it2-0.png"):
        assert os.path.isfile(run.path(part)), part
    losses = run.logged("train/loss")
    assert len(losses) == 3 and all(map(torch.isfinite, torch.tensor(losses)))
    if config.endswith("-toy"):
        assert os.path.isfile(run.path("save", "toy_world_scores.json"))
    exported = resume(host, run, config, "export").check()
    assert exported.trial_dir != run.trial_dir  # nothing is written into the trained run
    # the exported splats are the trained ones, not a fresh initialisation
    assert torch.equal(_read_ply_xyz(exported.path("save", "it3-export", "point_cloud.ply")), _read_ply_xyz(run.path("save", "point_cloud.ply")))
    # and the mesh made from them (lucid-gaussian-mesh-exporter, the system's default), in the formats asked for
    import trimesh

    assert not os.path.exists(exported.path("save", "it3-export", "model.ply"))
    obj = trimesh.load(exported.path("save", "it3-export", "model.obj"), force="mesh")
    glb = trimesh.load(exported.path("save", "it3-export", "model.glb"), force="mesh")
    assert len(glb.faces) == len(obj.faces) > 0 and glb.is_watertight and glb.volume > 0
    assert glb.visual.vertex_colors.shape == (len(glb.vertices), 4)


@pytest.mark.parametrize("config", sorted(c for c in CASES if CASES[c][2]))
def test_command_line_overrides_reach_the_guidance(host, tmp_path_factory, config):
    run = train(host, tmp_path_factory, config).check()
    for key, value in CASES[config][2].items():
        logged = run.logged(key)
        assert logged and all(v == pytest.approx(value) for v in logged), (key, logged)


if THREESTUDIO_DIR:  # a comparison of the two hosts: only where both exist

    @pytest.mark.parametrize("config", sorted(CASES))
    def test_the_same_run_gives_the_same_losses_on_both_hosts(both_hosts, tmp_path_factory, config):
        """Same config, seed and models: the bundled host must not silently differ from threestudio
        (config parsing, C() schedules, prompt embeddings, seeding, the training loop)."""
        bundled, real = (train(h, tmp_path_factory, config).check() for h in both_hosts)
        torch.testing.assert_close(
            torch.tensor(bundled.logged("train/loss")), torch.tensor(real.logged("train/loss")), rtol=1e-5, atol=0
        )


def _read_ply_xyz(path):
    from plyfile import PlyData

    vertex = PlyData.read(path)["vertex"]
    return torch.tensor([list(vertex["x"]), list(vertex["y"]), list(vertex["z"])])


@pytest.mark.parametrize("config", ["lucid-ism-cpu", "lucid-vsd-cpu"])
def test_test_stage_resumes_from_the_checkpoint(host, tmp_path_factory, config):
    trained = train(host, tmp_path_factory, config).check()
    tested = resume(host, trained, config, "test").check()
    assert tested.trial_dir != trained.trial_dir
    assert os.path.isfile(tested.path("save", "it3-test.mp4"))
    assert torch.equal(_read_ply_xyz(tested.path("save", "point_cloud.ply")), _read_ply_xyz(trained.path("save", "point_cloud.ply")))


THREESTUDIO_SDS = (
    "system.prompt_processor.prompt=a cat",
    "system.prompt_processor.pretrained_model_name_or_path=load/tiny-sd",
    "system.guidance.pretrained_model_name_or_path=load/tiny-sd",
    "system.guidance.half_precision_weights=false",
    "data.batch_size=2",
    "data.width=32",
    "data.height=32",
    "data.eval_width=32",
    "data.eval_height=32",
    "system.geometry.init_num_pts=512",
) + SHORT_RUN


def test_threestudio_sds_guidance_on_the_gaussian_system(host, tmp_path, workspace):
    """threestudio's own ``stable-diffusion-guidance`` (a ``BaseObject``, not a torch module) and
    prompt processor drive ``lucid-gaussian-system``: the side-by-side baseline. The bundled host
    does not ship threestudio's guidances: there the same command must end in one clear line."""
    config = os.path.join(workspace, "configs", "gaussian-threestudio-sds.yaml")
    run = host.launch(config, "train", *THREESTUDIO_SDS, exp_root=str(tmp_path / "outputs"))
    if host.name == "bundled":
        assert run.returncode == 2, run.output[-3000:]
        errors = [line for line in run.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "stable-diffusion-guidance" in errors[0] and "threestudio" in errors[0], errors
        assert "Traceback" not in run.output
        return
    run.check()
    assert os.path.isfile(run.path("save", "point_cloud.ply"))
    assert len(run.logged("train/loss_sds")) == 3
    exported = host.launch(
        config, "export", *THREESTUDIO_SDS, f"resume={run.path('ckpts', 'last.ckpt')}", exp_root=str(tmp_path / "outputs")
    ).check()
    assert os.path.isfile(exported.path("save", "it3-export", "point_cloud.ply"))


def test_a_prompt_over_the_text_encoders_limit_is_named(host, tmp_path):
    """threestudio's prompt processor pads to 77 tokens but never truncates, so its text encoder
    crashes on a longer prompt ("prompt embedding process failed!" from its child process). Under
    either host the run stops before training with the offending key named."""
    negative = ", ".join(["blurry"] * 80)
    run = host.launch(
        f"{CONFIGS}/lucid-sds-cpu.yaml", "train", "system.prompt_processor.prompt=a cat",
        f"system.prompt_processor.negative_prompt={negative}", *SHORT_RUN, exp_root=str(tmp_path / "outputs"),
    )
    assert run.returncode != 0
    named = [line for line in run.output.splitlines() if "system.prompt_processor.negative_prompt" in line]
    assert named and "tokens long" in named[-1], run.output[-3000:]
    assert "prompt embedding process failed" not in run.output
    assert not glob.glob(os.path.join(str(tmp_path), "outputs", "*", "*", "ckpts", "*.ckpt"))  # stopped before training


def _read_ckpt_xyz(path):
    return torch.load(path, map_location="cpu")["state_dict"]["geometry._xyz"]


def test_resume_of_another_guidance_is_one_line_and_system_weights_take_its_gaussians(host, tmp_path_factory):
    """A VSD run's checkpoint given to an ISM config: resume= ends in one line naming both and the way
    to take the Gaussians alone; that way (threestudio's system.weights= with
    system.weights_ignore_modules=[guidance]) trains ISM from the VSD run's Gaussians."""
    vsd = train(host, tmp_path_factory, "lucid-vsd-cpu").check()
    ckpt = vsd.path("ckpts", "last.ckpt")
    exp_root = str(tmp_path_factory.mktemp(f"{host.name}-vsd-into-ism"))
    ism = f"{CONFIGS}/lucid-ism-cpu.yaml"
    refused = host.launch(ism, "test", "system.prompt_processor.prompt=a cat", *SHORT_RUN, f"resume={ckpt}",
                          exp_root=exp_root)
    assert refused.returncode != 0
    named = [line for line in refused.output.splitlines() if "does not fit this config" in line]
    assert named, refused.output[-3000:]
    assert "lucid-vsd-guidance with a trained LoRA" in named[-1] and "expects lucid-ism-guidance" in named[-1]
    assert f"system.weights={ckpt} system.weights_ignore_modules=[guidance]" in named[-1]
    assert "Unexpected key(s) in state_dict" not in refused.output

    # no position updates and no densification in 3 steps: the run's Gaussians are the VSD run's
    run = host.launch(
        ism, "train", "system.prompt_processor.prompt=a cat", *SHORT_RUN, f"system.weights={ckpt}",
        "system.weights_ignore_modules=[guidance]", "system.geometry.position_lr=0", exp_root=exp_root,
    ).check()
    vsd_xyz, ism_xyz = _read_ckpt_xyz(ckpt), _read_ckpt_xyz(run.path("ckpts", "last.ckpt"))
    assert ism_xyz.shape == vsd_xyz.shape and vsd_xyz.shape[0] != 2000  # not the ISM config's own 2000
    assert torch.equal(ism_xyz, vsd_xyz)
    assert len(run.logged("train/loss_ism")) == 3
    assert "without resume=" not in run.output  # its test stage evaluates the trained Gaussians


def test_evaluation_without_resume_says_so_once(host, tmp_path):
    """--export with neither resume= nor system.weights= exports the initial Gaussians: one console line."""
    run = host.launch(
        f"{CONFIGS}/lucid-ism-cpu.yaml", "export", "system.prompt_processor.prompt=a cat", *SHORT_RUN,
        "system.exporter_type=dummy-exporter", exp_root=str(tmp_path / "outputs"),
    ).check()
    said = [line for line in run.output.splitlines() if "without resume=" in line]
    assert len(said) == 1 and "--export without resume= or system.weights=" in said[0], run.output[-3000:]
    assert "resume=<trial>/ckpts/last.ckpt" in said[0]
