"""Import a script of the repository (``scripts/...``, ``examples/...``) as a module, by path (tests
of scripts share this; pytest puts ``tests/`` on the path through its root conftest)."""
import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_repo_script(relative_path: str):
    path = os.path.join(REPO, relative_path)
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
