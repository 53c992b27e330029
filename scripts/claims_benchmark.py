"""Test the two seed papers' claims on the toy worlds made to expose them (issues 15 and 27).

- LucidDreamer: SDS over-smooths (its targets are blends of the modes a caption holds) and ISM keeps
  detail: on the multi-modal world SDS should score a lower structure ``sharpness`` and ``consistency``.
- ESD: SDS and VSD collapse every view onto the dominant mode, which shows as the Janus problem on the
  biased world; the entropy term (``lambda_coeff`` > 0) lowers it.

Two worlds are built under ``load/`` (renders cached; ``docs/toy_worlds.md``): ``multimodal``, the blue
ball in three textured variants under the same captions, and ``biased``, the penguin rendered
front-heavy, its renders captioned with view words as in ESD's setting (threestudio's view-dependent prompts).
Both are rendered on a dense grid (72 azimuths x 8 elevations over the configs' training range) and the
training cameras are snapped to it (``data.azimuth_step_deg``, ``data.elevation_grid_deg``): every camera is a
view the exact prior has seen (``--no-snap``: continuous cameras). ``--prior learned`` judges every claim
again on a learned prior (``toy_world/learned_prior.py``, trained once into ``load/``), a diffusers UNet that
generalises between views and errs as a trained network does; VSD/ESD then put their LoRA on its UNet.

Positive controls first (issue 27): on each world and seed the ORACLE FIT runs before the methods
(``lucid-oracle-toy.yaml``, ``toy_world/oracle.py``: the same splats, cameras, seed and step budget, trained
with an L2 image loss against the world's true renders), and every method's structure scores are reported
also as fractions of that seed's oracle (``evaluate.fractions_of_oracle``; Janus as a fraction of the way from
the oracle's back to the two-faced control's). The analytic controls (``positive_controls.separations``, at the
benchmark's image size) say whether each structure metric separates them; a check on a metric that does not
is inconclusive.

Then each world's method settings run their official ``lucid-<method>-toy.yaml`` through ``lucid-launch`` with the
same step budget (``toy_benchmark.schedule_overrides``) and the same seeds: by default the settings its checks read
(:data:`CHECKED_SETTINGS`: SDS at the toy config's guidance scale and at DreamFusion's 100 and ISM on the multimodal
world; SDS, VSD and ESD at its official ``lambda_coeff`` 0.5 on the biased world -- ESD at lambda 0 is VSD, the same
update run for run); ``--methods`` runs a list on every world (ESD's lambda 0 and 1 as a sweep). Runs go one at a
time (each uses every core: measured faster here than two one-thread runs side by side) and are resumable: a run
whose scores file exists is skipped.

    python scripts/claims_benchmark.py                    # the verdict run: 800 steps, seeds 0-4 (about 1 1/2 h*)
    python scripts/claims_benchmark.py --worlds multimodal --methods sds ism --seeds 0   # one cell (and its oracle)
    python scripts/claims_benchmark.py --convergence      # 800 steps, seed 0, every setting scored every 50: curves
    python scripts/claims_benchmark.py --prior learned    # every claim again on the learned prior

(*) Estimated from ``--convergence``'s measured run times (800 steps on the dense worlds, 2 shared cores: oracle
45 s, SDS 50-65 s, ISM 70-130 s, VSD/ESD 240-410 s a run): about 4 min per seed on the multimodal world and 12 on
the biased one. 800 steps is the budget of ``docs/claims_convergence.md``, where the oracle's and SDS's curves have
nearly flattened and VSD's still climb: a stated limit of every verdict. Runs are resumable, so a long run can be
made over several invocations.

Writes ``<report>.md`` (default ``docs/claims.md``): the positive controls (the oracle's scores per world,
the metrics' separations), each claim with a verdict from the seeds' paired differences (:func:`compare`,
``toy_world/verdicts.py``: shown / refuted / inconclusive, with a 95 % interval and a margin stated per check
before the run, ``MARGINS``), per world a table of mean +- std over seeds (the oracle's row first, then each
method's scores and their fractions of the oracle's), the command, date, machine and wall time; and
``<report>_<world>.png``: rows are the ground truth (every variant), the oracle, then one row per method
setting (the first seed), over the world's held-out views; ``<report>_summary.json``: every score's per-seed
values, the controls' requirements and each check's interval. With ``--convergence``: ``<report>.md`` and
``<report>.png`` (default ``docs/claims_convergence``), each score against the step per world and setting, and
whether it is flat over the second half of the budget (:func:`flatness`); no verdicts.
"""
import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from threestudio_lucid.toy_world import verdicts
from threestudio_lucid.toy_world.evaluate import fractions_of_oracle

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from toy_benchmark import REPO, run_method, split_grid  # noqa: E402

# a verdict needs verdicts.MIN_SEEDS (5) paired seeds; 800 steps: the convergence curves' budget
DEFAULT_STEPS, DEFAULT_SEEDS = 800, [0, 1, 2, 3, 4]
# The worlds' render grid (issue 27): 72 azimuths x 8 elevations over the toy configs' training range (polar
# 30-100 deg = elevation -10..60), and training cameras snapped to it: every camera is a view the prior has seen
DENSE_AZIMUTHS, DENSE_ELEVATIONS = 72, [-10.0, 0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0]
# --convergence: one long run per setting, scored every CONVERGENCE_EVERY steps (system.evaluate_every_n_steps)
CONVERGENCE_STEPS, CONVERGENCE_SEEDS, CONVERGENCE_EVERY = 800, [0], 50
# VSD/ESD on a learned prior: a LoRA on its UNet (as on Stable Diffusion), not the exact prior's separate estimator
LEARNED_PRIOR_LORA = ["system.guidance.lora_unet_subfolder=unet", "system.guidance.train_full_estimator=false"]


@dataclass
class World:
    name: str
    caption: str
    build: Dict  # build_toy_world keyword arguments (besides the size options)
    overrides: List[str] = field(default_factory=list)  # config overrides every method run on this world needs
    scores: Sequence[str] = ("psnr", "iou", "structure_identity", "structure_sharpness")  # keys of the scores file
    fractions: Sequence[str] = ()  # fraction-of-the-oracle keys reported beside them
    oracle_variant: Optional[str] = None  # the variant the oracle fits (None: the object's first)
    about: str = ""


WORLDS = {
    "multimodal": World(
        "multimodal", "a blue ball",
        dict(objects=["ball"], variants=["striped", "spotted", "checkered"], bandwidth=0.2),
        scores=("psnr", "iou", "structure_identity", "structure_sharpness", "structure_consistency"),
        fractions=("structure_identity_fraction_of_oracle", "structure_sharpness_fraction_of_oracle",
                   "structure_consistency_fraction_of_oracle"),
        oracle_variant="spotted",  # the variant the positive controls are made from (positive_controls.CONTROL_VARIANT)
        about="the blue ball in three textured variants (striped, spotted, checkered) under the same captions",
    ),
    "biased": World(
        "biased", "a penguin",
        # view captions kept, as in ESD's setting (threestudio's view-dependent prompting appends them)
        dict(objects=["penguin"], bandwidth=0.2, view_distribution="front_heavy", caption_views=True),
        scores=("psnr", "iou", "structure_identity", "structure_sharpness", "structure_janus",
                "structure_view_diversity"),
        fractions=("structure_identity_fraction_of_oracle", "structure_janus_fraction_of_two_faced",
                   "structure_view_diversity_fraction_of_oracle"),
        about="the penguin rendered front-heavy (R = 8: the front 8 times, the back once), its renders captioned "
        "with view words as threestudio's view-dependent prompts read them",
    ),
}

# how the scores file's keys are headed in the report
LABELS = {
    "psnr": "PSNR", "iou": "IoU", "structure_identity": "identity", "structure_sharpness": "sharpness",
    "structure_consistency": "consistency", "structure_janus": "Janus", "structure_view_diversity": "view diversity",
    "structure_janus_two_faced": "Janus of the two-faced control",
    "structure_identity_fraction_of_oracle": "identity / oracle",
    "structure_sharpness_fraction_of_oracle": "sharpness / oracle",
    "structure_consistency_fraction_of_oracle": "consistency / oracle",
    "structure_view_diversity_fraction_of_oracle": "view diversity / oracle",
    "structure_janus_fraction_of_two_faced": "Janus, oracle 0 .. two-faced 1",
}


@dataclass
class Setting:
    name: str
    method: str
    overrides: List[str] = field(default_factory=list)
    official: bool = True


ORACLE = Setting("oracle", "oracle")  # lucid-oracle-toy.yaml: run first on every world and seed, not a method

SETTINGS = {
    "sds": Setting("sds", "sds"),
    # DreamFusion's guidance scale as threestudio writes it (eps_c + 100 (eps_c - eps_u): dreamfusion-sd.yaml and
    # lucid-sds-guidance's own default), beside the toy config's 6.5 (= diffusers' 7.5)
    "sds-100": Setting("sds-100", "sds", ["system.guidance.guidance_scale=100"]),
    "ism": Setting("ism", "ism"),
    "vsd": Setting("vsd", "vsd"),
    # ESD at lambda 0 is VSD (guidance_scale_lora = 1 - lambda: the same update, tests/guidance/test_vsd_guidance.py),
    # so the checks read VSD's runs for it; lambda 0 and 1 stay runnable as a sweep (--methods)
    "esd-0": Setting("esd-0", "esd", ["system.guidance.lambda_coeff=0.0"], official=False),
    "esd-0.5": Setting("esd-0.5", "esd", ["system.guidance.lambda_coeff=0.5"]),  # the toy config's own value
    "esd-1": Setting("esd-1", "esd", ["system.guidance.lambda_coeff=1.0"], official=False),
}
# The settings each world's checks read (build_claims), run by default; --methods runs a list on every world
CHECKED_SETTINGS = {"multimodal": ["sds", "sds-100", "ism"], "biased": ["sds", "vsd", "esd-0.5"]}


# ---------------------------------------------------------------------------------------------------
# numbers: aggregation over seeds and the verdict rule (threestudio_lucid.toy_world.verdicts)

# The smallest effect that matters per score, in the score's own units, stated here before any run
# (a check's margin: an interval below it refutes the claimed difference). Scores are the structure scores
# (toy_world/structure_metrics.py) and their fractions of the oracle fit's.
MARGINS = {
    # normalised correlation of the finest band with the truth's: a 3 x 3 blur of the truth loses 0.18
    "structure_sharpness": 0.05,
    "structure_consistency": 0.125,  # one held-out view of 8
    # Janus on the scale of the controls, per seed: 0 = the oracle fit's back, 1 = the two-faced penguin's
    "structure_janus_fraction_of_two_faced": 0.1,
}
# A collapse (the Janus problem), defined from the controls before any run: a back a quarter of the way or more
# from the oracle fit's back to the two-faced control's, on the scale above.
JANUS_COLLAPSE = 0.25
# The metric each checked score belongs to (its positive controls decide whether it sees)
METRIC_OF = {"structure_sharpness": "sharpness", "structure_consistency": "consistency",
             "structure_janus_fraction_of_two_faced": "janus"}


@dataclass
class Stat:
    mean: float
    std: float  # sample standard deviation over seeds (ddof 1); nan with one value
    n: int
    exact: bool = False  # a constant of the claim (a threshold), not a measurement
    values: tuple = ()  # the per-seed values
    seeds: tuple = ()  # the seed of each value (pairs the methods' runs); positions when not given

    def per_seed(self) -> str:
        return "" if self.exact or len(self.values) < 2 else " (" + ", ".join(f"{v:.3f}" for v in self.values) + ")"

    def by_seed(self) -> Dict:
        return dict(zip(self.seeds or range(len(self.values)), self.values))

    def __str__(self) -> str:
        if self.exact:
            return f"{self.mean:g}"
        if self.n == 0 or math.isnan(self.mean):
            return "n/a"
        return f"{self.mean:.3f}" if self.n == 1 or math.isnan(self.std) else f"{self.mean:.3f} ± {self.std:.3f}"


def aggregate(values: Sequence[Optional[float]], seeds: Optional[Sequence[int]] = None) -> Stat:
    """Mean and sample std (ddof 1) of the finite values (a nan score, e.g. sharpness where the truth has no
    detail, and missing runs are left out), with the seed of each (``seeds[i]`` made ``values[i]``)."""
    seeds = list(seeds) if seeds is not None else list(range(len(values)))
    kept = [(s, float(v)) for s, v in zip(seeds, values) if v is not None and math.isfinite(float(v))]
    xs = [v for _, v in kept]
    if not xs:
        return Stat(float("nan"), float("nan"), 0)
    std = float(np.std(xs, ddof=1)) if len(xs) > 1 else float("nan")
    return Stat(float(np.mean(xs)), std, len(xs), values=tuple(xs), seeds=tuple(s for s, _ in kept))


@dataclass
class Check:
    """One measurable statement: ``lhs`` is less (``"<"``) or greater (``">"``) than ``rhs`` by a margin that
    matters (``margin``); a ``"precondition"`` (the world shows the failure) or a ``"claim"``."""

    text: str
    lhs_label: str
    lhs: Stat
    op: str
    rhs_label: str
    rhs: Stat  # a constant is a Stat with exact=True
    margin: float = 0.05
    role: str = verdicts.CLAIM
    verdict: str = ""
    detail: str = ""
    result: Optional[verdicts.Verdict] = None
    sees: Optional[bool] = None  # whether the score's metric separates its positive controls (None: not asked)


SHOWN, REFUTED, INCONCLUSIVE = verdicts.SHOWN, verdicts.REFUTED, verdicts.INCONCLUSIVE


def compare(check: Check) -> Check:
    """The verdict rule (``verdicts`` module): the per-seed differences ``lhs_s - rhs_s`` in the claimed
    direction over the seeds both sides have (against a constant, ``lhs_s - c``), their mean and 95 %
    t interval: shown if it excludes 0 on the claimed side, refuted if not and its upper end is below the
    check's margin, inconclusive otherwise, with fewer than ``verdicts.MIN_SEEDS`` paired seeds, or when the
    check's metric does not separate its positive controls (``check.sees`` False)."""
    other = check.rhs.mean if check.rhs.exact else check.rhs.by_seed()
    v = verdicts.paired_verdict(check.lhs.by_seed(), other, check.op, check.margin, sees=check.sees)
    check.result, check.verdict, check.detail = v, v.outcome, v.describe()
    return check


def constant(x: float) -> Stat:
    return Stat(float(x), 0.0, 1, exact=True)


def claim_verdict(checks: Sequence[Check]) -> str:
    """Inconclusive unless every precondition is shown; then refuted if a claim check is refuted, shown if
    all are (``verdicts.claim_outcome``)."""
    return verdicts.claim_outcome((c.role, c.verdict) for c in checks)[0]


def build_claims(stats: Dict[str, Dict[str, Dict[str, Stat]]], sees: Optional[Dict[str, bool]] = None) -> List[Dict]:
    """The claims as checks over ``stats[world][setting][score]`` (``setting`` "oracle" for the oracle fit), every
    check, threshold and margin fixed here before the run (no method is picked after it); a world or setting
    not run gives inconclusive checks, and so does a check whose metric does not separate its positive controls
    (``sees[metric]`` False; ``None``: not asked). Returns ``[{"title", "paper", "world", "checks", "verdict",
    "notes"}]``."""
    missing = Stat(float("nan"), float("nan"), 0)
    sees = sees or {}

    def get(world, setting, score):
        return stats.get(world, {}).get(setting, {}).get(score, missing)

    def check(text, lhs_label, lhs, op, rhs_label, rhs, score, role=verdicts.CLAIM):
        return Check(text, lhs_label, lhs, op, rhs_label, rhs, MARGINS[score], role, sees=sees.get(METRIC_OF[score]))

    mm, bi = "multimodal", "biased"
    pre = verdicts.PRECONDITION
    sharp, cons = "structure_sharpness", "structure_consistency"
    lucid = [
        check("the world exposes over-smoothing: SDS's renders are blurrier than the oracle fit's (structure "
              "sharpness, paired by seed)", "SDS sharpness", get(mm, "sds", sharp), "<", "oracle sharpness",
              get(mm, "oracle", sharp), sharp, pre),
        check("ISM keeps more detail than SDS (higher structure sharpness)", "ISM sharpness", get(mm, "ism", sharp),
              ">", "SDS sharpness", get(mm, "sds", sharp), sharp),
        check("ISM keeps more detail than SDS at DreamFusion's guidance scale 100", "ISM sharpness",
              get(mm, "ism", sharp), ">", "SDS (CFG 100) sharpness", get(mm, "sds-100", sharp), sharp),
        check("ISM's views commit to one variant more than SDS's (higher consistency)", "ISM consistency",
              get(mm, "ism", cons), ">", "SDS consistency", get(mm, "sds", cons), cons),
    ]
    jf = "structure_janus_fraction_of_two_faced"
    janus = {s: get(bi, s, jf) for s in SETTINGS}
    collapse = f"{JANUS_COLLAPSE:g}"
    esd = [
        check(f"the world exposes Janus: SDS collapses (its Janus at least {collapse} of the way from the oracle's back "
              "to the two-faced control's)", "SDS Janus fraction", janus["sds"], ">", collapse, constant(JANUS_COLLAPSE),
              jf, pre),
        check(f"VSD collapses (Janus fraction above {collapse})", "VSD Janus fraction", janus["vsd"], ">", collapse,
              constant(JANUS_COLLAPSE), jf),
        check("the entropy term lowers Janus: ESD at its official lambda 0.5 below ESD at lambda 0 (= VSD, the same "
              "update run for run)", "ESD λ=0.5 Janus fraction", janus["esd-0.5"], "<", "VSD (ESD λ=0) Janus fraction",
              janus["vsd"], jf),
    ]
    claims = [
        dict(title="SDS over-smooths; ISM keeps detail", paper="LucidDreamer (Liang et al., 2024)", world=mm,
             checks=[compare(c) for c in lucid]),
        dict(title="SDS and VSD collapse to the dominant mode (Janus); the entropy term lowers it",
             paper="ESD (Wang et al., 2024)", world=bi, checks=[compare(c) for c in esd]),
    ]
    for c in claims:
        c["verdict"] = claim_verdict(c["checks"])
    claims[0]["notes"] = lucid_notes(lucid)
    claims[1]["notes"] = esd_notes(esd, janus)
    return claims


def lucid_notes(checks: Sequence[Check]) -> List[str]:
    """What the numbers say about the LucidDreamer claim (rules over the checks' outcomes)."""
    blur, detail, detail_100, consistent = checks
    notes = []
    if detail.verdict != detail_100.verdict:
        notes.append(f"Against SDS at the toy config's guidance scale ISM's sharpness check is {detail.verdict}, against "
                     f"SDS at CFG 100 it is {detail_100.verdict} (SDS sharpness {detail.rhs} and {detail_100.rhs}).")
    if blur.verdict == SHOWN and detail.verdict != SHOWN:
        notes.append(f"Both methods are blurrier than the oracle fit (SDS sharpness {blur.lhs}, ISM {detail.lhs}, oracle "
                     f"{blur.rhs}): the world produces the over-smoothing, but ISM is not shown to escape it here.")
    if consistent.verdict == REFUTED:
        notes.append(f"ISM's views do not commit to one variant more than SDS's (consistency {consistent.lhs} "
                     f"against {consistent.rhs}); the nearest-variant column of the table shows how the views split.")
    return notes


def esd_notes(checks: Sequence[Check], janus: Dict[str, Stat]) -> List[str]:
    """What the numbers say about the ESD claim (rules over the checks' outcomes)."""
    sds, vsd, entropy = checks
    notes = []
    if vsd.verdict == REFUTED and vsd.lhs.n and vsd.lhs.mean < JANUS_COLLAPSE:
        notes.append(f"VSD does not collapse on this world (Janus fraction {vsd.lhs}, below {JANUS_COLLAPSE:g}: its backs "
                     "are nearer the oracle's back than a second front), so there is no collapse for the entropy term to undo.")
    if sds.verdict == SHOWN and vsd.verdict != SHOWN:
        notes.append(f"SDS does collapse (Janus fraction {sds.lhs}) where VSD, on the same world and budget, is not shown "
                     f"to ({vsd.lhs}).")
    if vsd.verdict == SHOWN and sds.verdict != SHOWN:
        notes.append(f"VSD collapses (Janus fraction {vsd.lhs}) where SDS, on the same world and budget, is not shown to "
                     f"({sds.lhs}): the world shows the collapse the paper attributes to VSD, but the claim as fixed before "
                     f"the run needs SDS's too, so its verdict stays {INCONCLUSIVE}; the entropy check on its own reads "
                     f"{entropy.verdict} (ESD lambda 0.5 {entropy.lhs} against VSD {entropy.rhs}).")
    same = janus["esd-0"].values and janus["esd-0"].values == janus["vsd"].values
    if same:
        notes.append("ESD at lambda 0, run here as a sweep, reproduces VSD run for run (the same update: "
                     "guidance_scale_lora = 1 - lambda), as the implementation says.")
    return notes


def stat_keys(world: World) -> List[str]:
    """The scores aggregated per world and setting: the table's, their fractions, the two-faced control's Janus."""
    return list(dict.fromkeys([*world.scores, *world.fractions, "structure_janus_two_faced"]))


def _number(x) -> float:
    return float("nan") if x is None else float(x)


def control_separations(size_options: Dict) -> Dict[str, object]:
    """``positive_controls.separations`` of every structure metric, its analytic controls rendered at the
    benchmark's world size (``size_options``): ``{metric: Separation}``."""
    from threestudio_lucid.toy_world import positive_controls as pc

    out = {}
    for group in (("identity", "sharpness", "consistency"), ("janus", "view_diversity")):
        out.update(pc.separations(group, pc.control_settings(group[0], **size_options)))
    return out


# ---------------------------------------------------------------------------------------------------
# worlds and runs


def world_settings(world: World, size_options: Dict):
    from threestudio_lucid.toy_world.dataset import ToyWorldSettings

    return ToyWorldSettings(**{**world.build, **size_options})


def estimator_steps_of(path: str) -> Optional[int]:
    """The pretraining steps of a world's VSD/ESD estimator (``"estimator"`` in its ``toy_world.json``; 0 for a
    randomly initialised one, None when the file is unreadable)."""
    try:
        with open(os.path.join(path, "toy_world.json")) as f:
            return int((json.load(f).get("estimator") or {}).get("steps", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def ensure_world(world: World, load_dir: str, size_options: Dict, estimator_steps: int) -> str:
    """``<load_dir>/toy-claims-<name>``, (re)built only when missing, built with other settings, or with another
    pretraining of the VSD/ESD estimator (``estimator_steps``; ``--estimator-steps``, by default
    ``lucid-build-toy-world``'s)."""
    from threestudio_lucid.toy_world.pipeline import (ESTIMATOR_SUBFOLDER, build_toy_world, is_exact_toy_world,
                                                      read_toy_world_settings)

    path = os.path.join(load_dir, f"toy-claims-{world.name}")
    wanted = world_settings(world, size_options).to_dict()
    if is_exact_toy_world(path) and os.path.isdir(os.path.join(path, ESTIMATOR_SUBFOLDER)):
        if read_toy_world_settings(path).to_dict() == wanted and estimator_steps_of(path) == estimator_steps:
            return path
    print(f"building the {world.name} world at {path}", flush=True)
    build_toy_world(path, estimator_steps=estimator_steps, **{**world.build, **size_options})
    return path


def ensure_learned_prior(world: World, world_path: str, load_dir: str, steps: Optional[int]) -> str:
    """``<load_dir>/toy-claims-<name>-learned``: the learned prior (``toy_world/learned_prior.py``) trained on the
    exact world at ``world_path``, (re)built only when missing or made from another world or step count."""
    from threestudio_lucid.toy_world.learned_prior import DEFAULT_STEPS, build_learned_prior, read_record
    from threestudio_lucid.toy_world.pipeline import is_learned_prior

    path = os.path.join(load_dir, f"toy-claims-{world.name}-learned")
    if is_learned_prior(path) and world_settings_of(path) == world_settings_of(world_path) and \
            read_record(path).get("steps") == (DEFAULT_STEPS if steps is None else steps):
        return path
    print(f"training the learned prior of the {world.name} world at {path} (once; minutes)", flush=True)
    build_learned_prior(world_path, path, overwrite=True, **({} if steps is None else {"steps": steps}))
    return path


def world_settings_of(path: str) -> Dict:
    from threestudio_lucid.toy_world.pipeline import read_toy_world_settings

    return read_toy_world_settings(path).to_dict()


def grid_overrides(size_options: Dict) -> List[str]:
    """The data options that snap the training cameras to the worlds' render grid (``size_options``)."""
    elevations = ",".join(f"{e:g}" for e in size_options["elevations_deg"])
    return [f"data.azimuth_step_deg={360.0 / size_options['n_azimuths']:g}", f"data.elevation_grid_deg=[{elevations}]"]


def made_on_record(world_path: str) -> Dict:
    """What a run's scores depend on besides its own options: the model folder, its world's settings, its estimator's
    pretraining and (a learned prior) its training record. A finished run is reused only when this is unchanged."""
    from threestudio_lucid.toy_world.pipeline import LEARNED_PRIOR_FILE

    made_on = {"model": os.path.abspath(world_path), "world": world_settings_of(world_path),
               "estimator_steps": estimator_steps_of(world_path)}
    learned = os.path.join(world_path, LEARNED_PRIOR_FILE)
    if os.path.exists(learned):
        with open(learned) as f:
            record = json.load(f)
        made_on["learned_prior"] = {k: record.get(k) for k in ("steps", "seed", "channels", "batch_size")}
    return made_on


def run_key(world: str, setting: str, seed: int, prior: str = "exact") -> str:
    """A run's tag; the oracle fit does not use the prior, so both priors share it."""
    return f"{world}-{setting}-s{seed}" if prior == "exact" or setting == ORACLE.name else f"{world}-{prior}-{setting}-s{seed}"


def steps_of_run(trial: str) -> Optional[int]:
    """``trainer.max_steps`` of a finished run, from the config the launcher saved (None without one)."""
    from omegaconf import OmegaConf

    parsed = os.path.join(trial, "configs", "parsed.yaml")
    if not os.path.exists(parsed):
        return None
    return int(OmegaConf.load(parsed).trainer.max_steps)


def run_cell(world: World, world_path: str, setting: Setting, seed: int, steps: int, out_root: str, backend: str,
             size: int, extra: Sequence[str], oracle_scores: Optional[str] = None, prior: str = "exact") -> Dict:
    """One run, or its saved record when its scores file exists (resume). Returns the scores with
    ``seconds`` (nan when the run was made by an earlier invocation without a record), ``grid``,
    ``scores_file``, ``trial`` and ``skipped``. The oracle (``setting`` :data:`ORACLE`) fits the world's
    ``oracle_variant``; a method run gets ``oracle_scores`` (that seed's oracle's scores file) for the
    fractions its evaluator writes. ``prior`` "learned": ``world_path`` is the learned prior's folder, and
    VSD/ESD put their LoRA on its UNet (:data:`LEARNED_PRIOR_LORA`)."""
    tag = run_key(world.name, setting.name, seed, prior)
    trial = os.path.join(out_root, f"lucid-{setting.method}-toy", tag)
    scores_file = os.path.join(trial, "save", "toy_world_scores.json")
    record_file = os.path.join(out_root, "records", tag + ".json")
    made_on = made_on_record(world_path)
    if os.path.exists(scores_file):
        made_with = steps_of_run(trial)
        if made_with not in (None, steps):
            raise SystemExit(f"error: {trial} was made with {made_with} steps, not {steps}; pass --steps {made_with} "
                             "or another --out")
        record = {}
        if os.path.exists(record_file):
            with open(record_file) as f:
                record = json.load(f)
        if record.get("made_on") != made_on:  # another world, prior or estimator: its scores are not this cell's
            raise SystemExit(f"error: {trial} was made on another world or prior than {world_path} is now (or before "
                             "the records said which); pass another --out, or move that folder away to run it again")
        with open(scores_file) as f:
            scores = json.load(f)
        seconds = record.get("seconds", float("nan"))
        scores.update(seconds=seconds, grid=os.path.join(trial, "save", "toy_world_eval.png"), skipped=True,
                      scores_file=scores_file, trial=trial)
        return scores
    if os.path.isdir(trial):  # a run killed before it scored: the launcher refuses an existing folder, so it
        k = 1  # is kept aside (never deleted) and the run starts again
        while os.path.exists(f"{trial}.interrupted-{k}"):
            k += 1
        os.replace(trial, f"{trial}.interrupted-{k}")
    if setting is ORACLE:  # the oracle has no prompt-processing options: the world's method overrides do not apply
        own = [f"system.guidance.variant={world.oracle_variant}"] if world.oracle_variant else []
    else:
        own = [*world.overrides, *setting.overrides]
        own += LEARNED_PRIOR_LORA if prior == "learned" and setting.method in ("vsd", "esd") else []
        own += [f"system.evaluator.oracle_scores={oracle_scores}"] if oracle_scores else []
    overrides = [
        *own,
        f"data.width={size}", f"data.height={size}", f"data.eval_width={size}", f"data.eval_height={size}",
        *extra,
    ]
    scores = run_method(setting.method, world.caption, world_path, out_root, steps, seed, backend, overrides, tag=tag)
    os.makedirs(os.path.dirname(record_file), exist_ok=True)
    with open(record_file, "w") as f:
        json.dump({"seconds": scores["seconds"], "steps": steps, "seed": seed, "world": world.name,
                   "setting": setting.name, "made_on": made_on}, f, indent=2)
    scores.update(skipped=False, scores_file=scores_file, trial=trial)
    return scores


# ---------------------------------------------------------------------------------------------------
# report


def truth_rows(world_path: str, caption: str) -> Dict[str, np.ndarray]:
    """Each variant's ground truth over the held-out views, laid out as the eval grid's rows."""
    import torch

    from threestudio_lucid.toy_world.dataset import eval_cameras
    from threestudio_lucid.toy_world.evaluate import ground_truth, object_of_prompt
    from threestudio_lucid.toy_world.pipeline import read_toy_world_settings

    settings = read_toy_world_settings(world_path)
    key = object_of_prompt(caption, settings.objects)
    cams = eval_cameras(settings)
    pick = (cams["object_index"] == settings.objects.index(key)) & (cams["variant_index"] == 0)
    truths = ground_truth(settings, key, cams["elevation"][pick], cams["azimuth"][pick], cams["distance"][pick])
    rows = {}
    for name, t in truths.items():
        rgb = (t["rgb"].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        rows[name] = np.concatenate(list(rgb), axis=1)
    return rows


def write_grid(path: str, rows: List[np.ndarray]) -> None:
    import imageio.v2 as imageio

    width = max(r.shape[1] for r in rows)
    sep = np.full((2, width, 3), 255, dtype=np.uint8)
    out = []
    for r in rows:
        if r.shape[1] < width:
            r = np.concatenate([r, np.full((r.shape[0], width - r.shape[1], 3), 255, dtype=np.uint8)], axis=1)
        out += [r, sep]
    imageio.imwrite(path, np.concatenate(out[:-1], axis=0))


def setting_label(name: str) -> str:
    if name == ORACLE.name:
        return "oracle fit"
    if name == "sds-100":
        return "SDS (CFG 100)"
    s = SETTINGS[name]
    if s.method == "esd":
        lam = name.split("-", 1)[1]
        return f"ESD λ={lam}" + ("" if s.official else " (sweep)")
    return name.upper()


def variant_counts(runs: List[Dict]) -> str:
    """How the variants the structure identity finds fall over the seeds (run level) and the views (view level;
    "none": no variant reaches ``structure_metrics.MIN_MATCH``)."""
    chosen, views = {}, {}
    for r in runs:
        if "structure_variant" in r:
            v = r["structure_variant"] or "none"
            chosen[v] = chosen.get(v, 0) + 1
        for v in r.get("structure_view_variants", []):
            views[v or "none"] = views.get(v or "none", 0) + 1
    if not chosen:
        return ""
    total = sum(views.values()) or 1
    return ", ".join(f"{k} {n}" for k, n in sorted(chosen.items())) + " / views: " + ", ".join(
        f"{k} {100 * n / total:.0f}%" for k, n in sorted(views.items()))


def controls_section(stats: Dict, separations: Dict[str, object], args) -> List[str]:
    """The positive controls, reported first: each world's oracle fit, and whether each metric separates its
    analytic controls."""
    lines = [
        "## Positive controls",
        "",
        "**The oracle fit** (`lucid-oracle-toy.yaml`, `toy_world/oracle.py`): on each world and seed, before the "
        f"methods, the same splats, cameras, seed and budget ({args.steps} steps) trained with an L2 image loss "
        "against the world's true renders from the batch's own cameras; scored by the same evaluator. Its scores are "
        "each score's ceiling here; every method's are also given as fractions of the same seed's oracle "
        "(`evaluate.fractions_of_oracle`), Janus as the fraction of the way from the oracle's back (0) to the "
        "two-faced control's (1).",
        "",
    ]
    for wname, world_stats in stats.items():
        oracle = world_stats.get(ORACLE.name)
        if not oracle:
            continue
        world = WORLDS[wname]
        keys = [k for k in world.scores] + (["structure_janus_two_faced"] if wname == "biased" else [])
        fit = f" (fits the {world.oracle_variant} variant)" if world.oracle_variant else ""
        lines += [f"| {wname} world{fit} | " + " | ".join(LABELS.get(k, k) for k in keys) + " | seeds |",
                  "|---" * (len(keys) + 2) + "|",
                  "| oracle fit | " + " | ".join(str(oracle[k]) for k in keys) + f" | {oracle[keys[0]].n} |", ""]
    lines += [
        f"**The analytic controls** (`toy_world/positive_controls.py`, rendered at {args.image_size} px): a structure "
        "metric whose scores do not separate them (a brightness change, flat discs, blends, blurs, the two-faced "
        "penguin, views collapsed onto the front) is not used for a verdict: its checks are inconclusive.",
        "",
    ]
    for metric, sep in separations.items():
        lines += [f"- {line}" if not line.startswith("  ") else f"  - {line.strip()}" for line in sep.summary().splitlines()]
    lines.append("")
    return lines


DEMO_KEYS = ("psnr", "iou", "structure_identity", "structure_sharpness", "structure_identity_fraction_of_oracle",
             "structure_sharpness_fraction_of_oracle", "structure_janus_fraction_of_two_faced")


def read_demo(trial: str) -> Optional[Dict]:
    """The scores of a ``scripts/demo.sh`` run (its ``toy_world_scores.json``, written with the oracle fit's scores,
    so it carries the fractions), with its folder and config; None when they are not there."""
    from omegaconf import OmegaConf

    try:
        with open(os.path.join(trial, "save", "toy_world_scores.json")) as f:
            scores = json.load(f)
        cfg = OmegaConf.load(os.path.join(trial, "configs", "parsed.yaml"))
    except (OSError, ValueError):
        return None
    if "structure_identity_fraction_of_oracle" not in scores:
        return None
    return dict(scores=scores, trial=os.path.relpath(os.path.abspath(trial), REPO), steps=int(cfg.trainer.max_steps),
                prompt=str(cfg.system.prompt_processor.prompt), guidance=str(cfg.system.guidance_type),
                oracle=str(cfg.system.get("evaluator", {}).get("oracle_scores", "")))


def demo_section(demo: Optional[Dict]) -> List[str]:
    """The main demo's scores as fractions of its own oracle fit (issue 27, part 7)."""
    if not demo:
        return []
    sc = demo["scores"]
    cells = " | ".join(f"{_number(sc.get(k)):.3f}" for k in DEMO_KEYS)
    return [
        "## The main demo",
        "",
        f"`bash scripts/demo.sh` (`{demo['guidance']}`, prompt \"{demo['prompt']}\", {demo['steps']} steps, the "
        "penguin-only world `load/toy-penguin`) runs its oracle fit first; its run `"
        f"{demo['trial']}` scored:",
        "",
        "| " + " | ".join(LABELS.get(k, k) for k in DEMO_KEYS) + " |",
        "|---" * len(DEMO_KEYS) + "|",
        f"| {cells} |",
        "",
    ]


def ism_amplifies_colour(stability: Optional[Dict], prior: str) -> List[str]:
    """The worlds of ``guidance_stability.json`` (``scripts/guidance_stability.py``) under ``prior`` where ISM's update
    amplifies a colour change of the true render (restore cosine below minus its half gap and three floors)."""
    worlds = []
    for r in (stability or {}).get("results", []):
        m = r.get("methods", {}).get("ism")
        if r.get("prior") == prior and m:
            value, gap = m["restore"]["colour"]["update"], m["half_gap"]["colour"]["update"]
            if value < -max(gap, 3 * m["floor"]):
                worlds.append(f"{r['world']} {value:+.2f}")
    return worlds


def stable_diffusion_section(claims: List[Dict], args, stability: Optional[Dict] = None) -> List[str]:
    """What the toy verdicts do and do not say about Stable Diffusion (fixed text, and rules over the verdicts and,
    where ``stability`` (guidance_stability.json) is given, over whether ISM returns to the truth under this prior)."""
    lucid, esd = claims
    prior = ("the worlds' **exact prior** -- the optimal denoiser of their finite sets of captioned renders, so every "
             "score the methods get is the true one and every training camera is a view it has seen"
             if args.prior == "exact" else
             "a **learned prior** -- a small diffusers UNet trained on the worlds' renders and captions, which "
             "interpolates between views and errs as a trained network does")
    lines = [
        "## What this does and does not say about Stable Diffusion",
        "",
        f"- The verdicts are made with {prior}, at {args.image_size} px and {args.steps} steps. Stable Diffusion is "
        "neither: a network trained on 2D images of the world, with no camera, whose errors (and the guidance scale "
        "that trades them against diversity) are part of why the papers' failures appear there. A verdict here is "
        "about the update rule given such a prior, on a world built to show the failure; it does not carry over "
        "to Stable Diffusion by itself.",
    ]
    if lucid["verdict"] == SHOWN:
        lines.append("- LucidDreamer's claim is shown on the toy world: with an exact prior, ISM's interval targets "
                     "keep more structure than SDS's. That is the mechanism the paper names, isolated; whether the "
                     "margin survives Stable Diffusion's own errors is not measured here.")
    elif lucid["verdict"] == REFUTED:
        lacks = ("a learned prior's errors, 512 px, thousands of steps, LucidDreamer's point-cloud initialisation"
                 if args.prior == "exact" else
                 "a prior trained on billions of images, prompts that say far more about an image than one object's "
                 "caption, 512 px, thousands of steps, LucidDreamer's point-cloud initialisation")
        lines.append("- LucidDreamer's claim is refuted on the toy world at this budget: ISM does not keep more "
                     "structure than SDS where the world makes SDS blur. On Stable Diffusion the paper's effect may "
                     f"come from something this world lacks ({lacks}); this page cannot tell which.")
    else:
        lines.append("- LucidDreamer's claim is inconclusive here: no statement about Stable Diffusion follows.")
    amplifies = ism_amplifies_colour(stability, args.prior)
    if amplifies:
        lines.append("- Under this prior the true render is not a point ISM returns to: its update amplifies a smooth "
                     f"colour change of the truth (restore cosine {', '.join(amplifies)}; "
                     "[`guidance_stability.md`](guidance_stability.md)), the trajectory term's doing, so ISM's assets "
                     "drift in colour rather than blur. Whether Stable Diffusion's trajectory term does the same is not "
                     "measured here.")
    if esd["verdict"] == INCONCLUSIVE and esd["checks"][0].verdict != SHOWN:
        why = ("With view captions the exact prior knows what a back looks like, however rare backs are in its data; "
               "Stable Diffusion's Janus problem comes from a prior that has seen few backs and does not read the view "
               "words reliably, which this prior does not reproduce; `--prior learned` judges the claim again on a "
               "prior that has to learn the back from the same renders." if args.prior == "exact" else
               "A network trained on this world's front-heavy renders (the back weighted an eighth of the front) with their "
               "view captions still "
               "learns the back well enough that SDS does not paint the front there; Stable Diffusion's Janus problem "
               "comes from far rarer backs and view words it reads unreliably, which neither toy prior reproduces.")
        vsd, entropy = (esd["checks"] + [None, None])[1:3]
        if vsd is not None and entropy is not None and vsd.verdict == SHOWN:
            why += (f" VSD does collapse here (Janus fraction {vsd.lhs}), the failure the paper attributes to it; the "
                    f"entropy check on its own reads {entropy.verdict}, which says how lambda acts on such a collapse "
                    "under this prior, not yet on Stable Diffusion's.")
        lines.append("- ESD's claim is not tested: its precondition, SDS collapsing to the dominant (front) mode, is "
                     f"{esd['checks'][0].verdict} on the biased world. " + why)
    elif esd["verdict"] != INCONCLUSIVE:
        lines.append(f"- ESD's claim is {esd['verdict']} on the biased world: the collapse it needs is shown there, "
                     "so the entropy term's effect on it is measured; how that carries to Stable Diffusion depends on "
                     "how closely this world's front-heavy data stand in for its view bias.")
    else:
        lines.append("- ESD's claim is inconclusive here: no statement about Stable Diffusion follows.")
    lines.append("")
    return lines


def convergence_reports(path: str, prior: str = "exact") -> List[str]:
    """The ``--convergence`` reports beside the report at ``path`` made on ``prior`` (``claims_convergence*.md``; the
    learned prior's end in ``_learned``), by name."""
    import glob

    names = (os.path.basename(p) for p in glob.glob(os.path.join(os.path.dirname(path), "claims_convergence*.md")))
    return sorted(n for n in names if n.endswith("_learned.md") == (prior == "learned"))


def related_reports(path: str, prior: str) -> List[str]:
    """Lines linking the reports beside ``path`` that bear on its verdicts: the same claims on the other prior, and
    whether the true render is a fixed point of SDS and ISM under each prior (``scripts/guidance_stability.py``)."""
    folder, lines = os.path.dirname(path), []
    other = {"exact": ("claims_learned.md", "the learned prior", "--prior learned"),
             "learned": ("claims.md", "the exact prior", "")}[prior]
    if os.path.exists(os.path.join(folder, other[0])):
        lines.append(f"The same claims judged on {other[1]}: [`{other[0]}`]({other[0]}) "
                     f"(`python scripts/claims_benchmark.py{' ' + other[2] if other[2] else ''}`).")
    if os.path.exists(os.path.join(folder, "guidance_stability.md")):
        lines.append("Whether the true render is a point SDS and ISM return to under each prior (a perturbation of the "
                     "truth pushed back or amplified, term by term): [`guidance_stability.md`](guidance_stability.md) "
                     "(`python scripts/guidance_stability.py`).")
    return [" ".join(lines), ""] if lines else []


def report(path: str, results: Dict, stats: Dict, claims: List[Dict], args, command: str, meta: Dict,
           separations: Optional[Dict[str, object]] = None, demo: Optional[Dict] = None) -> str:
    lines = [
        "# The papers' claims on the toy worlds",
        "",
        "Written by `scripts/claims_benchmark.py` from the runs it made (nothing here is typed by hand). The oracle "
        "fit runs first on every world and seed; then each method setting runs its official "
        "`lucid-<method>-toy.yaml`, unchanged except for the shared step budget (the step-dependent schedules scaled "
        "by `toy_benchmark.schedule_overrides`) and what the world needs; SDS also at DreamFusion's guidance scale 100 "
        "beside the toy config's. Each world runs the settings its checks read (ESD at `lambda_coeff` 0 is VSD, the "
        "same update run for run, so VSD's runs stand for it); other settings (ESD's lambda 0 and 1, a sweep) run "
        "only when asked (`--methods`).",
        "",
        f"- Command: `{command}`",
        f"- Prior: {PRIORS[args.prior]}; {describe_grid(args)}",
        f"- Budget: {args.steps} steps per run, seeds {' '.join(map(str, args.seeds))}; {meta['n_runs']} runs, "
        f"{meta['run_minutes']:.1f} min of run time in all (the sum of the runs' own times)"
        + (f"; whether the scores have stopped moving at this budget: " + ", ".join(
            f"[`{c}`]({c})" for c in convergence_reports(path, args.prior)) if convergence_reports(path, args.prior)
           else f"; no convergence run on this prior (`--convergence{' --prior learned' if args.prior == 'learned' else ''}`)"),
        "- Made by (invocations on this output folder that ran something, and this one; times UTC, load average "
        "1 / 5 / 15 min at the start and the end):",
        *[f"  - {i['started']}: `{i['command']}`, {i['runs_made']} runs made, {i['wall_minutes']:.1f} min wall; "
          f"{i['machine']}; load {i['load_start']} → {i['load_end']}" + (f" ({i['note']})" if i.get("note") else "")
          for i in meta["invocations"]],
        f"- Scores (`docs/toy_worlds.md`, \"Structure scores\"): the structure scores (`toy_world/structure_metrics.py`: "
        f"normalised correlations of band-passed images, blind to brightness) on the world's {args.n_eval_views} "
        "held-out views and 12 back views, against the nearest variant, with PSNR and IoU; mean ± sample std over "
        "the seeds.",
        "",
        "Verdict rule (code: `compare`, `toy_world/verdicts.py`; `docs/toy_worlds.md`): the methods run on the same "
        "seeds, and each check's evidence is the per-seed difference in the claimed direction, its mean and 95% "
        "Student-t interval. *Shown*: the interval excludes 0 on the claimed side; *refuted*: not shown and the "
        "interval's upper end is below the check's margin (the smallest effect that matters, fixed in the script "
        f"before the run: {', '.join(f'{k} {v:g}' for k, v in MARGINS.items())}; a Janus collapse is a fraction above "
        f"{JANUS_COLLAPSE:g}); *inconclusive* otherwise, with fewer than {verdicts.MIN_SEEDS} paired seeds, and when "
        "the check's metric does not separate its positive controls. A claim is inconclusive unless its precondition "
        "(the world shows the failure) is shown; then refuted if a check is refuted, shown if all are.",
        "",
        "An earlier analysis of what each guidance's update does to fixed renders, on the earlier 24 x 4 worlds and "
        "colour scores, is in [`claims_mechanism.md`](claims_mechanism.md) (`python scripts/claims_diagnostics.py`); "
        "it was not remade for this run.",
        "",
        *related_reports(path, args.prior),
    ]
    lines += controls_section(stats, separations or {}, args)
    for claim in claims:
        lines += [f"## {claim['paper']}: {claim['title']}", "", f"**Verdict: {claim['verdict']}** "
                  f"(on the {claim['world']} world).", "",
                  "| check | measured | compared with | verdict |", "|---|---|---|---|"]
        for c in claim["checks"]:
            rhs = c.rhs_label if c.rhs.exact else f"{c.rhs_label} {c.rhs}{c.rhs.per_seed()}"
            role = " (precondition)" if c.role == verdicts.PRECONDITION else ""
            lines.append(f"| {c.text}{role} | {c.lhs_label} {c.lhs}{c.lhs.per_seed()} | {c.op} {rhs} | "
                         f"{c.verdict} ({c.detail}) |")
        if claim.get("notes"):
            lines += [""] + [f"- {n}" for n in claim["notes"]]
        lines.append("")
    stability_file = os.path.join(os.path.dirname(path), "guidance_stability.json")
    stability = None
    if os.path.exists(stability_file):
        with open(stability_file) as f:
            stability = json.load(f)
    lines += stable_diffusion_section(claims, args, stability)
    lines += demo_section(demo)
    for wname, world_stats in stats.items():
        world = WORLDS[wname]
        keys = list(world.scores) + list(world.fractions)
        lines += [f"## The {wname} world", "", f"{world.about}; prompt \"{world.caption}\". The oracle fit's row "
                  "first; the last columns are each method's scores as fractions of the same seed's oracle.", "",
                  "| method | " + " | ".join(LABELS.get(k, k) for k in keys) + " | seeds | time / run (s) |"
                  + (" structure variant (runs / views) |" if wname == "multimodal" else ""),
                  "|---" * (len(keys) + 3 + (wname == "multimodal")) + "|"]
        for sname, s in world_stats.items():
            runs = results[wname][sname]
            secs = aggregate([r["seconds"] for r in runs])
            row = f"| {setting_label(sname)} | " + " | ".join(str(s[k]) for k in keys)
            row += f" | {len(runs)} | {secs.mean:.0f} |" if secs.n else f" | {len(runs)} | n/a |"
            if wname == "multimodal":
                row += f" {variant_counts(runs)} |"
            lines.append(row)
        image = f"{os.path.basename(path)}_{wname}.png"
        lines += ["", f"![{wname}]({image})", "",
                  f"`{image}`: the ground truth of every variant, then one row per setting ("
                  + ", ".join(setting_label(s) for s in world_stats) + f"), seed {args.seeds[0]}, over the held-out "
                  "views.", ""]
    first_setting = (args.methods or CHECKED_SETTINGS[args.worlds[0]])[0]
    lines += [
        "## Reproducing one cell",
        "",
        "The runs are deterministic on a CPU (the same seed gives the same scores). One cell, e.g. "
        f"{setting_label(first_setting)} on the {args.worlds[0]} world, seed {args.seeds[0]} (and its oracle), "
        "into a fresh folder:",
        "",
        "    " + cell_command(args, args.worlds[0], first_setting, args.seeds[0]),
        "",
        f"and compare its line with the table's row (every score's per-seed values, the controls and each check's "
        f"interval are in [`{os.path.basename(path)}_summary.json`]({os.path.basename(path)}_summary.json), written "
        "beside this report; the per-seed values of the checked scores are also in the checks above).",
        "",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------
# convergence (--convergence): each score against the step


# How much a score may still move over the second half of the budget and count as flat: the check margins where a
# score has one, else these (PSNR in dB; the others are correlations or fractions)
FLAT_TOLERANCE = {"psnr": 0.5, "iou": 0.03, "structure_identity": 0.05, "structure_view_diversity": 0.05,
                  "structure_identity_fraction_of_oracle": 0.1, "structure_sharpness_fraction_of_oracle": 0.1,
                  "structure_consistency_fraction_of_oracle": 0.15, "structure_view_diversity_fraction_of_oracle": 0.1,
                  "structure_janus": 0.05, **MARGINS}


def read_curve(trial: str) -> List[Dict]:
    """The progress records of a run (``toy_world_progress.json``, written every ``--every`` steps)."""
    from threestudio_lucid.toy_world.evaluator import PROGRESS_FILE, read_progress

    return read_progress(os.path.join(trial, "save", PROGRESS_FILE))


def flatness(curve: List[Dict], key: str) -> Dict:
    """``{"steps", "values", "spread", "flat", "tolerance"}``: the score's records, and whether it moved by at most
    its tolerance (:data:`FLAT_TOLERANCE`) over the second half of the budget (nan values left out)."""
    pts = [(r["step"], _number(r.get(key))) for r in curve]
    pts = [(st, v) for st, v in pts if math.isfinite(v)]
    tol = FLAT_TOLERANCE.get(key, 0.05)
    if len(pts) < 2:
        return dict(steps=[p[0] for p in pts], values=[p[1] for p in pts], spread=float("nan"), flat=None,
                    tolerance=tol)
    last = pts[-1][0]
    tail = [v for st, v in pts if st >= last / 2]
    spread = max(tail) - min(tail)
    return dict(steps=[p[0] for p in pts], values=[p[1] for p in pts], spread=spread, flat=spread <= tol,
                tolerance=tol)


def convergence_keys(world: World) -> List[str]:
    return [k for k in (*world.scores, *world.fractions) if k != "structure_janus"]


def plot_convergence(path: str, curves: Dict[str, Dict[str, List[Dict]]], ncols: int = 4) -> None:
    """``curves[world][setting]`` -> a panel per world and score (each world's panels start a row), one line per
    setting, the oracle fit in black."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []  # [(world, [keys of this row])]
    for w in curves:
        keys = convergence_keys(WORLDS[w])
        rows += [(w, keys[i:i + ncols]) for i in range(0, len(keys), ncols)]
    fig, axes = plt.subplots(len(rows), ncols, figsize=(3.4 * ncols, 2.7 * len(rows)), squeeze=False)
    for i, (w, keys) in enumerate(rows):
        for j in range(ncols):
            ax = axes[i][j]
            if j >= len(keys):
                ax.axis("off")
                continue
            for sname, curve in curves[w].items():
                f = flatness(curve, keys[j])
                style = dict(color="black", linewidth=2) if sname == ORACLE.name else dict(linewidth=1)
                ax.plot(f["steps"], f["values"], label=setting_label(sname), **style)
            ax.set_title(f"{w}: {LABELS.get(keys[j], keys[j])}", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.set_xlabel("step", fontsize=7)
        axes[i][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def convergence_report(path: str, curves: Dict[str, Dict[str, List[Dict]]], args, command: str, meta: Dict) -> str:
    lines = [
        "# Convergence of the toy runs",
        "",
        "Written by `scripts/claims_benchmark.py --convergence` from the runs it made. Each setting (the oracle fit "
        "first) ran once per seed with the step-dependent schedules scaled to the budget "
        f"({args.steps} steps, `toy_benchmark.schedule_overrides`) and scored every {args.every} steps on the held-out "
        "views (`system.evaluate_every_n_steps`, the evaluator's `toy_world_progress.json`). A curve from one long run "
        "says when its scores stop moving under that run's schedule; a shorter budget scales the schedule down with it.",
        "",
        f"- Command: `{command}`",
        f"- Seeds {' '.join(map(str, args.seeds))}; {meta['n_runs']} runs, {meta['run_minutes']:.1f} min of run time; "
        f"prior: {args.prior}; {describe_grid(args)}",
        f"- Flat: the score moved by at most its tolerance over the second half of the budget (step {args.steps // 2} "
        "on); tolerances: " + ", ".join(f"{LABELS.get(k, k)} {v:g}" for k, v in FLAT_TOLERANCE.items()
                                         if any(k in convergence_keys(WORLDS[w]) for w in curves)),
        "",
        f"![curves]({os.path.basename(path)}.png)",
        "",
    ]
    for w, by_setting in curves.items():
        keys = convergence_keys(WORLDS[w])
        lines += [f"## The {w} world", "", "Each cell: the score at the budget's quarter, half and end; *flat* or "
                  "*still moving* (its spread over the second half).", "",
                  "| setting | " + " | ".join(LABELS.get(k, k) for k in keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for sname, curve in by_setting.items():
            cells = []
            for k in keys:
                f = flatness(curve, k)
                if not f["values"]:
                    cells.append("n/a")
                    continue
                at = lambda frac: _value_at(f, frac * args.steps)  # noqa: E731
                state = "n/a" if f["flat"] is None else ("flat" if f["flat"] else "**still moving**")
                cells.append(f"{at(0.25):.3f} / {at(0.5):.3f} / {f['values'][-1]:.3f}, {state} ({f['spread']:.3f})")
            lines.append(f"| {setting_label(sname)} | " + " | ".join(cells) + " |")
        moving = sorted({setting_label(s) for s, c in by_setting.items() for k in keys if flatness(c, k)["flat"] is False})
        lines += ["", f"Still moving at {args.steps} steps: {', '.join(moving)}." if moving else
                  f"Every score of every setting is flat over the second half of {args.steps} steps.", ""]
    return "\n".join(lines) + "\n"


def _value_at(f: Dict, step: float) -> float:
    """The score at the last record at or before ``step`` (the first record when none is)."""
    before = [v for st, v in zip(f["steps"], f["values"]) if st <= step]
    return before[-1] if before else f["values"][0]


PRIORS = {
    "exact": "the worlds' exact prior (`toy_world/prior.py`: the optimal denoiser of their captioned renders); VSD/ESD "
             "train the world's pretrained camera-conditioned estimator (`estimator_unet/`)",
    "learned": "a learned prior (`toy_world/learned_prior.py`: a diffusers UNet trained on the worlds' renders and "
               "captions, which generalises between views and errs as a trained network does); VSD/ESD put their "
               "LoRA and camera embedding on its UNet",
}


def describe_grid(args) -> str:
    grid = f"worlds rendered on {args.n_azimuths} azimuths x {len(args.elevations)} elevations"
    return grid + (", training cameras continuous" if args.no_snap else ", training cameras snapped to that grid")


def log_invocation(out_root: str, this: Dict) -> List[Dict]:
    """Append this invocation to ``<out>/invocations.json``; return those on the same prior that made runs (the
    exact and learned priors' runs share the folder, not a report; an entry logged without its prior is read from
    its command), and this one."""
    path = os.path.join(out_root, "invocations.json")
    history = json.load(open(path)) if os.path.exists(path) else []
    history.append(this)
    with open(path, "w") as f:
        json.dump(history, f, indent=2)
    def prior(i):
        return i.get("prior") or ("learned" if "--prior learned" in i["command"] else "exact")

    return [i for i in history[:-1] if i["runs_made"] and prior(i) == prior(this)] + [this]


def cell_command(args, world: str, setting: str, seed: int) -> str:
    """The command that reruns one cell of this benchmark (same budget and world options) into /tmp."""
    words = ["python scripts/claims_benchmark.py", "--worlds", world, "--methods", setting, "--seeds", str(seed),
             "--steps", str(args.steps)]
    for option, default in (("image_size", 64), ("n_azimuths", DENSE_AZIMUTHS), ("n_eval_views", 8),
                            ("backend", "auto"), ("prior", "exact")):
        if getattr(args, option) != default:
            words += ["--" + option.replace("_", "-"), str(getattr(args, option))]
    if list(args.elevations) != DENSE_ELEVATIONS:
        words += ["--elevations", *(f"{e:g}" for e in args.elevations)]
    if args.no_snap:
        words.append("--no-snap")
    if args.prior_steps is not None:
        words += ["--prior-steps", str(args.prior_steps)]
    from threestudio_lucid.toy_world.pipeline import DEFAULT_ESTIMATOR_STEPS

    if args.estimator_steps != DEFAULT_ESTIMATOR_STEPS:
        words += ["--estimator-steps", str(args.estimator_steps)]
    if os.path.abspath(args.load) != os.path.join(REPO, "load"):
        words += ["--load", args.load]
    words += ["--out", "/tmp/claims-cell", "--report", "/tmp/claims-cell/claims", *args.extra]
    return " ".join(words)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worlds", nargs="+", default=list(WORLDS), choices=list(WORLDS))
    parser.add_argument("--methods", nargs="+", default=None, choices=list(SETTINGS),
                        help="method settings (esd-<lambda_coeff>) run on every world (default: the settings each "
                        "world's checks read: " + "; ".join(f"{w} {' '.join(m)}" for w, m in CHECKED_SETTINGS.items())
                        + ")")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help=f"default {' '.join(map(str, DEFAULT_SEEDS))}")
    parser.add_argument("--steps", type=int, default=None, help=f"default {DEFAULT_STEPS}")
    parser.add_argument("--backend", default="auto", help="rasterizer backend")
    parser.add_argument("--load", default=os.path.join(REPO, "load"), help="where the worlds are built")
    parser.add_argument("--image-size", type=int, default=64, help="world and render size")
    parser.add_argument("--n-azimuths", type=int, default=DENSE_AZIMUTHS, help="training azimuths of the worlds")
    parser.add_argument("--elevations", type=float, nargs="+", default=DENSE_ELEVATIONS,
                        help="training elevations of the worlds (degrees)")
    parser.add_argument("--no-snap", action="store_true",
                        help="continuous training cameras (default: snapped to the worlds' render grid, views the "
                        "prior has seen)")
    parser.add_argument("--estimator-steps", type=int, default=None,
                        help="pretraining steps of the worlds' VSD/ESD estimator (default: lucid-build-toy-world's)")
    parser.add_argument("--prior", choices=("exact", "learned"), default="exact",
                        help="the worlds' exact prior, or the learned prior trained on their renders "
                        "(lucid-train-toy-prior; built into --load once)")
    parser.add_argument("--prior-steps", type=int, default=None, help="training steps of the learned prior "
                        "(default: learned_prior's)")
    parser.add_argument("--convergence", action="store_true",
                        help=f"score every --every steps and plot each score against the step (default --steps "
                        f"{CONVERGENCE_STEPS}, --seeds {' '.join(map(str, CONVERGENCE_SEEDS))}, --out "
                        "outputs/claims-convergence, --report docs/claims_convergence); no verdicts")
    parser.add_argument("--every", type=int, default=CONVERGENCE_EVERY, help="steps between scorings (--convergence)")
    parser.add_argument("--n-eval-views", type=int, default=8, help="held-out views of the worlds")
    parser.add_argument("--out", default=None, help="runs, logs and records (default outputs/claims-benchmark)")
    parser.add_argument("--report", default=None, help="writes <report>.md and <report>_<world>.png (default "
                        "docs/claims, docs/claims_learned with --prior learned)")
    parser.add_argument("--demo", default=None, metavar="RUN",
                        help="a `bash scripts/demo.sh` run folder (outputs/lucid-ism-toy/a_penguin@<time>): its scores "
                        "and their fractions of its oracle fit are reported beside the claims")
    parser.add_argument("extra", nargs="*", help="config overrides applied to every run")
    args = parser.parse_args(argv)
    if args.convergence:
        args.steps = args.steps or CONVERGENCE_STEPS
        args.seeds = args.seeds or CONVERGENCE_SEEDS
        args.out = args.out or "outputs/claims-convergence"
        args.report = args.report or "docs/claims_convergence" + ("_learned" if args.prior == "learned" else "")
        if args.every < 1:
            parser.error(f"--every {args.every}: give the steps between scorings, >= 1")
    args.steps = args.steps or DEFAULT_STEPS
    args.seeds = args.seeds or DEFAULT_SEEDS
    args.out = args.out or "outputs/claims-benchmark"
    from threestudio_lucid.toy_world.pipeline import DEFAULT_ESTIMATOR_STEPS

    if args.estimator_steps is None:
        args.estimator_steps = DEFAULT_ESTIMATOR_STEPS
    elif args.estimator_steps < 0:
        parser.error(f"--estimator-steps {args.estimator_steps}: use a whole number >= 0 (0: no pretraining)")
    args.report = args.report or ("docs/claims_learned" if args.prior == "learned" else "docs/claims")
    demo = read_demo(args.demo) if args.demo else None
    if args.demo and demo is None:
        parser.error(f"--demo {args.demo}: no save/toy_world_scores.json with the oracle fractions there; give the run "
                     "folder `bash scripts/demo.sh` printed (outputs/lucid-ism-toy/<prompt>@<time>)")

    sys.path.insert(0, REPO)
    size_options = dict(image_size=args.image_size, n_azimuths=args.n_azimuths, n_eval_views=args.n_eval_views,
                        elevations_deg=[float(e) for e in args.elevations])
    extra = [*([] if args.no_snap else grid_overrides(size_options)), *args.extra]
    if args.convergence:
        extra.append(f"system.evaluate_every_n_steps={args.every}")
    out_root = os.path.abspath(args.out)
    os.makedirs(out_root, exist_ok=True)
    start, load_start = time.time(), os.getloadavg()
    started = datetime.datetime.now(datetime.timezone.utc)
    load_dir = os.path.abspath(args.load)
    exact = {w: ensure_world(WORLDS[w], load_dir, size_options, args.estimator_steps) for w in args.worlds}
    worlds = exact if args.prior == "exact" else \
        {w: ensure_learned_prior(WORLDS[w], exact[w], load_dir, args.prior_steps) for w in args.worlds}

    separations = control_separations(size_options)  # the analytic controls first: which metrics see
    for metric, sep in separations.items():
        print(f"positive controls: {metric} {'separates its controls' if sep.sees else 'does NOT separate its controls'}",
              flush=True)
    settings = {w: [ORACLE.name, *(args.methods or CHECKED_SETTINGS[w])] for w in args.worlds}
    results = {w: {s: [] for s in settings[w]} for w in args.worlds}
    for seed in args.seeds:  # seeds outermost: a partial run has every setting of the first seeds
        for w in args.worlds:
            oracle = None
            for s in settings[w]:  # the oracle first: the methods' fractions are of this seed's oracle
                setting = ORACLE if s == ORACLE.name else SETTINGS[s]
                r = run_cell(WORLDS[w], exact[w] if setting is ORACLE else worlds[w], setting, seed, args.steps,
                             out_root, args.backend, args.image_size, extra,
                             oracle_scores=oracle["scores_file"] if oracle else None, prior=args.prior)
                oracle = r if setting is ORACLE else oracle
                r.update(fractions_of_oracle(r, oracle))  # also for runs scored before the oracle existed
                results[w][s].append(r)
                shown = " ".join(f"{LABELS.get(k, k)} {_number(r.get(k)):.3f}" for k in WORLDS[w].scores)
                how = "reused" if r["skipped"] else f"{r['seconds']:.0f} s"
                print(f"{w:10s} {s:8s} seed {seed}: {shown} ({how})", flush=True)

    report_path = os.path.abspath(args.report)
    os.makedirs(os.path.dirname(report_path), exist_ok=True)
    all_runs = [r for by in results.values() for runs in by.values() for r in runs]
    recorded = [r["seconds"] for r in all_runs if math.isfinite(r["seconds"])]
    cpus = os.cpu_count()
    command = "python scripts/claims_benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:])
    this = dict(
        started=started.strftime("%Y-%m-%d %H:%M"), command=command.strip(), prior=args.prior,
        machine=f"{cpus} cores ({cpu_model()}), {platform.system()}, niceness {os.nice(0)}",
        load_start=" / ".join(f"{x:.2f}" for x in load_start), load_end=" / ".join(f"{x:.2f}" for x in os.getloadavg()),
        runs_made=sum(not r["skipped"] for r in all_runs), wall_minutes=(time.time() - start) / 60,
    )
    meta = dict(
        n_runs=len(all_runs), n_skipped=sum(r["skipped"] for r in all_runs), run_minutes=sum(recorded) / 60,
        wall_minutes=this["wall_minutes"], invocations=log_invocation(out_root, this),
    )
    if args.convergence:  # the curves of the first seed's runs; no verdicts from them
        curves = {w: {s: read_curve(runs[0]["trial"]) for s, runs in by.items()} for w, by in results.items()}
        plot_convergence(report_path + ".png", curves)
        with open(report_path + ".md", "w") as f:
            f.write(convergence_report(report_path, curves, args, command.strip(), meta))
        with open(os.path.join(out_root, "convergence_summary.json"), "w") as f:
            json.dump({w: {s: {k: flatness(c, k) for k in convergence_keys(WORLDS[w])} for s, c in by.items()}
                       for w, by in curves.items()}, f, indent=1)
        print(f"wrote {args.report}.md and {args.report}.png ({meta['wall_minutes']:.1f} min)")
        return 0

    stats = {w: {s: {k: aggregate([r.get(k) for r in runs], args.seeds[:len(runs)]) for k in stat_keys(WORLDS[w])}
                 for s, runs in by_setting.items()} for w, by_setting in results.items()}
    claims = build_claims(stats, {m: sep.sees for m, sep in separations.items()})
    for w in args.worlds:
        rows = list(truth_rows(worlds[w], WORLDS[w].caption).values())
        rows += [split_grid(results[w][s][0]["grid"])[0] for s in settings[w]]
        write_grid(f"{report_path}_{w}.png", rows)
    with open(report_path + ".md", "w") as f:
        f.write(report(report_path, results, stats, claims, args, command.strip(), meta, separations, demo))
    summary = {w: {s: {k: {**vars(v), "values": list(v.values)} for k, v in by.items()} for s, by in ws.items()}
               for w, ws in stats.items()}
    # beside its report (one per report: the exact and learned priors' runs share an output folder)
    with open(report_path + "_summary.json", "w") as f:
        controls = {m: dict(sees=sep.sees, requirements=[dict(text=r.text, passed=r.passed, values=r.values)
                                                          for r in sep.requirements])
                    for m, sep in separations.items()}
        json.dump({"stats": summary, "positive_controls": controls, "claims": [{"title": c["title"], "verdict": c["verdict"],
                                                 "checks": [dict(text=ch.text, role=ch.role, verdict=ch.verdict,
                                                                 detail=ch.detail, margin=ch.margin, n=ch.result.n,
                                                                 mean=ch.result.mean, low=ch.result.low,
                                                                 high=ch.result.high, seeds=list(ch.result.seeds))
                                                            for ch in c["checks"]]}
                                                for c in claims], "meta": meta}, f, indent=2)
    for c in claims:
        print(f"{c['paper']}: {c['title']}: {c['verdict']}")
    print(f"wrote {args.report}.md, {args.report}_<world>.png and {args.report}_summary.json ({meta['wall_minutes']:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
