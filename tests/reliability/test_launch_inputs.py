"""lucid-launch on bad input: one ``error:`` line naming the key, file or value, exit code 2, no
traceback, found before the heavy imports when the config alone is wrong, and no run folder left
behind (or overwritten).

Most cases run the console script on the CPU configs users run (``configs/lucid-ism-cpu.yaml``);
those that need a trained run share one 1-step training on the tiny Stable Diffusion pipeline.
"""
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from cpu_runs import the_error

from threestudio_lucid.errors import ConfigError
from threestudio_lucid.host import launch
from threestudio_lucid.host.utils.config import load_config, safe_folder_name

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(REPO, "custom", "threestudio-lucid", "configs")
ISM_CPU = os.path.join(CONFIGS, "lucid-ism-cpu.yaml")
PROMPT = "system.prompt_processor.prompt=a cat"
HEAVY_MODULES = ("torch", "pytorch_lightning", "lightning_fabric", "diffusers", "transformers")


def console_script():
    return shutil.which("lucid-launch") or os.path.join(os.path.dirname(sys.executable), "lucid-launch")


def launch_cli(cwd, *args, stdout=None):
    """``lucid-launch ARGS`` in ``cwd``: (exit code, stderr); stdout goes into the list ``stdout``."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run([console_script(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if stdout is not None:
        stdout.append(proc.stdout)
    return proc.returncode, proc.stderr


def tree(root):
    """Every path under ``root``, relative, or None when it does not exist."""
    if not os.path.exists(root):
        return None
    found = set()
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            found.add(os.path.relpath(os.path.join(base, name), root))
    return found


def tiny_models(path):
    return [
        f"system.prompt_processor.pretrained_model_name_or_path={path}",
        f"system.guidance.pretrained_model_name_or_path={path}",
    ]


# a short CPU run: 1 step, 1 validation view, 2 test views
SHORT = ["trainer.max_steps=1", "trainer.val_check_interval=1", "data.n_val_views=1", "data.n_test_views=2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_sd_path):
    """One finished --train with use_timestamp=false and the progress bar off (case 1's last item):
    the earlier run that cases 4b and 5 must not write into."""
    work = tmp_path_factory.mktemp("trained")
    stdout = []
    code, stderr = launch_cli(
        work, "--config", ISM_CPU, "--train", PROMPT, *tiny_models(tiny_sd_path), *SHORT,
        "trainer.enable_progress_bar=false", "use_timestamp=false", "tag=first", "exp_root_dir=outputs",
        stdout=stdout,
    )
    return work, os.path.join(work, "outputs", "lucid-ism-cpu", "first"), code, stderr + stdout[0]


# ---- case 1: bad trainer / data values are one error line, before anything runs ----
@pytest.mark.parametrize(
    "override, named",
    [
        ("trainer.max_steps=abc", "trainer.max_steps='abc'"),
        ("trainer.max_steps=-5", "trainer.max_steps=-5"),
        ("trainer.max_steps=0", "trainer.max_steps=0"),  # --train: 0 steps trains nothing
        ("seed=-1", "seed=-1"),  # Lightning's seed_everything takes 0 .. 2**32 - 1
        ("data.width=0", "data.width=0"),
        ("data.batch_size=0", "data.batch_size=0"),
    ],
)
def test_bad_trainer_and_data_values_are_one_error_line(tmp_path, override, named):
    code, stderr = launch_cli(tmp_path, "--config", ISM_CPU, "--train", PROMPT, override, "exp_root_dir=outputs")
    line = the_error(code, stderr)
    assert named in line and "on the command line" in line
    if "max_steps" in override:
        assert "-1 for no limit" in line
    assert tree(tmp_path / "outputs") is None


@pytest.mark.parametrize(
    "cfg, named",
    [
        ({"width": 0}, "data.width=0"),
        ({"batch_size": 0}, "data.batch_size=0"),
        ({"eval_width": 0}, "data.eval_width=0"),
        ({"height": [64, 0], "width": [64, 64], "batch_size": [1, 1], "resolution_milestones": [10]}, "data.height=[64, 0]"),
    ],
)
def test_random_camera_datamodule_rejects_zero_sizes(cfg, named):
    # the host's own data module says so too (the launcher's check covers any data module's basics)
    from threestudio_lucid.host.data.uncond import RandomCameraDataModule

    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        RandomCameraDataModule(cfg)


def test_progress_bar_can_be_switched_off(trained):
    _, run_dir, code, output = trained  # output: stderr + stdout
    assert code == 0, output[-3000:]
    assert "error:" not in output and "Traceback" not in output
    assert os.path.isfile(os.path.join(run_dir, "ckpts", "last.ckpt"))
    assert os.path.isfile(os.path.join(run_dir, "save", "point_cloud.ply"))
    assert "Epoch 0:" not in output  # Lightning's bar prints "Epoch 0: ..." (on stdout) when it is on


# ---- case 2: a config error comes before torch, Lightning and the components are imported ----
@pytest.mark.parametrize("entry", ["console script", "python -m"])
def test_config_error_is_found_before_the_heavy_imports(tmp_path, entry):
    args = ["--config", ISM_CPU, "--train", PROMPT, "trainer.max_steps=abc", "exp_root_dir=outputs"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if entry == "console script":
        cmd = [sys.executable, "-X", "importtime", console_script(), *args]
    else:
        cmd = [sys.executable, "-X", "importtime", "-m", "threestudio_lucid.host.launch", *args]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    messages = "\n".join(line for line in proc.stderr.splitlines() if not line.startswith("import time:"))
    assert "trainer.max_steps='abc'" in the_error(proc.returncode, messages)
    heavy = sorted(m for m in imported if m.split(".")[0] in HEAVY_MODULES)
    assert heavy == [], heavy[:10]
    assert "omegaconf" in imported
    assert tree(tmp_path / "outputs") is None


# ---- case 3: messages name the full key and where it came from ----
def test_unknown_nested_key_names_full_key_and_command_line(tmp_path, monkeypatch, capsys, tiny_sd_path):
    monkeypatch.chdir(tmp_path)
    code = launch.main(["--config", ISM_CPU, "--train", PROMPT, *tiny_models(tiny_sd_path),
                        "system.guidance.nonexistent=1", "exp_root_dir=outputs"])
    line = the_error(code, capsys.readouterr().err)
    assert "'system.guidance.nonexistent' on the command line" in line
    assert ISM_CPU not in line
    assert tree(tmp_path / "outputs") is None  # case 4a: the run folder made before the error is gone


def test_missing_prompt_names_the_prompt_key(tmp_path):
    code, stderr = launch_cli(tmp_path, "--config", ISM_CPU, "--train", "exp_root_dir=outputs")
    line = the_error(code, stderr)
    assert "Missing mandatory value 'system.prompt_processor.prompt'" in line
    assert "system.prompt_processor.prompt=" in line  # how to set it
    assert "'tag'" not in line
    assert tree(tmp_path / "outputs") is None


def test_empty_exp_root_dir_is_named(tmp_path):
    code, stderr = launch_cli(tmp_path, "--config", ISM_CPU, "--train", PROMPT, "exp_root_dir=")
    assert the_error(code, stderr).startswith("error: exp_root_dir=None on the command line: must name a folder")
    assert os.listdir(tmp_path) == []


def test_empty_prompt_names_the_prompt_key(tmp_path):
    code, stderr = launch_cli(tmp_path, "--config", ISM_CPU, "--train", "system.prompt_processor.prompt=",
                              "exp_root_dir=outputs")
    line = the_error(code, stderr)
    assert line.startswith("error: system.prompt_processor.prompt is empty on the command line: give the prompt")
    assert tree(tmp_path / "outputs") is None


@pytest.mark.parametrize(
    "override, start",
    [
        ("system.loss.lambda_ism=abc", "error: system.loss.lambda_ism='abc' is not a number or a C() schedule"),
        ("system.loss.lambda_tv=-1", "error: system.loss.lambda_tv=-1 is out of range: it must be a number >= 0"),
        ("data.fovy_range=[1]", "error: data.fovy_range=[1] must be two numbers [low, high]"),
        ("data.polar_range=[105,45]", "error: data.polar_range=[105, 45] must be two numbers [low, high]"),
        ("system.geometry.init_num_pts=0", "error: system.geometry.init_num_pts=0 must be a positive integer"),
        ("system.renderer.scale_noise_prob=2", "error: system.renderer.scale_noise_prob must be in [0, 1]"),
    ],
)
def test_bad_component_values_are_one_error_line_naming_the_full_key(tmp_path, monkeypatch, capsys, tiny_sd_path,
                                                                      override, start):
    monkeypatch.chdir(tmp_path)
    code = launch.main(["--config", ISM_CPU, "--train", PROMPT, *tiny_models(tiny_sd_path), override,
                        "exp_root_dir=outputs"])
    line = the_error(code, capsys.readouterr().err)
    assert line.startswith(start), line
    assert tree(tmp_path / "outputs") is None


# ---- case 4: run folders ----
def test_failed_launch_removes_only_the_folders_it_made(tmp_path, monkeypatch, capsys, tiny_sd_path):
    monkeypatch.chdir(tmp_path)
    earlier = tmp_path / "outputs" / "lucid-ism-cpu" / "earlier@20240101-000000"
    (earlier / "save").mkdir(parents=True)
    (earlier / "save" / "point_cloud.ply").write_text("user data")
    before = tree(tmp_path / "outputs")
    code = launch.main(["--config", ISM_CPU, "--train", PROMPT, *tiny_models(tiny_sd_path),
                        "system.guidance.nonexistent=1", "exp_root_dir=outputs"])
    assert "system.guidance.nonexistent" in the_error(code, capsys.readouterr().err)
    assert tree(tmp_path / "outputs") == before


def test_train_into_an_existing_run_folder_is_refused(trained):
    work, run_dir, code, _ = trained
    assert code == 0
    before = {p: os.path.getmtime(os.path.join(run_dir, p)) for p in tree(run_dir)}
    runs_before = sorted(os.listdir(os.path.dirname(run_dir)))
    code, stderr = launch_cli(
        work, "--config", ISM_CPU, "--train", PROMPT, *SHORT, "use_timestamp=false", "tag=first",
        "exp_root_dir=outputs",
    )
    line = the_error(code, stderr)
    assert "'outputs/lucid-ism-cpu/first' already exists" in line
    assert "tag=" in line and "use_timestamp=true" in line
    assert {p: os.path.getmtime(os.path.join(run_dir, p)) for p in tree(run_dir)} == before
    assert sorted(os.listdir(os.path.dirname(run_dir))) == runs_before


def test_export_of_an_existing_run_writes_into_a_new_folder(trained, tiny_sd_path):
    work, run_dir, code, _ = trained
    assert code == 0
    before = {p: os.path.getmtime(os.path.join(run_dir, p)) for p in tree(run_dir)}
    runs_before = set(os.listdir(os.path.dirname(run_dir)))
    code, stderr = launch_cli(
        work, "--config", ISM_CPU, "--export", PROMPT, *tiny_models(tiny_sd_path), "use_timestamp=false",
        "tag=first", "exp_root_dir=outputs", f"resume={os.path.join(run_dir, 'ckpts', 'last.ckpt')}",
        "system.exporter.resolution=32",  # the mesh is checked elsewhere: here, where files go
    )
    assert code == 0, stderr[-3000:]
    assert {p: os.path.getmtime(os.path.join(run_dir, p)) for p in tree(run_dir)} == before
    others = sorted(set(os.listdir(os.path.dirname(run_dir))) - runs_before)
    assert len(others) == 1 and others[0].startswith("first@"), others
    assert os.path.isfile(os.path.join(os.path.dirname(run_dir), others[0], "save", "it1-export", "point_cloud.ply"))


def test_trial_folder_name_is_safe_and_stays_inside_exp_root_dir(tmp_path):
    root = tmp_path / "outputs"
    long_a, long_b = "a" * 1990 + "0123456789", "a" * 1990 + "9876543210"
    dirs = {}
    for prompt in ["../../../x", long_a, long_b, "un chat très mignon 一只猫", "a cat"]:
        cfg = load_config(ISM_CPU, cli_args=[f"system.prompt_processor.prompt={prompt}", f"exp_root_dir={root}"])
        assert cfg.tag == prompt.replace(" ", "_")  # the snapshot keeps the prompt's text
        assert os.path.dirname(cfg.trial_dir) == str(root / "lucid-ism-cpu")
        assert os.path.isdir(cfg.trial_dir)
        name = os.path.basename(cfg.trial_dir).rsplit("@", 1)[0]
        assert len(name) <= 100 and name.isascii() and ".." not in name and "/" not in name
        dirs[prompt] = name
    assert dirs["a cat"] == "a_cat"  # threestudio's names where they are already safe
    assert dirs["un chat très mignon 一只猫"].startswith("un_chat_tres_mignon_")
    assert dirs[long_a] != dirs[long_b]
    assert sorted(os.listdir(tmp_path)) == ["outputs"]  # nothing escaped exp_root_dir
    assert safe_folder_name("..") != safe_folder_name(".") and not safe_folder_name("..").startswith(".")


@pytest.mark.parametrize("where", ["/proc/x", "under a file"])
def test_unusable_exp_root_dir_is_named(tmp_path, where):
    if where == "under a file":
        (tmp_path / "notes.txt").write_text("a file")
        where = str(tmp_path / "notes.txt" / "outputs")
    code, stderr = launch_cli(tmp_path, "--config", ISM_CPU, "--train", PROMPT, f"exp_root_dir={where}")
    assert f"exp_root_dir='{where}'" in the_error(code, stderr)
    assert sorted(os.listdir(tmp_path)) == ([] if where == "/proc/x" else ["notes.txt"])


# ---- case 5: resume from something that is not a (complete) checkpoint ----
@pytest.mark.parametrize("kind", ["truncated", "ply", "text"])
@pytest.mark.parametrize("mode", ["--test", "--export", "--train"])
def test_resume_from_a_non_checkpoint_is_named(trained, tmp_path, kind, mode):
    _, run_dir, code, _ = trained
    assert code == 0
    if kind == "truncated":
        bad = tmp_path / "last.ckpt"
        data = open(os.path.join(run_dir, "ckpts", "last.ckpt"), "rb").read()
        bad.write_bytes(data[: len(data) // 2])
    elif kind == "ply":
        bad = os.path.join(run_dir, "save", "point_cloud.ply")
    else:
        bad = tmp_path / "notes.ckpt"
        bad.write_text("not a checkpoint\n")
    code, stderr = launch_cli(tmp_path, "--config", ISM_CPU, mode, PROMPT, f"resume={bad}", "exp_root_dir=outputs")
    line = the_error(code, stderr)
    assert f"resume='{bad}'" in line
    assert ("not a complete checkpoint" if kind == "truncated" else "not a checkpoint") in line
    assert tree(tmp_path / "outputs") is None


def test_checkpoint_that_fails_to_load_is_named(tmp_path, monkeypatch, capsys):
    # a complete zip with torch's layout passes the cheap check; loading it is what fails
    bad = tmp_path / "broken.ckpt"
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr("broken/data.pkl", b"not a pickle")
        archive.writestr("broken/version", b"3\n")
    monkeypatch.chdir(tmp_path)
    code = launch.main(["--config", ISM_CPU, "--test", PROMPT, f"resume={bad}", "exp_root_dir=outputs"])
    line = the_error(code, capsys.readouterr().err)
    assert f"resume='{bad}' is not a complete checkpoint" in line
    assert tree(tmp_path / "outputs") is None
