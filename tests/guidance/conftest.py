"""Shared by the guidance tests: prompt utils from the Stable Diffusion prompt processor (the
bundled host's) on the tiny pipeline, built in a scratch working directory because the processor's
embedding cache is relative to it."""
import os

import pytest

from threestudio_lucid import compat


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
