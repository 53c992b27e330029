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

and prints one line of scores. With ``system.evaluate_every_n_steps`` N > 0 the system also calls
``evaluate_progress(system)`` every N training steps: the same scores (no images) go into
``save/toy_world_progress.json`` (``{"records": [{"step": n, ...scores}]}``, in step order; a resumed run
replaces the records from its checkpoint's step on), the curve ``scripts/claims_benchmark.py --convergence``
plots.
"""
import json
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from ..atomic_files import write_text
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
        self._truth_cache: Dict = {}  # the world's analytic renders, shared by every progress evaluation

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
        if self.cfg.structure and self.oracle is not None:
            line += "; as fractions of the oracle fit's: " + ", ".join(
                f"{name} {_fmt(scores.get(f'structure_{name}_fraction_of_oracle'))}"
                for name in ("identity", "sharpness", "consistency", "view_diversity"))
            gap = scores["psnr"] - _number(self.oracle.get("psnr"))
            line += f", PSNR {gap:+.2f} dB from the oracle's" if math.isfinite(gap) else ""
            line += (f"; Janus {_fmt(scores.get('structure_janus_fraction_of_two_faced'))} of the way from the oracle's "
                     "back to the two-faced control's")
        info(line)
        return scores

    def evaluate_progress(self, system) -> Dict[str, Any]:
        """The scores of the asset now (no images), added to ``save/toy_world_progress.json`` at the system's
        step (``system.evaluate_every_n_steps``): each score against the step, the convergence curve."""
        from .evaluate import evaluate_renderer, scores_only

        result = evaluate_renderer(system.renderer, self.cfg.model, self.cfg.prompt, structure=self.cfg.structure,
                                   oracle=self.oracle, cache=self._truth_cache)
        scores = {k: v for k, v in scores_only(result).items() if not isinstance(v, (list, dict))}
        path = system.get_save_path(PROGRESS_FILE)
        records = merge_progress(read_progress(path), int(system.true_global_step), scores)
        write_text(path, json.dumps({"records": records}, indent=1))
        return scores


PROGRESS_FILE = "toy_world_progress.json"  # under the run's save/: {"records": [{"step": n, <scores>}, ...]}


def merge_progress(records: List[Dict[str, Any]], step: int, scores: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The progress records with ``scores`` at ``step`` appended, after dropping every record at or after that
    step (a run resumed from an earlier checkpoint does those steps again), in step order."""
    kept = [r for r in records if isinstance(r, dict) and isinstance(r.get("step"), int) and r["step"] < step]
    return kept + [{"step": int(step), **scores}]


def read_progress(path: str) -> List[Dict[str, Any]]:
    """The records of a progress file ([] when there is none yet or it does not parse)."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return []
    records = data.get("records") if isinstance(data, dict) else None
    return records if isinstance(records, list) else []


def _number(value) -> float:
    return float("nan") if value is None else float(value)


def _fmt(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{float(value):.3f}"
