"""LucidDreamer's converted configs (configs/luciddreamer/) under a threestudio launcher: a short CPU run
on the tiny pipeline exits 0, logs finite losses and the config's own ISM interval, and (with
THREESTUDIO_DIR) gives the same losses under real threestudio's launch.py as under the bundled host.

Slow (a launch per config and host): ``bash scripts/conformance.sh THREESTUDIO_DIR -m slow -k luciddreamer``.
Point-E is not installed here, so the Point-E configs run with the initialiser their header names instead.
"""
import os

import pytest
import torch
import yaml

CONFIGS = "custom/threestudio-lucid/configs/luciddreamer"
THREESTUDIO_DIR = os.environ.get("THREESTUDIO_DIR", "")
PERSONALISED_PP = "lucid-stable-diffusion-prompt-processor"

# config -> the ISM interval its LucidDreamer file sets; hamburger: sphere init, no Perp-Neg;
# zombie_joker: Point-E and Perp-Neg with LucidDreamer's weights; ts_lora: a learned token
CASES = {"hamburger": 50, "zombie_joker": 50, "ts_lora": 80}
TINY_RUN = (
    "system.prompt_processor.pretrained_model_name_or_path=load/tiny-sd",
    "system.guidance.pretrained_model_name_or_path=load/tiny-sd",
    "data.width=16", "data.height=16", "data.eval_width=16", "data.eval_height=16",
    "data.n_val_views=1", "data.n_test_views=2", "system.geometry.init_num_pts=200",
    "trainer.max_steps=3", "trainer.val_check_interval=2", "trainer.log_every_n_steps=1",
    "system.guidance.warmup_iter=1",  # from step 1 on the interval is the config's delta_t
)

_runs = {}


def _token_file(workspace):
    """LucidDreamer's token file format (lora_diffusion): {"<Taylor_Swift>": [width]}, width = the tiny text encoder's."""
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig

    path = os.path.join(workspace, "load", "step_inv_1000.safetensors")
    if not os.path.exists(path):
        width = CLIPTextConfig.from_pretrained(os.path.join(workspace, "load", "tiny-sd", "text_encoder")).hidden_size
        save_file({"<Taylor_Swift>": torch.randn(width, generator=torch.Generator().manual_seed(0))}, path,
                  metadata={"<Taylor_Swift>": "<embed>"})
    return path


def run(host, tmp_path_factory, name):
    key = (host.name, name)
    if key not in _runs:
        extra = []
        with open(os.path.join(host.workspace, CONFIGS, f"{name}.yaml"), encoding="utf-8") as f:
            if yaml.safe_load(f)["system"]["geometry"]["init_type"] == "point_e":
                extra.append("system.geometry.init_type=sphere_solid")
        if name == "ts_lora":
            from threestudio_lucid import compat

            if PERSONALISED_PP not in compat.threestudio.__modules__:
                pytest.skip(f"ts_lora needs {PERSONALISED_PP} (personalisation), which is not registered")
            extra.append(f"system.guidance.lora_path={_token_file(host.workspace)}")
        exp_root = str(tmp_path_factory.mktemp(f"{host.name}-{name}"))
        _runs[key] = host.launch(f"{CONFIGS}/{name}.yaml", "train", *TINY_RUN, *extra, exp_root=exp_root)
    return _runs[key]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_a_luciddreamer_config_trains_under_the_launcher(host, tmp_path_factory, name):
    result = run(host, tmp_path_factory, name).check()
    assert "Cannot import" not in result.output
    losses = result.logged("train/loss")
    assert len(losses) == 3 and all(map(torch.isfinite, torch.tensor(losses)))
    assert int(result.logged("train/delta_t")[-1]) == CASES[name]
    parsed = yaml.safe_load(open(result.path("configs", "parsed.yaml"), encoding="utf-8"))
    assert parsed["system"]["guidance"]["delta_t"] == CASES[name]
    assert os.path.isfile(result.path("save", "point_cloud.ply"))


if THREESTUDIO_DIR:

    @pytest.mark.slow
    @pytest.mark.parametrize("name", sorted(CASES))
    def test_a_luciddreamer_config_gives_the_same_losses_on_both_hosts(both_hosts, tmp_path_factory, name):
        bundled, real = (run(h, tmp_path_factory, name).check() for h in both_hosts)
        torch.testing.assert_close(torch.tensor(bundled.logged("train/loss")), torch.tensor(real.logged("train/loss")),
                                   rtol=1e-5, atol=0)
