"""scripts/claims_benchmark.py: the verdict rule and the aggregation over seeds on hand-made numbers, and a
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


def test_aggregate_is_mean_and_sample_std_of_the_finite_values(cb):
    s = cb.aggregate([1.0, 2.0, 3.0, float("nan"), None])
    assert (s.mean, s.std, s.n, s.values) == (2.0, 1.0, 3, (1.0, 2.0, 3.0))
    assert str(s) == "2.000 ± 1.000"
    one = cb.aggregate([0.25])
    assert one.n == 1 and one.mean == 0.25 and math.isnan(one.std) and str(one) == "0.250"
    none = cb.aggregate([float("nan")])
    assert none.n == 0 and str(none) == "n/a"


def check(cb, lhs, op, rhs):
    return cb.compare(cb.Check("t", "a", lhs, op, "b", rhs))


def test_a_difference_holds_only_beyond_the_combined_spread(cb):
    S = cb.Stat
    # spread sqrt(0.3^2 + 0.4^2) = 0.5
    assert check(cb, S(1.0, 0.3, 3), "<", S(1.6, 0.4, 3)).verdict == cb.HOLDS
    assert check(cb, S(1.0, 0.3, 3), "<", S(1.4, 0.4, 3)).verdict == cb.WITHIN
    assert check(cb, S(1.6, 0.3, 3), "<", S(1.0, 0.4, 3)).verdict == cb.OPPOSITE
    assert check(cb, S(1.6, 0.3, 3), ">", S(1.0, 0.4, 3)).verdict == cb.HOLDS
    c = check(cb, S(0.7, 0.1, 3), ">", cb.constant(0.5))
    assert c.verdict == cb.HOLDS and "+0.200" in c.detail and "spread 0.100" in c.detail
    assert check(cb, S(0.55, 0.1, 3), ">", cb.constant(0.5)).verdict == cb.WITHIN
    # one seed: no spread; nothing measured
    assert check(cb, S(1.0, float("nan"), 1), "<", S(9.0, 0.1, 3)).verdict == cb.UNDECIDED
    assert check(cb, S(float("nan"), float("nan"), 0), "<", cb.constant(1.0)).verdict == cb.UNDECIDED


def test_a_claim_holds_only_if_every_check_holds(cb):
    def c(v):
        return cb.Check("t", "a", None, "<", "b", None, verdict=v)

    assert cb.claim_verdict([c(cb.HOLDS), c(cb.HOLDS)]) == cb.HOLDS
    assert cb.claim_verdict([c(cb.HOLDS), c(cb.WITHIN)]) == "does not hold here"
    assert cb.claim_verdict([c(cb.UNDECIDED), c(cb.OPPOSITE)]) == "does not hold here"
    assert cb.claim_verdict([c(cb.HOLDS), c(cb.UNDECIDED)]) == cb.UNDECIDED


def test_claims_from_hand_made_tables(cb):
    S = cb.Stat
    stats = {
        "multimodal": {
            "sds": {"sharpness": S(0.2, 0.05, 3), "consistency": S(0.5, 0.1, 3)},
            "ism": {"sharpness": S(0.6, 0.05, 3), "consistency": S(0.9, 0.1, 3)},
        },
        "biased": {
            "sds": {"janus": S(0.8, 0.05, 3)}, "vsd": {"janus": S(0.7, 0.05, 3)},
            "esd-0": {"janus": S(0.7, 0.05, 3)}, "esd-0.5": {"janus": S(0.4, 0.05, 3)},
            "esd-1": {"janus": S(0.69, 0.05, 3)},  # within the spread of lambda 0
        },
    }
    lucid, esd = cb.build_claims(stats)
    assert lucid["verdict"] == cb.HOLDS and all(c.verdict == cb.HOLDS for c in lucid["checks"])
    assert esd["verdict"] == "does not hold here"
    verdicts = {c.text: c.verdict for c in esd["checks"]}
    assert verdicts["the entropy term lowers Janus: ESD lambda 1 below ESD lambda 0"] == cb.WITHIN
    assert verdicts["ESD (official lambda 0.5) below VSD"] == cb.HOLDS
    assert "(the highest: SDS)" in esd["checks"][0].text
    assert esd["notes"] == []
    # VSD that does not collapse, and ESD at lambda 0 equal to VSD run for run: said, from the numbers
    same = S(0.1, 0.05, 3, values=(0.05, 0.1, 0.15))
    stats["biased"].update({"vsd": {"janus": same}, "esd-0": {"janus": same}})
    notes = " ".join(cb.build_claims(stats)[1]["notes"])
    assert "VSD does not collapse on this world (Janus 0.100 ± 0.050" in notes
    assert "SDS does collapse (Janus 0.800 ± 0.050)" in notes and "reproduces VSD run for run" in notes
    # a world not run: its claim is undecided, not failed
    only_mm = cb.build_claims({"multimodal": stats["multimodal"]})
    assert only_mm[0]["verdict"] == cb.HOLDS and only_mm[1]["verdict"] == cb.UNDECIDED


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
    assert "Verdict: undecided" in text and "--steps 2" in text
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
