"""A personalised run end to end in the bundled host (``lucid-launch``): the lucid prompt processor and
ISM guidance with LucidDreamer's token file train a step; the prompt's token reached the embeddings."""
import glob
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "reliability"))
from cpu_runs import cpu_run_args  # noqa: E402

from personalization_files import write_lucid_dreamer_token  # noqa: E402
from threestudio_lucid.host import launch  # noqa: E402


def test_ism_run_with_a_token_file_trains_a_step(tiny_sd_path, tmp_path, monkeypatch, capsys, personalization):
    monkeypatch.chdir(tmp_path)
    token_file, _ = write_lucid_dreamer_token(tmp_path / "step_inv_1000.safetensors", "<cube-token>", 32)
    args = cpu_run_args(
        "lucid-ism-cpu.yaml", tiny_sd_path, 1,
        "system.prompt_processor.prompt=a photo of <cube-token>",
        "system.prompt_processor_type=lucid-stable-diffusion-prompt-processor",
        "system.prompt_processor.spawn=false",
        f"system.prompt_processor.textual_inversion_path={token_file}",
        f"system.guidance.textual_inversion_path=[{token_file}]",
        "system.guidance.inverse_text=a photo of <cube-token>",
        "trainer.val_check_interval=1000", "data.n_test_views=1",
        gaussians=64,
    )
    assert launch.main(args) == 0, capsys.readouterr().err[-3000:]
    (trial,) = glob.glob(os.path.join(str(tmp_path), "outputs", "*", "*"))
    parsed = open(os.path.join(trial, "configs", "parsed.yaml")).read()
    assert "lucid-stable-diffusion-prompt-processor" in parsed and "step_inv_1000.safetensors" in parsed
    rows = open(os.path.join(trial, "csv_logs", "version_0", "metrics.csv")).read().splitlines()
    header, values = rows[0].split(","), [r.split(",") for r in rows[1:]]
    losses = [float(v[header.index("train/loss")]) for v in values if v[header.index("train/loss")]]
    assert len(losses) == 1 and torch.isfinite(torch.tensor(losses)).all()
    # the prompt was encoded with the token loaded: its entry is under the personalised key, and there is
    # none under threestudio's plain key for the same text
    from threestudio_lucid.prompt_processor.stable_diffusion_prompt_processor import cache_model_id, hash_prompt

    p = personalization(tiny_sd_path, prefix="system.prompt_processor.", textual_inversion_path=token_file)
    cache = os.path.join(str(tmp_path), ".threestudio_cache", "text_embeddings")
    assert os.path.isfile(os.path.join(cache, hash_prompt(cache_model_id(p), "a photo of <cube-token>") + ".pt"))
    assert not os.path.exists(os.path.join(cache, hash_prompt(tiny_sd_path, "a photo of <cube-token>") + ".pt"))
