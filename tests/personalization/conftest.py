"""Fixtures of the personalisation tests: the tiny pipeline (32-wide text encoder) and one whose text
encoder is as wide as SD 2.1's (1024, with the tiny pipeline's two layers), both built locally."""
import pytest

from threestudio_lucid.personalization import Personalization


@pytest.fixture(scope="session")
def sd21_width_path(tmp_path_factory):
    """A tiny pipeline whose text encoder (and UNet cross-attention) is 1024 wide, as SD 2.x's: the
    width LucidDreamer's ``<Taylor_Swift>`` token has."""
    from threestudio_lucid.tiny_pipeline import build_tiny_stable_diffusion

    return build_tiny_stable_diffusion(tmp_path_factory.mktemp("sd21-width") / "sd", seed=3, text_hidden_size=1024)


@pytest.fixture
def personalization():
    """``personalization(model, textual_inversion_path=..., lora_path=..., lora_scale=...)`` -> checked
    :class:`Personalization` of the guidance, as its config would give."""
    from omegaconf import OmegaConf

    def make(model, prefix="system.guidance.", **options):
        cfg = OmegaConf.create({"pretrained_model_name_or_path": str(model), "textual_inversion_path": None,
                                "lora_path": None, "lora_scale": 1.0, "base_model": None, **options})
        return Personalization.from_config(cfg, prefix)

    return make
