"""What scripts/install_in_threestudio.sh does offline: it runs README.md's install block as README.md has
it, refuses what it cannot use in one line, and the CPU stand-in copes with a CUDA torchvision. The
install itself (network, minutes) is `bash scripts/install_in_threestudio.sh THREESTUDIO_DIR`, or
`bash scripts/conformance.sh THREESTUDIO_DIR --install`."""
import ast
import os
import re
import shlex
import subprocess
import sys

import pytest
import torch
from packaging.requirements import Requirement

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "install_in_threestudio.sh")
CPU_SHIM_DIR = os.path.join(REPO, "scripts", "threestudio_cpu")
MARKER = "<!-- install-in-threestudio -->"


def readme_section(title: str) -> str:
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    start = text.index(f"### {title}\n")
    following = re.search(r"^#{1,3} ", text[start + 4:], re.MULTILINE)
    return text[start:start + 4 + following.start()] if following else text[start:]


def readme_block() -> list:
    """The ```bash fence right after the marker, read here independently of the script."""
    lines = readme_section("Inside threestudio").splitlines()
    at = lines.index(MARKER)
    assert lines[at + 1] == "```bash", lines[at + 1]
    end = lines.index("```", at + 2)
    return lines[at + 2:end]


def run_script(*args, env=None, cwd=REPO):
    return subprocess.run(["bash", SCRIPT, *args], cwd=cwd, env={**os.environ, **(env or {})},
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)


def fake_threestudio(root) -> str:
    """The three files the script checks a threestudio checkout by (nothing of threestudio's)."""
    os.makedirs(os.path.join(root, "threestudio"))
    for name in ("launch.py", "requirements.txt", os.path.join("threestudio", "__init__.py")):
        open(os.path.join(root, name), "w").close()
    return str(root)


def test_the_script_runs_the_readme_block_as_the_readme_has_it():
    proc = run_script("--print-lines")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == readme_block()


def test_the_block_fetches_the_plugin_in_its_first_two_lines_and_uses_it_through_lucid():
    """The script replaces exactly the `git clone` and `LUCID=` lines; every other line must reach the
    plugin through $LUCID, or it would not run the same for the script as for a user."""
    block = readme_block()
    assert block[0].startswith("git clone ") and block[1].startswith("LUCID=")
    rest = block[2:]
    assert not any(line.startswith(("git clone ", "LUCID=")) for line in rest)
    assert not any("../threestudio-lucid" in line for line in rest), rest
    assert any(re.fullmatch(r'pip install --no-deps -e "\$LUCID"', line) for line in rest), rest


def test_every_plugin_dependency_is_installed_by_the_block_or_named_as_threestudios():
    """`--no-deps` installs none of setup.py's install_requires: each must be on one of the block's pip
    lines, or in the README's list of what threestudio's environment already has."""
    tree = ast.parse(open(os.path.join(REPO, "setup.py"), encoding="utf-8").read())
    (requires,) = [ast.literal_eval(node.value) for node in ast.walk(tree)
                   if isinstance(node, ast.keyword) and node.arg == "install_requires"]
    wanted = {Requirement(r).name.lower() for r in requires}
    installed = set()
    for line in readme_block():
        words = shlex.split(line, comments=True)
        if words[:2] == ["pip", "install"]:
            installed |= {Requirement(w).name.lower() for w in words[2:] if not w.startswith("-") and "$" not in w}
    listed = re.search(r"the rest are threestudio's own: ([^.]*)\.", " ".join(readme_section("Inside threestudio").split()))
    assert listed, "README's 'Inside threestudio' lost the sentence 'the rest are threestudio's own: ...'"
    threestudios = {name.strip().lower() for name in listed.group(1).split(",")}
    assert wanted - installed - threestudios == set()


def test_refuses_a_folder_that_is_not_a_threestudio_checkout_in_one_line(tmp_path):
    venv = tmp_path / "venv"
    proc = run_script(str(tmp_path), "--venv", str(venv))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
    assert str(tmp_path) in proc.stderr and "launch.py" in proc.stderr
    assert not venv.exists()


def test_refuses_a_readme_without_the_install_block_in_one_line(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("### Inside threestudio\n\n```bash\npip install something\n```\n")
    venv = tmp_path / "venv"
    proc = run_script(fake_threestudio(tmp_path / "threestudio"), "--venv", str(venv), env={"README": str(readme)})
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
    assert str(readme) in proc.stderr and MARKER in proc.stderr
    assert not venv.exists()


def test_refuses_a_venv_folder_it_did_not_make(tmp_path):
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / "keep.txt").write_text("someone's")
    proc = run_script(fake_threestudio(tmp_path / "threestudio"), "--venv", str(venv))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "did not make it" in proc.stderr, proc.stderr
    assert (venv / "keep.txt").read_text() == "someone's"


@pytest.mark.parametrize("args", [["--steps", "0"], ["--bogus"]])
def test_refuses_a_bad_option_in_one_line(tmp_path, args):
    proc = run_script(fake_threestudio(tmp_path / "threestudio"), *args)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr


def fake_package(root, name, init, version_py=None):
    os.makedirs(os.path.join(root, name))
    with open(os.path.join(root, name, "__init__.py"), "w") as f:
        f.write(init)
    if version_py is not None:
        with open(os.path.join(root, name, "version.py"), "w") as f:
            f.write(version_py)


def import_under_shim(packages, code, cpu=True):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([CPU_SHIM_DIR, str(packages)])}
    env.pop("LUCID_THREESTUDIO_CPU", None)
    if cpu:
        env["LUCID_THREESTUDIO_CPU"] = "1"
    return subprocess.run([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=120)


@pytest.mark.skipif(torch.version.cuda is not None, reason="a CUDA torchvision loads beside a CUDA torch")
def test_the_cpu_shim_stands_in_for_a_cuda_torchvision_and_for_controlnet_aux(tmp_path):
    """PyPI's torchvision beside a CPU torch fails at import ('operator torchvision::nms does not
    exist'), for pytorch_lightning's own imports too; controlnet_aux calls it at import time."""
    broken = "raise RuntimeError('operator torchvision::nms does not exist')\n"
    fake_package(tmp_path, "torchvision", broken, "__version__ = '0.28.0+cu130'\ngit_version = 'x'\n")
    fake_package(tmp_path, "controlnet_aux", "import torchvision\ntorchvision.transforms.ToTensor()\n")
    code = ("import torch, torchvision, torchvision.transforms, controlnet_aux\n"
            "print(torchvision.LUCID_CPU_STAND_IN, controlnet_aux.LUCID_CPU_STAND_IN)\n"
            "try:\n    torchvision.transforms.ToTensor()\nexcept RuntimeError as e:\n    print('raises:', e)\n")
    proc = import_under_shim(tmp_path, code)
    assert proc.returncode == 0, proc.stdout
    assert "True True" in proc.stdout
    assert "raises: torchvision.transforms.ToTensor is a CPU stand-in" in proc.stdout

    without = import_under_shim(tmp_path, "import torch, torchvision", cpu=False)
    assert without.returncode != 0 and "torchvision::nms does not exist" in without.stdout


def test_the_cpu_shim_leaves_a_cpu_torchvision_alone(tmp_path):
    fake_package(tmp_path, "torchvision", "REAL = True\n", "__version__ = '0.28.0+cpu'\n")
    proc = import_under_shim(tmp_path, "import torch, torchvision; print(torchvision.REAL)")
    assert proc.returncode == 0 and proc.stdout.strip().endswith("True"), proc.stdout
