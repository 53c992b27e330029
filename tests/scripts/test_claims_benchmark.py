"""scripts/claims_benchmark.py: the verdict rule (paired seeds, ``toy_world/verdicts.py``), the claims on the
structure scores with a metric that does not separate its positive controls made inconclusive, and the
aggregation over seeds on hand-made numbers, and a tiny end-to-end run (16 px worlds, 2 steps, one seed: the
oracle fit first, then SDS; ISM runs through the same code with another config name, and was dropped here for the
oracle's two runs to keep the test's time) that writes the report, the grids, and skips its finished runs when
started again."""
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

    sharp, cons, jf = "structure_sharpness", "structure_consistency", "structure_janus_fraction_of_two_faced"
    stats = {
        "multimodal": {
            "oracle": {sharp: s(0.9), cons: s(1.0)},
            "sds": {sharp: s(0.2), cons: s(0.5)},
            "sds-100": {sharp: s(0.3, [0.02, 0.0, -0.01, 0.01, -0.02])},
            "ism": {sharp: s(0.6), cons: s(0.9)},
        },
        "biased": {
            "oracle": {jf: s(0.0)},
            "sds": {jf: s(0.8)}, "vsd": {jf: s(0.7, [-0.01, 0.02, 0.0, -0.02, 0.01])}, "esd-0.5": {jf: s(0.4)},
        },
    }
    lucid, esd = cb.build_claims(stats)
    assert lucid["verdict"] == cb.SHOWN and all(c.verdict == cb.SHOWN for c in lucid["checks"])
    # ISM against SDS at both guidance scales (the toy config's and DreamFusion's 100), paired by seed
    assert lucid["checks"][2].rhs is stats["multimodal"]["sds-100"][sharp] and "scale 100" in lucid["checks"][2].text
    # the precondition compares SDS with the oracle fit of the same seeds
    assert lucid["checks"][0].role == "precondition" and lucid["checks"][0].margin == cb.MARGINS[sharp]
    assert lucid["checks"][0].rhs is stats["multimodal"]["oracle"][sharp]
    assert esd["verdict"] == cb.SHOWN and [c.verdict for c in esd["checks"]] == [cb.SHOWN] * 3
    # ESD at lambda 0 is VSD (the same update): the entropy check reads VSD's runs, paired by seed, and no check
    # repeats another
    entropy = esd["checks"][2]
    assert entropy.lhs is stats["biased"]["esd-0.5"][jf] and entropy.rhs is stats["biased"]["vsd"][jf]
    assert "lambda 0 (= VSD" in entropy.text and len({c.text for c in esd["checks"]}) == 3
    # ESD equal to VSD seed for seed: the entropy term's effect is refuted (equivalent within the margin)
    flat = dict(stats["biased"], **{"esd-0.5": {jf: s(0.7, [-0.012, 0.019, 0.001, -0.018, 0.011])}})
    refuted = cb.build_claims({**stats, "biased": flat})[1]
    assert refuted["checks"][2].verdict == cb.REFUTED and refuted["verdict"] == cb.REFUTED
    # no check is chosen after the run: the precondition is SDS's collapse past a threshold fixed from the controls
    assert esd["checks"][0].text.startswith("the world exposes Janus: SDS collapses")
    assert esd["checks"][0].rhs.exact and esd["checks"][0].rhs.mean == cb.JANUS_COLLAPSE
    assert esd["notes"] == []
    # VSD that does not collapse, and ESD at lambda 0 equal to VSD run for run: said, from the numbers
    same = s(0.1)
    stats["biased"].update({"vsd": {jf: same}, "esd-0": {jf: same}})
    notes = " ".join(cb.build_claims(stats)[1]["notes"])
    assert "VSD does not collapse on this world (Janus fraction 0.100 ± 0.016" in notes
    assert "SDS does collapse (Janus fraction 0.800 ± 0.016)" in notes and "reproduces VSD run for run" in notes
    # VSD collapsing where SDS does not: the verdict stays as the rule fixed it, the note says what the checks read
    vsd_only = dict(stats["biased"], sds={jf: s(0.05)}, vsd={jf: s(0.7)}, **{"esd-0.5": {jf: s(0.3)}})
    esd_vsd_only = cb.build_claims({**stats, "biased": vsd_only})[1]
    assert esd_vsd_only["verdict"] == cb.INCONCLUSIVE and esd_vsd_only["checks"][1].verdict == cb.SHOWN
    note = " ".join(esd_vsd_only["notes"])
    assert "VSD collapses (Janus fraction 0.700 ± 0.016) where SDS" in note and "the entropy check on its own reads shown" in note
    # a world not run: its claim is inconclusive, not failed
    only_mm = cb.build_claims({"multimodal": stats["multimodal"]})
    assert only_mm[0]["verdict"] == cb.SHOWN and only_mm[1]["verdict"] == cb.INCONCLUSIVE
    # a metric that does not separate its positive controls decides nothing, whatever the numbers
    blind = cb.build_claims(stats, {"sharpness": False, "consistency": True, "janus": False})
    assert blind[0]["checks"][0].verdict == cb.INCONCLUSIVE and "positive controls" in blind[0]["checks"][0].detail
    assert blind[0]["checks"][3].verdict == cb.SHOWN and blind[0]["verdict"] == cb.INCONCLUSIVE
    assert all(c.verdict == cb.INCONCLUSIVE for c in blind[1]["checks"])


def test_the_default_settings_are_exactly_those_the_checks_read(cb):
    # every world's default run (its oracle and CHECKED_SETTINGS) measures both sides of every check ...
    seeds = [0, 1, 2, 3, 4]
    full = {w: {s: {k: cb.aggregate([0.5 + 0.01 * i for i in seeds], seeds) for k in cb.METRIC_OF}
                for s in ["oracle", *cb.CHECKED_SETTINGS[w]]} for w in cb.WORLDS}
    for claim in cb.build_claims(full):
        assert all(c.lhs.n == 5 and (c.rhs.exact or c.rhs.n == 5) for c in claim["checks"]), claim["title"]
    # ... and drops none of them: without any one setting some check goes unmeasured
    for w, settings in cb.CHECKED_SETTINGS.items():
        for s in settings:
            less = {**full, w: {k: v for k, v in full[w].items() if k != s}}
            checks = [c for claim in cb.build_claims(less) for c in claim["checks"]]
            assert any("not measured" in c.detail for c in checks), (w, s)


def test_margins_and_thresholds_are_stated_for_every_checked_score(cb):
    assert set(cb.METRIC_OF) == set(cb.MARGINS) and all(m > 0 for m in cb.MARGINS.values())
    assert 0 < cb.JANUS_COLLAPSE < 1
    for world in cb.WORLDS.values():
        assert all(k.startswith("structure_") for k in world.fractions)
        assert set(world.fractions) <= set(cb.LABELS) and set(world.scores) <= set(cb.LABELS)


def test_tiny_benchmark_writes_report_and_grids_and_resumes(tmp_path):
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1",
               LUCID_TOY_WORLD_CACHE=str(tmp_path / "cache"))
    report = tmp_path / "docs" / "claims"
    cmd = [sys.executable, SCRIPT, "--methods", "sds", "--seeds", "0", "--steps", "2",
           "--image-size", "16", "--n-azimuths", "4", "--elevations", "0", "30", "--n-eval-views", "4",
           "--estimator-steps", "0",  # no VSD/ESD here: no pretraining
           "--load", str(tmp_path / "load"), "--out", str(tmp_path / "out"), "--report", str(report),
           "data.batch_size=1", "data.n_test_views=1", "system.geometry.init_num_pts=200"]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    text = (report.parent / "claims.md").read_text()
    for heading in ("## Positive controls", "## The multimodal world", "## The biased world", "LucidDreamer", "ESD"):
        assert heading in text
    # the positive controls come first: the oracle fit's rows, then the claims
    assert text.index("## Positive controls") < text.index("## LucidDreamer") < text.index("## The multimodal world")
    controls = text.split("## Positive controls")[1].split("## LucidDreamer")[0]
    assert controls.count("| oracle fit |") == 2 and "(fits the spotted variant)" in controls
    # every row of the tables has numbers, the oracle's first; one seed: the verdicts cannot be decided
    for world, score in (("multimodal", "consistency"), ("biased", "Janus")):
        section = text.split(f"## The {world} world")[1].split("## ")[0]
        rows = [line for line in section.splitlines() if line.startswith(("| oracle fit", "| SDS"))]
        assert len(rows) == 2 and rows[0].startswith("| oracle fit"), section
        assert all(re.search(r"\| \d+\.\d{3} \|", r) for r in rows), section
        assert score in section and "/ oracle" in section
    assert "Verdict: inconclusive" in text and "--steps 2" in text
    # at 16 px the structure metrics cannot tell their controls apart, and say so: their checks are inconclusive
    assert "does NOT separate its controls" in text and "the metric does not separate its positive controls" in text
    mm = imageio.imread(str(report) + "_multimodal.png")
    bi = imageio.imread(str(report) + "_biased.png")
    assert mm.shape[0] == 5 * 16 + 4 * 2 and mm.shape[1] == 4 * 16  # three variants' truth, oracle, SDS
    assert bi.shape[0] == 3 * 16 + 2 * 2
    summary = json.loads((report.parent / "claims_summary.json").read_text())  # beside its report
    assert summary["stats"]["multimodal"]["sds"]["psnr"]["n"] == 1
    assert summary["stats"]["multimodal"]["oracle"]["structure_identity"]["n"] == 1
    assert set(summary["positive_controls"]) == {"identity", "sharpness", "consistency", "janus", "view_diversity"}

    # the oracle is a run like the others (same launcher, its own config), and the methods' scores files carry
    # their fractions of it
    oracle_trial = tmp_path / "out" / "lucid-oracle-toy" / "multimodal-oracle-s0"
    parsed = (oracle_trial / "configs" / "parsed.yaml").read_text()
    assert "guidance_type: lucid-toy-world-oracle" in parsed and "variant: spotted" in parsed
    scores = tmp_path / "out" / "lucid-sds-toy" / "multimodal-sds-s0" / "save" / "toy_world_scores.json"
    written = json.loads(scores.read_text())
    assert {"psnr", "janus", "structure_identity", "structure_janus", "structure_view_diversity",
            "structure_identity_fraction_of_oracle", "structure_janus_fraction_of_two_faced"} <= set(written)
    stamp = scores.stat().st_mtime_ns
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("(reused)") == 4 and "building" not in again.stdout
    assert scores.stat().st_mtime_ns == stamp
    redone = (report.parent / "claims.md").read_text()
    assert "4 runs" in redone and "4 runs made" in redone and "0 runs made" in redone  # both invocations listed
    # nor finished runs made on another world (here: a record saying so, as a rebuilt world would)
    record_file = tmp_path / "out" / "records" / "multimodal-sds-s0.json"
    record = json.loads(record_file.read_text())
    assert record["made_on"]["world"]["objects"] == ["ball"] and record["made_on"]["estimator_steps"] == 0
    record_file.write_text(json.dumps({**record, "made_on": {**record["made_on"], "estimator_steps": 120}}))
    stale = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert stale.returncode != 0 and "was made on another world or prior" in stale.stderr
    record_file.write_text(json.dumps(record))
    # finished runs of another budget are not mixed in
    other = subprocess.run([*cmd[:cmd.index("--steps") + 1], "3", *cmd[cmd.index("--steps") + 2:]],
                           capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert other.returncode != 0 and "made with 2 steps, not 3" in other.stderr


def curve(values, every=50):
    return [{"step": every * (i + 1), "psnr": v, "structure_sharpness": v / 100} for i, v in enumerate(values)]


def test_flatness_reads_the_second_half_of_the_budget(cb):
    rising = cb.flatness(curve([10, 14, 18, 20, 22, 24, 25, 26]), "psnr")  # +6 dB over steps 200-400
    assert rising["flat"] is False and rising["spread"] == pytest.approx(6.0) and rising["steps"][-1] == 400
    flat = cb.flatness(curve([10, 18, 20, 21, 21.2, 21.3, 21.3, 21.4]), "psnr")  # early rise, then < 0.5 dB
    assert flat["flat"] is True and flat["tolerance"] == cb.FLAT_TOLERANCE["psnr"]
    # a check's score is flat within its check margin; nan records are left out; one record decides nothing
    sharp = cb.flatness(curve([10, 14, 18, 20, 21, 22, 23, 24]), "structure_sharpness")
    assert sharp["tolerance"] == cb.MARGINS["structure_sharpness"] and sharp["flat"] is True  # 0.04 <= 0.05
    gappy = curve([10, float("nan"), 20, 20.1])
    assert cb.flatness(gappy, "psnr")["steps"] == [50, 150, 200]
    assert cb.flatness(curve([10]), "psnr")["flat"] is None


def test_convergence_report_and_plot_from_curves(cb, tmp_path):
    import argparse

    args = argparse.Namespace(steps=400, every=50, seeds=[0], prior="exact", n_azimuths=72,
                              elevations=cb.DENSE_ELEVATIONS, no_snap=False)
    curves = {"multimodal": {"oracle": curve([18, 22, 24, 25, 25.1, 25.2, 25.2, 25.3]),
                             "sds": curve([17, 18, 19, 20, 21, 22, 23, 24])}}
    meta = {"n_runs": 2, "run_minutes": 1.0}
    text = cb.convergence_report(str(tmp_path / "conv"), curves, args, "python scripts/claims_benchmark.py "
                                 "--convergence", meta)
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ")}
    assert "18.000 / 20.000 / 24.000, **still moving** (4.000)" in rows["| SDS"]  # steps 100 / 200 / 400
    assert "flat (0.300)" in rows["| oracle fit"]
    assert "Still moving at 400 steps: SDS." in text and "72 azimuths x 8 elevations" in text
    cb.plot_convergence(str(tmp_path / "conv.png"), curves)
    img = imageio.imread(str(tmp_path / "conv.png"))
    assert img.shape[0] > 200 and img.shape[1] > 800 and img[..., :3].std() > 10  # drawn, not blank


@pytest.mark.slow
def test_tiny_convergence_run_scores_every_n_steps(tmp_path):
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1", LUCID_TOY_WORLD_CACHE=str(tmp_path / "cache"))
    report = tmp_path / "docs" / "conv"
    cmd = [sys.executable, SCRIPT, "--convergence", "--worlds", "multimodal", "--methods", "sds", "--steps", "4",
           "--every", "2", "--image-size", "16", "--n-azimuths", "4", "--n-eval-views", "4", "--estimator-steps", "0",
           "--load", str(tmp_path / "load"), "--out", str(tmp_path / "out"), "--report", str(report),
           "data.batch_size=1", "data.n_test_views=1", "system.geometry.init_num_pts=200"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "convergence_summary.json").read_text())
    assert summary["multimodal"]["sds"]["psnr"]["steps"] == [2, 4]
    assert summary["multimodal"]["oracle"]["psnr"]["steps"] == [2, 4]
    parsed = (tmp_path / "out" / "lucid-sds-toy" / "multimodal-sds-s0" / "configs" / "parsed.yaml").read_text()
    assert "evaluate_every_n_steps: 2" in parsed and "azimuth_step_deg: 90" in parsed  # snapped to the 4-azimuth grid
    assert "| SDS |" in (tmp_path / "docs" / "conv.md").read_text() and (tmp_path / "docs" / "conv.png").exists()


def test_demo_scores_are_read_from_the_demo_run_and_reported_as_fractions_of_its_oracle(cb, tmp_path):
    trial = tmp_path / "lucid-ism-toy" / "a_penguin@20261207-101629"
    (trial / "save").mkdir(parents=True)
    (trial / "configs").mkdir()
    (trial / "configs" / "parsed.yaml").write_text(
        "trainer: {max_steps: 400}\nsystem: {guidance_type: lucid-ism-guidance, prompt_processor: {prompt: a penguin},"
        " evaluator: {oracle_scores: /x/toy_world_scores.json}}\n")
    scores = {"psnr": 20.86, "iou": 0.855, "structure_identity": 0.165, "structure_sharpness": 0.032,
              "structure_identity_fraction_of_oracle": 0.1996, "structure_sharpness_fraction_of_oracle": 0.0466,
              "structure_janus_fraction_of_two_faced": 0.147}
    (trial / "save" / "toy_world_scores.json").write_text(json.dumps(scores))
    demo = cb.read_demo(str(trial))
    assert demo["steps"] == 400 and demo["prompt"] == "a penguin" and demo["guidance"] == "lucid-ism-guidance"
    text = "\n".join(cb.demo_section(demo))
    assert "## The main demo" in text and "| 20.860 | 0.855 | 0.165 | 0.032 | 0.200 | 0.047 | 0.147 |" in text
    assert "identity / oracle" in text and "400 steps" in text
    # a run without the oracle's fractions (demo.sh before the oracle fit, or another run) is refused, not shown
    (trial / "save" / "toy_world_scores.json").write_text(json.dumps({"psnr": 20.0}))
    assert cb.read_demo(str(trial)) is None and cb.read_demo(str(tmp_path / "nowhere")) is None
    assert cb.demo_section(None) == []
    bad = subprocess.run([sys.executable, SCRIPT, "--demo", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--demo" in bad.stderr and "scripts/demo.sh" in bad.stderr
    assert not (tmp_path / "o").exists()


def test_what_the_verdicts_say_about_stable_diffusion_follows_the_outcomes(cb):
    class Args:
        prior, image_size, steps = "exact", 64, 800

    def claim(verdict, pre=cb.SHOWN):
        return {"verdict": verdict, "checks": [cb.Check("t", "a", None, ">", "b", None, verdict=pre)]}

    text = "\n".join(cb.stable_diffusion_section([claim(cb.SHOWN), claim(cb.INCONCLUSIVE, cb.REFUTED)], Args))
    assert "exact prior" in text and "64 px and 800 steps" in text
    assert "LucidDreamer's claim is shown on the toy world" in text
    assert "ESD's claim is not tested: its precondition" in text and "refuted on the biased world" in text
    text = "\n".join(cb.stable_diffusion_section([claim(cb.REFUTED), claim(cb.SHOWN)], Args))
    assert "LucidDreamer's claim is refuted" in text and "ESD's claim is shown on the biased world" in text
    Args.prior = "learned"
    text = "\n".join(cb.stable_diffusion_section([claim(cb.INCONCLUSIVE), claim(cb.INCONCLUSIVE)], Args))
    assert "learned prior" in text and text.count("no statement about Stable Diffusion follows") == 2
    # the reason a precondition failed is said for the prior the run used
    text = "\n".join(cb.stable_diffusion_section([claim(cb.SHOWN), claim(cb.INCONCLUSIVE, cb.REFUTED)], Args))
    assert "neither toy prior reproduces" in text and "the exact prior knows" not in text


def test_a_report_lists_the_invocations_of_its_own_prior(cb, tmp_path):
    def invocation(command, runs, prior=None):
        entry = {"command": command, "runs_made": runs}
        return {**entry, "prior": prior} if prior else entry

    (tmp_path / "invocations.json").write_text(json.dumps([
        invocation("python scripts/claims_benchmark.py", 32),
        invocation("python scripts/claims_benchmark.py --prior learned --worlds biased", 5),  # logged before "prior"
        invocation("python scripts/claims_benchmark.py --prior learned", 3, "learned"),
        invocation("python scripts/claims_benchmark.py --demo x", 0, "exact"),
    ]))
    exact = cb.log_invocation(str(tmp_path), invocation("python scripts/claims_benchmark.py", 0, "exact"))
    assert [i["runs_made"] for i in exact] == [32, 0]
    learned = cb.log_invocation(str(tmp_path), invocation("python scripts/claims_benchmark.py --prior learned", 0,
                                                          "learned"))
    assert [i["runs_made"] for i in learned] == [5, 3, 0]
    assert len(json.loads((tmp_path / "invocations.json").read_text())) == 6  # every invocation is kept in the log


def test_a_report_links_the_other_priors_report_and_the_stability_study_only_where_they_exist(cb, tmp_path):
    report = str(tmp_path / "claims.md")
    assert cb.related_reports(report, "exact") == []
    (tmp_path / "claims_learned.md").write_text("x")
    (line,) = [x for x in cb.related_reports(report, "exact") if x]
    assert "[`claims_learned.md`](claims_learned.md)" in line and "--prior learned" in line
    assert "guidance_stability" not in line
    (tmp_path / "guidance_stability.md").write_text("x")
    (line,) = [x for x in cb.related_reports(report, "exact") if x]
    assert "[`guidance_stability.md`](guidance_stability.md)" in line
    # the learned prior's report points back at the exact prior's, only once it exists
    learned_report = str(tmp_path / "claims_learned.md")
    assert "claims.md`](claims.md)" not in "".join(cb.related_reports(learned_report, "learned"))
    (tmp_path / "claims.md").write_text("x")
    assert "[`claims.md`](claims.md)" in "".join(cb.related_reports(learned_report, "learned"))


def test_the_stable_diffusion_section_says_where_ism_does_not_return_to_the_truth(cb):
    class Args:
        prior, image_size, steps = "learned", 64, 800

    def claim(verdict):
        return {"verdict": verdict, "checks": [cb.Check("t", "a", None, ">", "b", None, verdict=cb.SHOWN)]}

    def world(name, prior, value, gap=0.01):
        return {"world": name, "prior": prior, "methods": {"ism": {
            "restore": {"colour": {"update": value}}, "half_gap": {"colour": {"update": gap}}, "floor": 0.018}}}

    stability = {"results": [world("mm", "exact", 0.56), world("mm-learned", "learned", -0.52),
                             world("bi-learned", "learned", -0.04)]}  # inside 3 floors: not said
    text = "\n".join(cb.stable_diffusion_section([claim(cb.REFUTED), claim(cb.INCONCLUSIVE)], Args, stability))
    assert "not a point ISM returns to" in text and "mm-learned -0.52" in text and "bi-learned" not in text
    assert "LucidDreamer's claim is refuted" in text and "LucidDreamer's claim is inconclusive" not in text
    assert "a learned prior's errors" not in text and "prompts that say far more" in text
    # VSD's collapse, shown where SDS's is not, is said with what the entropy check reads
    esd = {"verdict": cb.INCONCLUSIVE, "checks": [
        cb.Check("t", "a", None, ">", "b", None, verdict=cb.REFUTED),
        cb.Check("t", "a", cb.aggregate([0.4, 0.5, 0.45, 0.42, 0.48], [0, 1, 2, 3, 4]), ">", "b", None, verdict=cb.SHOWN),
        cb.Check("t", "a", None, "<", "b", None, verdict=cb.REFUTED)]}
    text = "\n".join(cb.stable_diffusion_section([claim(cb.REFUTED), esd], Args, stability))
    assert "VSD does collapse here (Janus fraction 0.450" in text and "entropy check on its own reads refuted" in text
    Args.prior = "exact"  # the exact prior's ISM restores: nothing said, and the refuted line names what it lacks
    text = "\n".join(cb.stable_diffusion_section([claim(cb.REFUTED), claim(cb.INCONCLUSIVE)], Args, stability))
    assert "not a point ISM returns to" not in text and "a learned prior's errors" in text
    assert "LucidDreamer's claim is inconclusive" not in text
    text = "\n".join(cb.stable_diffusion_section([claim(cb.INCONCLUSIVE), claim(cb.INCONCLUSIVE)], Args, stability))
    assert text.count("LucidDreamer's claim is") == 1 and "LucidDreamer's claim is inconclusive" in text
    assert cb.ism_amplifies_colour(None, "learned") == []


def test_a_report_links_only_the_convergence_runs_of_its_own_prior(cb, tmp_path):
    for name in ("claims_convergence.md", "claims_convergence_1600.md", "claims_convergence_learned.md", "other.md"):
        (tmp_path / name).write_text("x")
    report = str(tmp_path / "claims.md")
    assert cb.convergence_reports(report, "exact") == ["claims_convergence.md", "claims_convergence_1600.md"]
    assert cb.convergence_reports(report, "learned") == ["claims_convergence_learned.md"]
    assert cb.convergence_reports(str(tmp_path / "empty" / "claims.md"), "learned") == []

