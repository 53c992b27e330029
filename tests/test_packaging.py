"""setup.py's lower bounds are the versions scripts/test_lowest_versions.sh tests (lowest-versions.txt)."""
import ast
import os

from packaging.requirements import Requirement
from packaging.version import Version

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def install_requires():
    tree = ast.parse(open(os.path.join(REPO, "setup.py"), encoding="utf-8").read())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            return {Requirement(r).name: Requirement(r) for r in ast.literal_eval(node.value)}
    raise AssertionError("setup.py has no install_requires")


def lowest_pins():
    pins = {}
    for line in open(os.path.join(REPO, "scripts", "lowest-versions.txt"), encoding="utf-8"):
        spec = line.split("#", 1)[0].strip()
        if spec:
            req = Requirement(spec)
            pins[req.name] = req
    return pins


def test_every_floor_in_setup_py_is_the_tested_lowest_version():
    requires, pins = install_requires(), lowest_pins()
    for name in ("diffusers", "transformers", "peft", "pytorch-lightning", "omegaconf"):
        (floor,) = [s for s in requires[name].specifier if s.operator == ">="]
        (pin,) = [s for s in pins[name].specifier if s.operator == "=="]
        assert Version(floor.version) == Version(pin.version), (name, str(floor), str(pin))
