"""The evaluation hook (issue 27, part 6): with ``system.toy_world_eval`` the system runs the registered evaluator
its model folder names (or ``system.evaluator_type``), never a toy-world function by name; the toy world's
evaluator writes the old scores unchanged plus the structure scores and, given an oracle's scores, their
fractions of it."""
import json
import math
import os
from dataclasses import dataclass

import pytest
import torch

from threestudio_lucid import compat
from threestudio_lucid.errors import ConfigError
from threestudio_lucid.host.utils.config import load_config
from threestudio_lucid.toy_world.evaluate import evaluate_renderer, fractions_of_oracle, scores_only
from threestudio_lucid.toy_world.evaluator import ToyWorldEvaluator

CONFIG = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "custom", "threestudio-lucid", "configs",
                                      "lucid-sds-toy.yaml"))


@compat.register("test-recording-evaluator")
class RecordingEvaluator(compat.BaseObject):
    """An evaluator of another kind of model folder: what the system hands an evaluator."""

    @dataclass
    class Config(compat.BaseObject.Config):
        model: str = ""
        prompt: str = ""
        note: str = ""

    def evaluate(self, system):
        self.evaluated = system


def make_system(world, *extra):
    cfg = load_config(CONFIG, cli_args=[
        "system.prompt_processor.prompt=a penguin", f"system.prompt_processor.pretrained_model_name_or_path={world}",
        f"system.guidance.pretrained_model_name_or_path={world}", "data.width=32", "data.height=32",
        "system.geometry.init_num_pts=300", *extra,
    ])
    return compat.find(cfg.system_type)(cfg.system)


def test_the_system_runs_the_evaluator_its_model_folder_names(toy_world_path, tiny_sd_path, in_tmp_cwd):
    system = make_system(toy_world_path)
    assert isinstance(system.evaluator, ToyWorldEvaluator)
    assert (system.evaluator.cfg.model, system.evaluator.cfg.prompt) == (toy_world_path, "a penguin")
    # a folder that names none: one line that says what to do
    with pytest.raises(ConfigError, match="names none: point it at a toy world made with `lucid-build-toy-world`"):
        make_system(tiny_sd_path)
    # any registered evaluator, named by the config, gets the folder, the prompt and system.evaluator
    other = make_system(tiny_sd_path, "system.evaluator_type=test-recording-evaluator", "system.evaluator.note=x")
    assert isinstance(other.evaluator, RecordingEvaluator) and other.evaluator.cfg.note == "x"
    assert other.evaluator.cfg.model == tiny_sd_path
    assert make_system(tiny_sd_path, "system.toy_world_eval=false").evaluator is None


class SavingStub:
    """What the evaluator uses of the system: its renderer and its saver."""

    def __init__(self, renderer, folder):
        self.renderer, self.folder, self.grids = renderer, folder, {}

    def get_save_path(self, name):
        return os.path.join(self.folder, name)

    def save_image_grid(self, name, rows):
        self.grids[name] = rows


def test_the_scores_file_keeps_the_old_scores_and_adds_the_structure_scores(toy_world_path, in_tmp_cwd, tmp_path):
    system = make_system(toy_world_path)
    oracle = {"structure_identity": 0.5, "structure_sharpness": 0.4, "structure_consistency": 1.0,
              "structure_view_diversity": 0.8, "structure_janus": -0.1}
    (tmp_path / "oracle.json").write_text(json.dumps(oracle))
    evaluator = compat.find("lucid-toy-world-evaluator")({"model": toy_world_path, "prompt": "a penguin",
                                                          "oracle_scores": str(tmp_path / "oracle.json")})
    stub = SavingStub(system.renderer, str(tmp_path))
    scores = evaluator.evaluate(stub)
    with open(tmp_path / "toy_world_scores.json") as f:
        written = json.load(f)
    assert written.keys() == scores.keys()

    old = scores_only(evaluate_renderer(system.renderer, toy_world_path, "a penguin", structure=False))
    assert {k: written[k] for k in old} == old  # the scores it wrote before, unchanged
    for name in ("identity", "variant", "sharpness", "consistency", "janus", "back_match", "janus_two_faced",
                 "view_diversity", "truth_view_diversity"):
        assert f"structure_{name}" in written
    assert written["structure_n_back_views"] == 12 and written["structure_janus_two_faced"] > 0.5
    # the fractions of the oracle's: score / oracle's; Janus from the oracle's back (0) to the two-faced control (1)
    assert written["structure_identity_fraction_of_oracle"] == pytest.approx(written["structure_identity"] / 0.5)
    assert written["structure_sharpness_fraction_of_oracle"] == pytest.approx(written["structure_sharpness"] / 0.4)
    assert written["structure_janus_fraction_of_two_faced"] == pytest.approx(
        (written["structure_janus"] + 0.1) / (written["structure_janus_two_faced"] + 0.1))
    assert math.isnan(written["structure_consistency_fraction_of_oracle"])  # one variant: no consistency
    # the grid: the renders above the nearest variant's truth, as before
    renders, truths = stub.grids["toy_world_eval.png"]
    result = evaluate_renderer(system.renderer, toy_world_path, "a penguin", structure=False)
    assert all(torch.equal(a["img"], b) for a, b in zip(renders, result["renders"]))
    assert all(torch.equal(a["img"], b) for a, b in zip(truths, result["ground_truth"]))


def test_fractions_of_the_oracle():
    asset = {"structure_identity": 0.3, "structure_sharpness": 0.2, "structure_consistency": 0.5,
             "structure_view_diversity": 0.9, "structure_janus": 0.5, "structure_janus_two_faced": 0.9}
    oracle = {"structure_identity": 0.6, "structure_sharpness": 0.8, "structure_consistency": 1.0,
              "structure_view_diversity": 0.9, "structure_janus": 0.1}
    f = fractions_of_oracle(asset, oracle)
    assert f == pytest.approx({"structure_identity_fraction_of_oracle": 0.5, "structure_sharpness_fraction_of_oracle": 0.25,
                               "structure_consistency_fraction_of_oracle": 0.5,
                               "structure_view_diversity_fraction_of_oracle": 1.0,
                               "structure_janus_fraction_of_two_faced": 0.5})
    # an oracle without structure (a score at or below the floor), or a score not measured: no fraction
    blank = fractions_of_oracle(asset, {k: 0.0 for k in oracle})
    assert math.isnan(blank["structure_identity_fraction_of_oracle"])
    assert all(math.isnan(v) for v in fractions_of_oracle({}, oracle).values())


def test_an_unreadable_oracle_file_is_one_config_error(toy_world_path, tmp_path):
    with pytest.raises(ConfigError, match="system.evaluator.oracle_scores=.*toy_world_scores.json"):
        compat.find("lucid-toy-world-evaluator")({"model": toy_world_path, "prompt": "a penguin",
                                                  "oracle_scores": str(tmp_path / "missing.json")})
