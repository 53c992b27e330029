"""``lucid-toy-world-evaluator``: the evaluation hook a toy-world folder names for the system.

The system does not know toy worlds. With ``system.toy_world_eval: true`` it looks up the registered
evaluator that the guidance's model folder names in its ``model_index.json`` (``"_lucid_evaluator":
"lucid-toy-world-evaluator"``, written by ``lucid-build-toy-world``; ``system.evaluator_type`` names one
instead), builds it with ``{"model": <the folder>, "prompt": <the prompt>, **system.evaluator}`` when it is
configured (so a prompt naming no object of the world fails before training), and calls
``evaluate(system)`` at the end of ``--test``. That writes, under the run's ``save/``:

- ``toy_world_scores.json``: ``evaluate.evaluate_renderer``'s scores (PSNR, IoU, Janus, sharpness and the
  multi-modal keys as before, plus the ``structure_`` scores) and, with ``oracle_scores`` (an oracle fit's
  ``toy_world_scores.json``, ``oracle.py``), each structure score as a fraction of the oracle's;
- ``toy_world_eval.png``: the renders from the held-out views above the nearest variant's ground truth;

and prints one line of scores.
"""
import json
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional

from ..compat import BaseObject, info, register
from ..errors import ConfigError


@register("lucid-toy-world-evaluator")
class ToyWorldEvaluator(BaseObject):
    @dataclass
    class Config(BaseObject.Config):
        model: str = ""  # the toy-world folder (the system passes the guidance's pretrained_model_name_or_path)
        prompt: str = ""  # names the object to score (the system passes the prompt processor's prompt)
        # an oracle fit's save/toy_world_scores.json: adds structure_<score>_fraction_of_oracle (and Janus as a
        # fraction of the two-faced control, from the oracle's back)
        oracle_scores: Optional[str] = None
        structure: bool = True  # the structure scores (structure_metrics.py) beside the colour scores

    cfg: Config

    def configure(self) -> None:
        from .evaluate import object_of_prompt
        from .pipeline import read_toy_world_settings

        settings = read_toy_world_settings(self.cfg.model)
        try:
            self.object = object_of_prompt(self.cfg.prompt, settings.objects)
        except ValueError as e:
            raise ConfigError(f"system.prompt_processor.prompt: {e} (system.toy_world_eval=true scores the "
                              "object the prompt names).") from None
        self.oracle = self.read_oracle(self.cfg.oracle_scores) if self.cfg.oracle_scores else None

    @staticmethod
    def read_oracle(path: str) -> Dict[str, Any]:
        try:
            with open(path, "r", encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError) as e:
            raise ConfigError(f"system.evaluator.oracle_scores='{path}': cannot read an oracle fit's scores "
                              f"({type(e).__name__}): point it at <oracle run>/save/toy_world_scores.json.") from None

    def evaluate(self, system) -> Dict[str, Any]:
        """Score the asset behind ``system.renderer``; write the scores and the grid through the system's saver."""
        from .evaluate import evaluate_renderer, scores_only, write_scores

        result = evaluate_renderer(system.renderer, self.cfg.model, self.cfg.prompt, structure=self.cfg.structure,
                                   oracle=self.oracle)
        write_scores(result, system.get_save_path("toy_world_scores.json"))
        row = lambda imgs: [{"type": "rgb", "img": img, "kwargs": {"data_format": "HWC"}} for img in imgs]  # noqa: E731
        system.save_image_grid("toy_world_eval.png", [row(result["renders"]), row(result["ground_truth"])])
        scores = scores_only(result)
        line = (f"toy-world scores for {scores['object']} on {scores['n_views']} held-out views: "
                f"PSNR {scores['psnr']:.2f} dB, mask IoU {scores['iou']:.3f}, Janus {scores['janus']:.3f}")
        if self.cfg.structure:
            line += "; structure: " + ", ".join(
                f"{name} {_fmt(scores.get('structure_' + name))}"
                for name in ("identity", "sharpness", "consistency", "janus", "view_diversity"))
        info(line)
        return scores


def _fmt(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{float(value):.3f}"
