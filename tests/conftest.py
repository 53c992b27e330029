"""Shared fixtures. Every model the tests use is built locally: nothing may reach a model hub."""
import os

# Set before transformers / diffusers / huggingface_hub are imported (they read these at import).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_sd_path(tmp_path_factory):
    """Folder of a tiny, real Stable Diffusion pipeline (diffusers format, seed 0), built once per
    session. Load it with ``from_pretrained`` exactly like a downloaded checkpoint."""
    from threestudio_lucid.tiny_pipeline import build_tiny_stable_diffusion

    return build_tiny_stable_diffusion(tmp_path_factory.mktemp("tiny-sd") / "sd", seed=0)


@pytest.fixture
def in_tmp_cwd(tmp_path, monkeypatch):
    """Run the test in an empty working directory (``.threestudio_cache``, ``outputs`` and ``load``
    are resolved against the working directory, as in threestudio)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
