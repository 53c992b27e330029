"""Shared by the guidance tests: prompt utils from the Stable Diffusion prompt processor (the
bundled host's) on the tiny pipeline, built in a scratch working directory because the processor's
embedding cache is relative to it."""
import json
import os

import pytest

from threestudio_lucid import compat
from threestudio_lucid.tiny_pipeline import build_tiny_stable_diffusion


@pytest.fixture(scope="session")
def make_prompt_utils(tiny_sd_path, tmp_path_factory):
    """``make_prompt_utils(prompt="a cube", use_perp_neg=True, ...)`` -> ``PromptProcessorOutput``."""

    def make(**cfg):
        cwd = os.getcwd()
        os.chdir(tmp_path_factory.mktemp("prompt-cwd"))
        try:
            processor = compat.find("stable-diffusion-prompt-processor")(
                {"pretrained_model_name_or_path": tiny_sd_path, **cfg}
            )
            return processor()
        finally:
            os.chdir(cwd)

    return make


@pytest.fixture(scope="session")
def v_prediction_sd_path(tmp_path_factory):
    """A second tiny pipeline (other weights) whose scheduler says v-prediction: the LoRA's base model,
    as SD 2.1 is under SD 2.1-base in ProlificDreamer's setup."""
    path = build_tiny_stable_diffusion(tmp_path_factory.mktemp("tiny-sd-v") / "sd", seed=1)
    config_file = os.path.join(path, "scheduler", "scheduler_config.json")
    with open(config_file) as f:
        config = json.load(f)
    config["prediction_type"] = "v_prediction"
    with open(config_file, "w") as f:
        json.dump(config, f)
    return path
