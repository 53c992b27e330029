"""A prompt that names no object of the toy world is refused when the system is configured (with
``toy_world_eval``), not after training when the scores are computed."""
import os

import pytest

from threestudio_lucid.host import launch

CONFIG = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "custom", "threestudio-lucid",
                                      "configs", "lucid-sds-toy.yaml"))


@pytest.mark.parametrize("prompt", ["a pingüino", "a giraffe"])
def test_a_prompt_outside_the_toy_world_is_one_error_before_training(tmp_path, monkeypatch, toy_world_path,
                                                                     prompt, capsys):
    monkeypatch.chdir(tmp_path)
    code = launch.main(["--config", CONFIG, "--train", f"system.prompt_processor.prompt={prompt}",
                        f"system.prompt_processor.pretrained_model_name_or_path={toy_world_path}",
                        f"system.guidance.pretrained_model_name_or_path={toy_world_path}"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err
    assert errors[0].startswith(f"error: system.prompt_processor.prompt: prompt {prompt!r} names no object")
    assert not os.path.exists(tmp_path / "outputs" / "lucid-sds-toy") or not os.listdir(tmp_path / "outputs" / "lucid-sds-toy")
