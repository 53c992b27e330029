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
from threestudio_lucid.toy_world.evaluator import PROGRESS_FILE, ToyWorldEvaluator, merge_progress

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


def test_progress_records_each_step_and_a_resume_replaces_the_steps_it_repeats(toy_world_path, in_tmp_cwd, tmp_path):
    system = make_system(toy_world_path, "system.evaluate_every_n_steps=5")
    evaluator = system.evaluator
    stub = SavingStub(system.renderer, str(tmp_path))
    path = tmp_path / PROGRESS_FILE
    for step in (5, 10, 15):
        stub.true_global_step = step
        scores = evaluator.evaluate_progress(stub)
    records = json.loads(path.read_text())["records"]
    assert [r["step"] for r in records] == [5, 10, 15]
    # the scores of the test-time evaluation, without the images and per-view lists
    full = scores_only(evaluate_renderer(system.renderer, toy_world_path, "a penguin"))
    assert {k: records[-1][k] for k in ("psnr", "iou", "structure_identity", "structure_janus")} == \
        {k: full[k] for k in ("psnr", "iou", "structure_identity", "structure_janus")}
    written = {k: v for k, v in records[-1].items() if k != "step"}
    assert json.dumps(scores, sort_keys=True) == json.dumps(written, sort_keys=True)  # nan == nan here
    assert not any(isinstance(v, (list, dict)) for r in records for v in r.values())
    assert stub.grids == {}  # no images every N steps
    # a run resumed from its step-5 checkpoint does steps 6.. again: their records are replaced
    stub.true_global_step = 10
    evaluator.evaluate_progress(stub)
    assert [r["step"] for r in json.loads(path.read_text())["records"]] == [5, 10]


def test_merge_progress_keeps_step_order_and_ignores_foreign_entries():
    records = [{"step": 2, "psnr": 1.0}, "junk", {"step": "x"}, {"step": 4, "psnr": 2.0}, {"step": 6, "psnr": 3.0}]
    assert merge_progress(records, 4, {"psnr": 9.0}) == [{"step": 2, "psnr": 1.0}, {"step": 4, "psnr": 9.0}]
    assert merge_progress([], 1, {"psnr": 0.5}) == [{"step": 1, "psnr": 0.5}]


@pytest.mark.parametrize("value, message", [
    ("-1", "system.evaluate_every_n_steps=-1 must be a whole number >= 0"),
    ("2.5", "system.evaluate_every_n_steps.*2.5"),
])
def test_a_bad_evaluation_interval_is_one_config_error(toy_world_path, in_tmp_cwd, value, message):
    with pytest.raises(ConfigError, match=message):
        make_system(toy_world_path, f"system.evaluate_every_n_steps={value}")


def test_an_evaluation_interval_needs_an_evaluator_that_scores_during_training(toy_world_path, tiny_sd_path, in_tmp_cwd):
    with pytest.raises(ConfigError, match="toy_world_eval, which is off: set system.toy_world_eval=true"):
        make_system(toy_world_path, "system.toy_world_eval=false", "system.evaluate_every_n_steps=10")
    with pytest.raises(ConfigError, match="RecordingEvaluator scores at test only"):
        make_system(tiny_sd_path, "system.evaluator_type=test-recording-evaluator", "system.evaluate_every_n_steps=10")


def test_scoring_during_training_leaves_the_training_unchanged(toy_world_path, tmp_path, monkeypatch):
    """The same run with and without system.evaluate_every_n_steps ends with the same splats, byte for byte,
    and the curve's last record is the test-time score."""
    from threestudio_lucid.host import launch

    monkeypatch.chdir(tmp_path)
    plys = {}
    for every in (0, 4):
        args = ["--config", CONFIG, "--train", "system.prompt_processor.prompt=a penguin",
                f"system.prompt_processor.pretrained_model_name_or_path={toy_world_path}",
                f"system.guidance.pretrained_model_name_or_path={toy_world_path}", "data.width=32", "data.height=32",
                "system.geometry.init_num_pts=300", "trainer.max_steps=8", "data.n_test_views=2",
                f"exp_root_dir=run{every}", "use_timestamp=false", f"system.evaluate_every_n_steps={every}"]
        assert launch.main(args) == 0
        (save,) = [os.path.join(r, "save") for r, ds, _ in os.walk(tmp_path / f"run{every}") if "save" in ds]
        with open(os.path.join(save, "point_cloud.ply"), "rb") as f:
            plys[every] = f.read()
        progress = os.path.join(save, PROGRESS_FILE)
        assert os.path.exists(progress) == bool(every)
    assert plys[0] == plys[4]
    records = json.loads(open(progress).read())["records"]
    final = json.loads(open(os.path.join(save, "toy_world_scores.json")).read())
    assert [r["step"] for r in records] == [4, 8] and records[-1]["psnr"] == final["psnr"]
