"""scripts/gpu_check.sh and its step 3 (scripts/gpu_ism_step.py) on the CPU: the script parses, refuses
an unprepared carry with one line, and the step benchmark measures a real ISM step through the
launcher's system, data module and Lightning loop (tiny architecture, a few steps). The driver itself
runs on the tree the GPU machine gets (no .git), with the GPU machine's python played by
gpu_machine_stub.py: what travels is measured once, each CUDA library is built once (a step that
compiles fails), a CUDA backend that does not load fails the parity step with its build log, and
--dry-run rehearses on such a copy."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from repo_scripts import load_repo_script

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


# ---------------------------------------------------------------------------------------------
# The driver on the tree the GPU machine gets: a copy of what travels, without .git, with a placeholder
# carry; the GPU machine's python (CUDA, pip, nvcc through torch's extension builds) is played by
# gpu_machine_stub.py, and everything else is the driver as it runs there.
# ---------------------------------------------------------------------------------------------
STUB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_machine_stub.py")
MIB = 1048576
with open(SCRIPT) as _f:
    SCRIPT_TEXT = _f.read()
LIMIT_MIB = int(re.search(r"^CARRY_LIMIT_MIB=(\d+)", SCRIPT_TEXT, re.M).group(1))
WHEELS = re.search(r"^WHEELS=\((.*)\)", SCRIPT_TEXT, re.M).group(1).split()
INRIA_FILES = ("setup.py", "ext.cpp", "rasterize_points.cu", "cuda_rasterizer/forward.cu",
               "cuda_rasterizer/backward.cu", "cuda_rasterizer/rasterizer_impl.cu",
               "diff_gaussian_rasterization/__init__.py", "third_party/glm/glm/glm.hpp")
STEPS = ("00 setup", "01 parity", "02 bench", "03 ism-step", "04 e2e")


def travelling_files():
    """What the device tool sends from this checkout: what git tracks or would add (without git, the
    tree minus the usual ignored folders)."""
    if os.path.exists(os.path.join(REPO, ".git")):
        listed = subprocess.run(["git", "-C", REPO, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                capture_output=True, check=True).stdout.decode()
        return [p for p in listed.split("\0") if p]
    skip = {".git", ".gpu_carry", "gpu_check_out", "__pycache__", "outputs", ".pytest_cache", "build", "dist"}
    found = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in skip and not d.startswith(".venv") and not d.endswith(".egg-info")]
        found += [os.path.relpath(os.path.join(root, f), REPO) for f in files]
    return found


def copy_of_the_tree(dest):
    for rel in travelling_files():
        src, dst = os.path.join(REPO, rel), os.path.join(dest, rel)
        if not os.path.lexists(src) or os.path.isdir(src):
            continue
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.islink(src):
            os.symlink(os.readlink(src), dst)
        else:
            shutil.copy2(src, dst)
    return dest


def bytes_in(folder):
    """Files and links under folder, as they would travel (no .git)."""
    total = 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d not in (".git", "__pycache__")]
        links = [d for d in dirs if os.path.islink(os.path.join(root, d))]  # travel as links
        total += sum(os.lstat(os.path.join(root, f)).st_size for f in files + links)
    return total


def make_carry(tree, travelling_mib):
    """A placeholder .gpu_carry in tree: one file per carried wheel and inria source file, the last wheel
    padded (sparse) so that the tree and the carry come to travelling_mib MiB. Returns the carry's bytes."""
    carry = os.path.join(tree, ".gpu_carry")
    for spec in WHEELS:
        name, version = spec.split("==")
        write_file(os.path.join(carry, "whl", f"{name.replace('-', '_')}-{version}-py3-none-any.whl"), "wheel")
    for rel in INRIA_FILES:
        write_file(os.path.join(carry, "src", "diff-gaussian-rasterization", rel), "source\n")
    padded = os.path.join(carry, "whl", sorted(os.listdir(os.path.join(carry, "whl")))[-1])
    os.truncate(padded, travelling_mib * MIB - (bytes_in(tree) - os.path.getsize(padded)))
    return bytes_in(carry)


def write_file(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def sparse_file(path, size):
    with open(path, "a"):
        pass
    os.truncate(path, size)


def _mkdir(*parts):
    path = os.path.join(*parts)
    os.makedirs(path, exist_ok=True)
    return path


def run_driver(tmp_path, tree, *args, **stub_env):
    """scripts/gpu_check.sh of tree, on the stubbed GPU machine; returns (process, stub events, summary)."""
    bin_dir = _mkdir(tmp_path, "bin")
    with open(os.path.join(bin_dir, "python"), "w") as f:
        f.write(f'#!/bin/sh\nexec "{sys.executable}" "{STUB}" "$@"\n')
    with open(os.path.join(bin_dir, "nvidia-smi"), "w") as f:
        f.write("#!/bin/sh\necho 'NVIDIA H100 80GB HBM3, 580.159.04, 81559 MiB'\n")
    for name in ("python", "nvidia-smi"):
        os.chmod(os.path.join(bin_dir, name), 0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPU_CHECK_", "STUB_", "TORCH_CUDA_ARCH_LIST",
                                                                   "TORCH_EXTENSIONS_DIR", "MAX_JOBS", "LUCID_"))}
    log = tmp_path / "stub.jsonl"
    env.update(PYTHON=os.path.join(bin_dir, "python"), PATH=bin_dir + os.pathsep + env["PATH"],
               HOME=_mkdir(tmp_path, "home"), GPU_CHECK_WORK=str(tmp_path / "work"), OUT=str(tmp_path / "out"), STUB_LOG=str(log),
               OMP_WAIT_POLICY="PASSIVE", **stub_env)
    proc = subprocess.run(["bash", os.path.join(tree, "scripts", "gpu_check.sh"), *args], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=300)
    events = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    summary = tmp_path / "out" / "summary.txt"
    return proc, events, summary.read_text() if summary.exists() else ""


@pytest.fixture
def gpu_tree(tmp_path):
    """The tree as the GPU machine gets it (no .git) with a carry that fits once but not twice."""
    tree = copy_of_the_tree(str(tmp_path / "tree"))
    target = LIMIT_MIB - 2
    carry = make_carry(tree, target)
    assert bytes_in(tree) == target * MIB
    assert bytes_in(tree) + carry > LIMIT_MIB * MIB  # counting the carry twice would refuse it
    return tree


def test_gpu_run_without_git_measures_what_travels_once_and_builds_each_extension_once(tmp_path, gpu_tree):
    proc, events, summary = run_driver(tmp_path, gpu_tree)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"travels: {LIMIT_MIB - 2}.0 MiB (no .git: the tree as it is" in summary
    for step in STEPS:
        assert f"step {step}: ok" in summary
    assert "rebuilt" not in summary
    # one compile of each CUDA library, in setup, for the device's arch, under the run's own folder;
    # every later step loads that build with the same environment
    work = str(tmp_path / "work")
    builds = [e for e in events if e["event"] in ("gsplat-compile", "inria-compile")]
    assert sorted(e["event"] for e in builds) == ["gsplat-compile", "inria-compile"], builds
    assert [e["step"] for e in builds] == ["setup", "setup"]
    loads = [e for e in events if e["event"] == "gsplat-load"]
    assert {e["step"] for e in loads} == {"parity", "bench", "ism-step", "e2e"}
    in_steps = [e for e in events if e["step"] is not None]
    environments = {(e["arch"], e["extensions_dir"], e["max_jobs"]) for e in in_steps}
    assert len(environments) == 1 and environments.pop()[:2] == ("9.0", os.path.join(work, "torch_extensions"))
    assert all(e["build"].startswith(work) for e in builds + loads)
    assert not (tmp_path / "home" / ".cache").exists()
    # the steps ran on the copy (inria's pip build in its own copy of the carried source)
    assert {e["cwd"] for e in in_steps if e["event"] != "inria-compile"} == {gpu_tree}


def test_a_step_that_compiles_fails_and_the_summary_says_what_it_rebuilt(tmp_path, gpu_tree):
    proc, events, summary = run_driver(tmp_path, gpu_tree, STUB_REBUILD_IN="bench")
    assert proc.returncode == 1
    assert [e["step"] for e in events if e["event"] == "gsplat-compile"] == ["setup", "bench"]
    assert "step 02 bench: FAILED (it compiled)" in summary
    rebuilt = [line for line in summary.splitlines() if "rebuilt" in line]
    assert len(rebuilt) == 1 and rebuilt[0].startswith("step 02 bench rebuilt")
    assert "gsplat_cuda (4 files)" in rebuilt[0]  # its objects and library, rewritten
    for step in ("00 setup", "01 parity", "03 ism-step", "04 e2e"):
        assert f"step {step}: ok" in summary


@pytest.mark.parametrize("tests_honour_the_variable", [True, False], ids=["tests-fail", "tests-skip"])
def test_a_cuda_backend_that_did_not_build_fails_parity_with_its_build_log(tmp_path, gpu_tree,
                                                                          tests_honour_the_variable):
    stub = dict(STUB_INRIA_BUILD="fail")
    if not tests_honour_the_variable:  # belt and braces: a skip fails the step whatever the tests do
        stub["STUB_PYTEST_IGNORES_REQUIRE"] = "1"
    proc, events, summary = run_driver(tmp_path, gpu_tree, **stub)
    assert proc.returncode == 1
    assert [e["require"] for e in events if e["event"] == "pytest"] == ["1"]
    assert "step 00 setup: ok" in summary and "step 01 parity: FAILED (exit 1)" in summary
    assert "--- last 15 lines of inria-build.log" in summary
    assert 'rasterizer_impl.cu(41): error: namespace "std" has no member "uint32_t"' in summary
    assert "--- last 15 lines of gsplat-build.log" in summary
    for step in ("02 bench", "03 ism-step", "04 e2e"):
        assert f"step {step}: ok" in summary


def test_what_travels_over_the_limit_is_one_error_line_before_anything_is_written(tmp_path):
    tree = copy_of_the_tree(str(tmp_path / "tree"))
    make_carry(tree, LIMIT_MIB + 1)
    proc, events, summary = run_driver(tmp_path, tree)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert f"is {LIMIT_MIB + 1}.0 MiB (no .git: the tree as it is" in errors[0] and f"over {LIMIT_MIB} MiB" in errors[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


def test_dry_run_rehearses_on_a_copy_without_git_of_what_git_would_send(tmp_path):
    tree = copy_of_the_tree(str(tmp_path / "checkout"))
    make_carry(tree, 10)
    subprocess.run(["git", "init", "-q", tree], check=True)
    subprocess.run(["git", "-C", tree, "add", "-A"], check=True)  # .gpu_carry/ is ignored
    write_file(os.path.join(tree, "notes.txt"), "untracked, not ignored: it travels\n")
    os.makedirs(os.path.join(tree, "outputs"))
    sparse_file(os.path.join(tree, "outputs", "big.bin"), 2 * LIMIT_MIB * MIB)  # ignored: it stays
    proc, events, summary = run_driver(tmp_path, tree, "--dry-run", STUB_CUDA="0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    copy = str(tmp_path / "work" / "tree")
    assert {e["cwd"] for e in events if e["step"] is not None} == {copy}
    assert not os.path.exists(os.path.join(copy, ".git")) and not os.path.exists(os.path.join(copy, "outputs"))
    assert os.path.exists(os.path.join(copy, "notes.txt")) and os.path.isdir(os.path.join(copy, ".gpu_carry", "whl"))
    # git's answer in the checkout and the tree as it is in the copy measure the same thing
    sent = re.search(r"travels \(([\d.]+) MiB \(as git sends it", proc.stdout)
    there = re.search(r"travels: ([\d.]+) MiB \(no \.git: the tree as it is", summary)
    assert sent and there and sent.group(1) == there.group(1) == f"{bytes_in(copy) / MIB:.1f}"
    for step in STEPS:
        assert f"step {step}: ok" in summary
    assert [e["step"] for e in events if e["event"] == "cpu-kernel-compile"] == ["setup"]

    # an untracked file that git does not ignore travels, so it counts
    sparse_file(os.path.join(tree, "data.bin"), LIMIT_MIB * MIB)
    again = tmp_path / "again"
    again.mkdir()
    proc, _, _ = run_driver(again, tree, "--dry-run", STUB_CUDA="0")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "(as git sends it" in errors[0], proc.stderr


def test_module_report_fails_when_a_carried_module_does_not_come_from_the_carried_site(tmp_path, monkeypatch, capsys):
    report = load_repo_script("scripts/gpu_check_report.py")
    monkeypatch.setattr(report, "MODULES", ())  # only the carried ones: torch & co. are not the point here
    site = tmp_path / "site"
    (site / "lucid_carried_probe").mkdir(parents=True)
    (site / "lucid_carried_probe" / "__init__.py").write_text("__version__ = '1.0'\n")
    monkeypatch.syspath_prepend(str(site))
    assert report.main(["modules", str(site), "lucid_carried_probe"]) == 0
    assert f"lucid_carried_probe 1.0 from {site}" in capsys.readouterr().out
    # json is the interpreter's own: a wheel that did not install shows up like this
    assert report.main(["modules", str(site), "lucid_carried_probe", "json"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: carried modules not imported from") and "json (" in error and "\n" not in error


def test_end_to_end_report_names_what_the_run_folder_lacks(tmp_path, capsys):
    report = load_repo_script("scripts/gpu_check_report.py")
    (tmp_path / "lucid-ism" / "run@1" / "save").mkdir(parents=True)
    assert report.main(["e2e", str(tmp_path), "40"]) == 1
    error = capsys.readouterr().err.strip()
    assert "lacks a PLY in save/, save/it40-test.mp4, a checkpoint in ckpts/" in error and "\n" not in error
    assert report.main(["e2e", str(tmp_path)]) == 2
