"""scripts/claims_benchmark.py: the verdict rule (paired seeds, ``toy_world/verdicts.py``) and the aggregation
over seeds on hand-made numbers, and a
tiny end-to-end run (16 px worlds, 2 steps, one seed, SDS and ISM) that writes the report, the grids,
and skips its finished runs when started again."""
import json
import math
import os
import re
import subprocess
import sys

import imageio.v2 as imageio
import pytest
from repo_scripts import load_repo_script

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "scripts", "claims_benchmark.py")


@pytest.fixture(scope="module")
def cb():
    return load_repo_script("scripts/claims_benchmark.py")


def test_aggregate_is_mean_and_sample_std_of_the_finite_values_with_their_seeds(cb):
    s = cb.aggregate([1.0, 2.0, 3.0, float("nan"), None], seeds=[5, 6, 7, 8, 9])
    assert (s.mean, s.std, s.n, s.values, s.seeds) == (2.0, 1.0, 3, (1.0, 2.0, 3.0), (5, 6, 7))
    assert str(s) == "2.000 ± 1.000" and s.by_seed() == {5: 1.0, 6: 2.0, 7: 3.0}
    one = cb.aggregate([0.25])
    assert one.n == 1 and one.mean == 0.25 and math.isnan(one.std) and str(one) == "0.250" and one.seeds == (0,)
    none = cb.aggregate([float("nan")])
    assert none.n == 0 and str(none) == "n/a"


def check(cb, lhs, op, rhs, margin=0.1):
    return cb.compare(cb.Check("t", "a", lhs, op, "b", rhs, margin))


def stat(cb, values, seeds=None):
    return cb.aggregate(values, seeds)


def test_compare_pairs_the_seeds_and_decides_on_the_interval_of_the_paired_difference(cb):
    base = [0.50, 0.62, 0.41, 0.70, 0.55]
    # the seed-to-seed spread (0.11) dwarfs the difference (0.05), but every seed's pair moves the same way:
    # the old rule (difference > hypot of the stds) said "within the spread"; the paired interval shows it
    up = check(cb, stat(cb, [b + 0.05 + 0.002 * i for i, b in enumerate(base)]), ">", stat(cb, base))
    assert up.verdict == cb.SHOWN and up.result.n == 5 and up.result.low > 0
    assert "interval excludes 0" in up.detail and "n = 5" in up.detail and "margin 0.1" in up.detail
    # the same numbers claimed the other way round are refuted (the interval lies below 0)
    down = check(cb, stat(cb, [b + 0.05 + 0.002 * i for i, b in enumerate(base)]), "<", stat(cb, base))
    assert down.verdict == cb.REFUTED and "the opposite" in down.detail
    # no difference at all: equivalent within the margin, refuted
    same = check(cb, stat(cb, base), ">", stat(cb, [b + 1e-4 * (-1) ** i for i, b in enumerate(base)]))
    assert same.verdict == cb.REFUTED and "equivalent" in same.detail
    # noisy differences of both signs: the interval holds 0 and the margin
    noisy = check(cb, stat(cb, [b + d for b, d in zip(base, [0.3, -0.2, 0.25, -0.1, 0.2])]), ">", stat(cb, base))
    assert noisy.verdict == cb.INCONCLUSIVE
    # pairs are made by seed, not by position: seeds 1-5 against seeds 0-4 pair only 4, too few
    shifted = check(cb, stat(cb, base, seeds=[1, 2, 3, 4, 5]), ">", stat(cb, base, seeds=[0, 1, 2, 3, 4]))
    assert shifted.verdict == cb.INCONCLUSIVE and shifted.result.n == 4 and "too few seeds" in shifted.detail
    assert shifted.result.unpaired == (5, 0)
    # a constant: one-sample
    assert check(cb, stat(cb, [0.7, 0.72, 0.69, 0.71, 0.7]), ">", cb.constant(0.5)).verdict == cb.SHOWN
    # three seeds never decide, nor does an unmeasured side
    assert check(cb, stat(cb, [0.9, 0.91, 0.92]), ">", cb.constant(0.5)).verdict == cb.INCONCLUSIVE
    nothing = check(cb, cb.Stat(float("nan"), float("nan"), 0), "<", cb.constant(1.0))
    assert nothing.verdict == cb.INCONCLUSIVE and "not measured" in nothing.detail


def test_a_claim_needs_its_precondition_shown_and_is_refuted_by_one_refuted_check(cb):
    def c(v, role="claim"):
        return cb.Check("t", "a", None, "<", "b", None, role=role, verdict=v)

    pre = c(cb.SHOWN, "precondition")
    assert cb.claim_verdict([pre, c(cb.SHOWN), c(cb.SHOWN)]) == cb.SHOWN
    assert cb.claim_verdict([pre, c(cb.SHOWN), c(cb.REFUTED)]) == cb.REFUTED
    assert cb.claim_verdict([pre, c(cb.INCONCLUSIVE), c(cb.SHOWN)]) == cb.INCONCLUSIVE
    assert cb.claim_verdict([c(cb.REFUTED, "precondition"), c(cb.SHOWN)]) == cb.INCONCLUSIVE


def test_claims_from_hand_made_tables(cb):
    seeds = [0, 1, 2, 3, 4]
    wobble = [0.01, -0.02, 0.0, 0.02, -0.01]

    def s(mean, shift=None):
        return cb.aggregate([mean + w for w in (shift or wobble)], seeds)

    stats = {
        "multimodal": {
            "sds": {"sharpness": s(0.2), "consistency": s(0.5)},
            "ism": {"sharpness": s(0.6), "consistency": s(0.9)},
        },
        "biased": {
            "sds": {"janus": s(0.8)}, "vsd": {"janus": s(0.7, [-0.01, 0.02, 0.0, -0.02, 0.01])},
            "esd-0": {"janus": s(0.7)}, "esd-0.5": {"janus": s(0.4)},
            "esd-1": {"janus": s(0.7, [0.012, -0.018, 0.001, 0.019, -0.011])},  # lambda 0's janus, seed for seed
        },
    }
    lucid, esd = cb.build_claims(stats)
    assert lucid["verdict"] == cb.SHOWN and all(c.verdict == cb.SHOWN for c in lucid["checks"])
    assert lucid["checks"][0].role == "precondition" and lucid["checks"][0].margin == cb.MARGINS["sharpness"]
    assert esd["verdict"] == cb.REFUTED
    verdicts = {c.text: c.verdict for c in esd["checks"]}
    assert verdicts["the entropy term lowers Janus: ESD lambda 1 below ESD lambda 0"] == cb.REFUTED
    assert verdicts["ESD (official lambda 0.5) below VSD"] == cb.SHOWN
    # no check is chosen after the run: the precondition is SDS's collapse, whatever method is highest
    assert esd["checks"][0].text == "the world exposes Janus: SDS collapses (Janus above 0.5)"
    assert esd["notes"] == []
    # VSD that does not collapse, and ESD at lambda 0 equal to VSD run for run: said, from the numbers
    same = s(0.1)
    stats["biased"].update({"vsd": {"janus": same}, "esd-0": {"janus": same}})
    notes = " ".join(cb.build_claims(stats)[1]["notes"])
    assert "VSD does not collapse on this world (Janus 0.100 ± 0.016" in notes
    assert "SDS does collapse (Janus 0.800 ± 0.016)" in notes and "reproduces VSD run for run" in notes
    # a world not run: its claim is inconclusive, not failed
    only_mm = cb.build_claims({"multimodal": stats["multimodal"]})
    assert only_mm[0]["verdict"] == cb.SHOWN and only_mm[1]["verdict"] == cb.INCONCLUSIVE


def test_tiny_benchmark_writes_report_and_grids_and_resumes(tmp_path):
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1",
               LUCID_TOY_WORLD_CACHE=str(tmp_path / "cache"))
    report = tmp_path / "docs" / "claims"
    cmd = [sys.executable, SCRIPT, "--methods", "sds", "ism", "--seeds", "0", "--steps", "2",
           "--image-size", "16", "--n-azimuths", "4", "--n-eval-views", "4",
           "--load", str(tmp_path / "load"), "--out", str(tmp_path / "out"), "--report", str(report),
           "data.batch_size=1", "data.n_test_views=1", "system.geometry.init_num_pts=200"]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    text = (report.parent / "claims.md").read_text()
    for heading in ("## The multimodal world", "## The biased world", "LucidDreamer", "ESD"):
        assert heading in text
    # every row of the tables has numbers; one seed: the verdicts cannot be decided
    for world, score in (("multimodal", "consistency"), ("biased", "janus")):
        section = text.split(f"## The {world} world")[1].split("## ")[0]
        rows = [line for line in section.splitlines() if line.startswith("| SDS") or line.startswith("| ISM")]
        assert len(rows) == 2 and all(re.search(r"\| \d+\.\d{3} \|", r) for r in rows), section
        assert score in section
    assert "Verdict: inconclusive" in text and "too few seeds" in text and "--steps 2" in text
    mm = imageio.imread(str(report) + "_multimodal.png")
    bi = imageio.imread(str(report) + "_biased.png")
    assert mm.shape[0] == 5 * 16 + 4 * 2 and mm.shape[1] == 4 * 16  # three variants' truth, SDS, ISM
    assert bi.shape[0] == 3 * 16 + 2 * 2
    summary = json.loads((tmp_path / "out" / "claims_summary.json").read_text())
    assert summary["stats"]["multimodal"]["sds"]["psnr"]["n"] == 1

    scores = tmp_path / "out" / "lucid-sds-toy" / "multimodal-sds-s0" / "save" / "toy_world_scores.json"
    stamp = scores.stat().st_mtime_ns
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("(reused)") == 4 and "building" not in again.stdout
    assert scores.stat().st_mtime_ns == stamp
    redone = (report.parent / "claims.md").read_text()
    assert "4 runs" in redone and "4 runs made" in redone and "0 runs made" in redone  # both invocations listed
    # finished runs of another budget are not mixed in
    other = subprocess.run([*cmd[:cmd.index("--steps") + 1], "3", *cmd[cmd.index("--steps") + 2:]],
                           capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert other.returncode != 0 and "made with 2 steps, not 3" in other.stderr
