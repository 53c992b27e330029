"""The contract suite: the same launch cases against the bundled host and, with ``THREESTUDIO_DIR``
set to a threestudio checkout, against real threestudio's own ``launch.py``.

Each run is a subprocess in a scratch workspace laid out like a threestudio checkout's working
directory: ``custom/threestudio-lucid`` (a link to this repo's plugin), ``custom/other-extension``
(a second extension), ``load/tiny-sd`` and ``load/toy-penguin``. The bundled host runs as
``python -m threestudio_lucid.host.launch`` (``lucid-launch``). Real threestudio runs as
``python $THREESTUDIO_DIR/launch.py`` with ``scripts/threestudio_cpu/`` first on ``PYTHONPATH``: its
``sitecustomize`` stands in for threestudio's GPU-only imports and applies the CPU patches at run
time (no file of the checkout is edited). ``scripts/conformance.sh THREESTUDIO_DIR`` sets it up.
"""
import csv
import glob
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PLUGIN_DIR = os.path.join(REPO, "custom", "threestudio-lucid")
CPU_SHIM_DIR = os.path.join(REPO, "scripts", "threestudio_cpu")
RUN_TIMEOUT_S = 900
TOY_CACHE = ".toy-world-cache"  # the toy world's render cache, inside the workspace

THREESTUDIO_DIR = os.environ.get("THREESTUDIO_DIR", "")


def host_names() -> List[str]:
    return ["bundled"] + (["threestudio"] if THREESTUDIO_DIR else [])


def pytest_generate_tests(metafunc):
    if "host" in metafunc.fixturenames:
        metafunc.parametrize("host", host_names(), indirect=True, scope="session")


@dataclass
class Run:
    """One finished launch: exit code, everything it printed, and the trial folder it made."""

    args: List[str]
    returncode: int
    output: str
    trial_dir: Optional[str]

    def check(self) -> "Run":
        assert self.returncode == 0, f"{' '.join(self.args)} exited {self.returncode}:\n{self.output[-6000:]}"
        return self

    def path(self, *parts: str) -> str:
        assert self.trial_dir is not None, f"no trial folder was made:\n{self.output[-3000:]}"
        return os.path.join(self.trial_dir, *parts)

    def metrics(self) -> List[Dict[str, str]]:
        with open(self.path("csv_logs", "version_0", "metrics.csv"), newline="") as f:
            return list(csv.DictReader(f))

    def logged(self, key: str) -> List[float]:
        return [float(row[key]) for row in self.metrics() if row.get(key) not in (None, "")]


@dataclass
class Host:
    """How to launch a config under one threestudio: the bundled host or a real checkout."""

    name: str
    workspace: str
    env: Dict[str, str] = field(default_factory=dict)

    def command(self) -> List[str]:
        if self.name == "bundled":
            return [sys.executable, "-m", "threestudio_lucid.host.launch"]
        return [sys.executable, os.path.join(THREESTUDIO_DIR, "launch.py")]

    def launch(self, config: str, mode: str, *overrides: str, exp_root: str) -> Run:
        """``launch.py --config CONFIG --MODE overrides... exp_root_dir=EXP_ROOT`` in the workspace;
        the trial folder is the one this run added under ``exp_root``."""
        before = set(glob.glob(os.path.join(exp_root, "*", "*")))
        args = self.command() + ["--config", config, f"--{mode}", "--gpu", "0", *overrides, f"exp_root_dir={exp_root}"]
        proc = subprocess.run(
            args,
            cwd=self.workspace,
            env={**os.environ, **self.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )
        made = sorted(set(glob.glob(os.path.join(exp_root, "*", "*"))) - before)
        return Run(args, proc.returncode, proc.stdout, made[-1] if made else None)


    def launch_together(self, n: int, config: str, mode: str, *overrides: str, exp_root: str) -> List[Run]:
        """``n`` launches of the same command started at once; each run's trial folder is the one its
        process claimed (the pid in ``<trial>/.lucid-run.lock``)."""
        import json

        args = self.command() + ["--config", config, f"--{mode}", "--gpu", "0", *overrides, f"exp_root_dir={exp_root}"]
        procs = [subprocess.Popen(args, cwd=self.workspace, env={**os.environ, **self.env}, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for _ in range(n)]
        outputs = [proc.communicate(timeout=RUN_TIMEOUT_S)[0] for proc in procs]
        claimed = {}
        for lock in glob.glob(os.path.join(exp_root, "*", "*", ".lucid-run.lock")):
            with open(lock) as f:
                claimed[json.load(f)["pid"]] = os.path.dirname(lock)
        return [Run(args, proc.returncode, out, claimed.get(proc.pid)) for proc, out in zip(procs, outputs)]


def _link(src: str, dst: str) -> None:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    os.symlink(src, dst, target_is_directory=os.path.isdir(src))


@pytest.fixture(scope="session")
def workspace(tmp_path_factory, tiny_sd_path):
    """A threestudio-style working directory shared by every run of the session."""
    from threestudio_lucid.toy_world.pipeline import build_toy_world

    root = str(tmp_path_factory.mktemp("contract-workspace"))
    _link(PLUGIN_DIR, os.path.join(root, "custom", "threestudio-lucid"))
    shutil.copytree(os.path.join(HERE, "extensions", "other-extension"), os.path.join(root, "custom", "other-extension"))
    _link(str(tiny_sd_path), os.path.join(root, "load", "tiny-sd"))
    _link(os.path.join(REPO, "configs"), os.path.join(root, "configs"))
    build_toy_world(
        os.path.join(root, "load", "toy-penguin"), objects=["penguin"], bandwidth=0.2, image_size=32,
        n_azimuths=8, elevations_deg=[0.0, 30.0], camera_distances=[4.0], n_eval_views=4,
        cache_dir=os.path.join(root, TOY_CACHE),
    )
    return root


@pytest.fixture(scope="session")
def host(request, workspace):
    return make_host(request.param, workspace)


@pytest.fixture(scope="session")
def both_hosts(workspace):
    """The bundled host and real threestudio, for cases that compare the two (THREESTUDIO_DIR only)."""
    return [make_host(name, workspace) for name in ("bundled", "threestudio")]


def make_host(name: str, workspace: str) -> Host:
    from threestudio_lucid.toy_world.pipeline import CACHE_ENV

    env = {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
        CACHE_ENV: os.path.join(workspace, TOY_CACHE),
        "PYTHONUNBUFFERED": "1",
    }
    if name == "bundled":
        env["THREESTUDIO_LUCID_HOST"] = "1"
    else:
        env["THREESTUDIO_LUCID_HOST"] = "0"
        env["THREESTUDIO_DIR"] = THREESTUDIO_DIR
        env["LUCID_THREESTUDIO_CPU"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (CPU_SHIM_DIR, os.environ.get("PYTHONPATH", "")) if p)
    return Host(name, workspace, env)


@pytest.fixture
def exp_root(tmp_path):
    return str(tmp_path / "outputs")
