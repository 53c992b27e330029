import pytest


@pytest.fixture
def run_dir(tmp_path, monkeypatch, tiny_sd_path):
    """A fresh working folder for a small run (small_runs.py: it writes outputs/ there), the tiny pipeline built."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
