"""scripts/gpu_check.sh and its step 3 (scripts/gpu_ism_step.py) on the CPU: the script parses, refuses
an unprepared carry with one line, and the step benchmark measures a real ISM step through the
launcher's system, data module and Lightning loop (tiny architecture, a few steps)."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "scripts", "gpu_check.sh")


def test_gpu_check_parses_and_documents_its_modes():
    subprocess.run(["bash", "-n", SCRIPT], check=True)
    out = subprocess.run(["bash", SCRIPT, "--help"], capture_output=True, text=True, check=True).stdout
    for mode in ("--prepare", "--dry-run", "carry=[\".gpu_carry\"]"):
        assert mode in out


def test_an_unprepared_carry_is_one_error_line_saying_to_prepare(tmp_path):
    env = dict(os.environ, GPU_CHECK_CARRY=str(tmp_path / "none"), GPU_CHECK_WORK=str(tmp_path / "work"),
               PYTHON=sys.executable)
    proc = subprocess.run(["bash", SCRIPT, "--dry-run"], capture_output=True, text=True, env=env, cwd=REPO)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "gpu_check.sh --prepare" in errors[0], proc.stderr
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())


def test_unknown_argument_is_one_error_line():
    proc = subprocess.run(["bash", SCRIPT, "--fast"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "error: unknown argument '--fast'; see scripts/gpu_check.sh --help")


@pytest.fixture
def step_json(tiny_sd_path, tmp_path):
    out = tmp_path / "step.json"
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1")
    subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "gpu_ism_step.py"), "--pipeline", tiny_sd_path,
         "--architecture", "tiny", "--resolution", "32", "--views", "2", "--gaussians", "1500",
         "--steps", "2", "--warmup", "1", "--json", str(out)],
        check=True, cwd=tmp_path, env=env, capture_output=True,
    )
    return json.loads(out.read_text())


def test_step_benchmark_reports_every_step_of_a_real_ism_run(step_json):
    s = step_json
    assert len(s["steps"]) == 3 and [r["step"] for r in s["steps"]] == [1, 2, 3]
    assert s["backend"] in ("cpu", "reference") and s["unet_dtype"] == "torch.float32"
    assert s["resolution"] == 32 and s["views"] == 2
    # ISM: DDIM inversion (>= 1 UNet call) then the guided prediction, every step
    assert all(r["unet_calls"] >= 2 for r in s["steps"])
    assert all(r["gaussians"] == 1500 for r in s["steps"])  # no densification before step 100
    assert s["all_losses_finite"] is True
    timed = sorted(r["seconds"] for r in s["steps"][1:])
    assert s["median_step_seconds"] == pytest.approx(sum(timed) / 2, abs=1e-4)
    assert s["projected_minutes"] == pytest.approx(s["median_step_seconds"] * 5000 / 60, abs=0.06)
