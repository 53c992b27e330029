"""Scoring against the toy world, and the issue's check that a short ISM run on one object beats its
initialisation in PSNR and mask IoU on held-out views."""
import json
import os

import pytest
import torch

from threestudio_lucid import compat
from threestudio_lucid.host import launch
from threestudio_lucid.host.utils.config import load_config
from threestudio_lucid.toy_world.evaluate import evaluate_renderer, janus_score, mask_iou, object_of_prompt, psnr

CONFIGS = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "custom", "threestudio-lucid", "configs"))


def test_metric_helpers():
    a = torch.zeros(4, 4, 3)
    assert psnr(a, a) == float("inf")
    assert psnr(a, a + 0.1) == pytest.approx(20.0)
    m1 = torch.zeros(4, 4, dtype=torch.bool)
    m1[:2] = True
    m2 = torch.zeros(4, 4, dtype=torch.bool)
    m2[1:3] = True
    assert mask_iou(m1, m2) == pytest.approx(4 / 12)


def test_janus_score_is_0_for_the_true_back_and_1_for_a_second_front():
    back = {"rgb": torch.zeros(8, 8, 3), "alpha": torch.ones(8, 8, 1)}
    front = {"rgb": torch.ones(8, 8, 3), "alpha": torch.ones(8, 8, 1)}
    assert janus_score(back["rgb"], back, front) == 0.0
    assert janus_score(front["rgb"], back, front) == 1.0
    assert janus_score(torch.full((8, 8, 3), 0.5), back, front) == pytest.approx(0.5)


def test_prompt_names_the_object():
    assert object_of_prompt("a penguin", ["cube", "penguin"]) == "penguin"
    assert object_of_prompt("a penguin, back view", ["penguin"]) == "penguin"
    with pytest.raises(ValueError, match="a red cube"):
        object_of_prompt("a cat", ["cube"])


@pytest.fixture(scope="module")
def penguin_world(tmp_path_factory, toy_cache_dir):
    from threestudio_lucid.toy_world.pipeline import build_toy_world

    return build_toy_world(
        tmp_path_factory.mktemp("penguin") / "world", objects=["penguin"], bandwidth=0.2, image_size=32,
        n_azimuths=12, elevations_deg=[0.0, 30.0], n_eval_views=4, cache_dir=toy_cache_dir,
    )


def toy_args(world, steps):
    return [
        "system.prompt_processor.prompt=a penguin",
        f"system.prompt_processor.pretrained_model_name_or_path={world}",
        f"system.guidance.pretrained_model_name_or_path={world}",
        "system.renderer.backend=auto",
        "data.width=32", "data.height=32", "data.eval_width=32", "data.eval_height=32",
        "data.batch_size=2", "data.n_val_views=1", "data.n_test_views=2", "data.polar_range=[60,90]",
        "system.geometry.init_num_pts=1500",
        f"system.geometry.position_lr=[0,0.00016,0.0000016,{steps}]",
        f"system.geometry.densify_until_iter={steps * 3 // 4}", f"system.geometry.prune_until_iter={steps * 3 // 4}",
        "system.geometry.densification_interval=25", "system.geometry.densify_from_iter=25",
        "system.geometry.prune_interval=25", "system.geometry.prune_from_iter=25",
        f"system.guidance.warmup_iter={steps // 3}",
        f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}", f"checkpoint.every_n_train_steps={steps}",
    ]


def test_short_ism_run_beats_its_initialisation(penguin_world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = os.path.join(CONFIGS, "lucid-ism-toy.yaml")
    cfg = load_config(config, cli_args=toy_args(penguin_world, 150))
    system = compat.find(cfg.system_type)(cfg.system)
    init = evaluate_renderer(system.renderer, penguin_world, "a penguin")

    assert launch.main(["--config", config, "--train", *toy_args(penguin_world, 150)]) == 0
    base = os.path.join(tmp_path, "outputs", "lucid-ism-toy")
    # load_config above created an (empty) trial folder too, as threestudio's does at parse time
    (trial,) = [d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d, "save"))]
    with open(os.path.join(base, trial, "save", "toy_world_scores.json")) as f:
        scores = json.load(f)
    assert scores["object"] == "penguin" and scores["n_views"] == 4
    assert scores["psnr"] > init["psnr"] + 1.0, (scores, init["psnr"])
    assert scores["iou"] > init["iou"] + 0.05, (scores, init["iou"])
    assert os.path.exists(os.path.join(base, trial, "save", "toy_world_eval.png"))
