"""The verdict rule (``toy_world/verdicts.py``) on synthetic numbers: its false-positive rate under no
effect, its power on a large effect, equivalence on a zero effect, and what it refuses to decide."""
import math

import pytest

from threestudio_lucid.toy_world import verdicts as vd


def test_under_no_effect_shown_comes_out_at_most_at_the_stated_rate():
    # the old rule (difference > hypot of the stds, 3 unpaired seeds) was shown ~8 % of the time here
    for n_seeds in (5, 10):
        rates = vd.outcome_rates(effect=0.0, sd=1.0, n_seeds=n_seeds, margin=0.5, n_experiments=2000, seed=n_seeds)
        assert rates[vd.SHOWN] <= 0.05, rates  # one-sided 2.5 % by construction


def test_a_large_effect_with_five_seeds_is_shown_almost_always():
    rates = vd.outcome_rates(effect=3.0, sd=1.0, n_seeds=5, margin=0.5, n_experiments=1000)
    assert rates[vd.SHOWN] >= 0.95 and rates[vd.REFUTED] == 0.0, rates


def test_an_exact_zero_effect_with_tiny_noise_is_refuted_by_equivalence():
    rates = vd.outcome_rates(effect=0.0, sd=1e-3, n_seeds=5, margin=0.05, n_experiments=1000)
    assert rates[vd.REFUTED] >= 0.95, rates
    v = vd.decide([0.0] * 5, margin=0.05)  # no noise at all: an interval of zero width at 0
    assert v.outcome == vd.REFUTED and (v.low, v.high) == (0.0, 0.0) and "equivalent" in v.reason


def test_too_few_seeds_is_inconclusive_whatever_the_numbers():
    for d in ([5.0, 5.1, 4.9, 5.0], [0.0, 0.0], [1.0]):
        v = vd.decide(d, margin=0.1)
        assert v.outcome == vd.INCONCLUSIVE and f"{len(d)} paired, a verdict needs at least 5" in v.reason
    assert vd.outcome_rates(effect=10.0, sd=1.0, n_seeds=3, margin=0.5, n_experiments=50)[vd.INCONCLUSIVE] == 1.0
    nothing = vd.decide([], margin=0.1)
    assert nothing.outcome == vd.INCONCLUSIVE and nothing.n == 0 and "not measured" in nothing.describe()


def test_the_interval_is_students_t_and_the_three_outcomes_follow_it():
    d = [0.1, 0.2, 0.3, 0.4, 0.5]
    mean, low, high = vd.t_interval(d)
    half = 2.7764451051977987 * math.sqrt(0.025) / math.sqrt(5)  # t_{0.975, 4} sd / sqrt(n)
    assert mean == pytest.approx(0.3) and low == pytest.approx(0.3 - half) and high == pytest.approx(0.3 + half)
    assert vd.decide(d, margin=0.1).outcome == vd.SHOWN
    small = vd.decide([0.010, 0.012, 0.011, 0.009, 0.010], margin=0.1)  # real but below the margin: still shown
    assert small.outcome == vd.SHOWN and "smaller than the margin" in small.reason
    assert vd.decide([-0.5, -0.4, -0.6, -0.5, -0.45], margin=0.1).reason.startswith("the opposite")
    wide = vd.decide([-0.5, 0.6, -0.2, 0.4, 0.1], margin=0.1)
    assert wide.outcome == vd.INCONCLUSIVE and wide.low < 0 < 0.1 < wide.high
    below = vd.decide([-0.3, 0.05, -0.25, 0.0, -0.1], margin=0.1)  # holds 0, reaches below -margin, not +margin
    assert below.outcome == vd.REFUTED and below.reason.startswith("no effect as large as the margin")
    with pytest.raises(ValueError, match="margin must be > 0"):
        vd.decide(d, margin=0.0)


def test_paired_verdict_pairs_by_seed_in_the_claimed_direction():
    a = {0: 0.50, 1: 0.62, 2: 0.41, 3: 0.70, 4: 0.55, 9: 0.9}
    b = {0: 0.45, 1: 0.57, 2: 0.36, 3: 0.65, 4: 0.50, 5: 0.1}
    v = vd.paired_verdict(a, b, ">", margin=0.02)
    assert v.outcome == vd.SHOWN and v.seeds == (0, 1, 2, 3, 4) and set(v.unpaired) == {9, 5}
    assert v.mean == pytest.approx(0.05) and v.low == pytest.approx(0.05) and v.high == pytest.approx(0.05)
    assert vd.paired_verdict(a, b, "<", margin=0.02).outcome == vd.REFUTED
    # nan scores are left out of the pairs; a constant compares every seed with it
    b[4] = float("nan")
    assert vd.paired_verdict(a, b, ">", margin=0.02).outcome == vd.INCONCLUSIVE
    c = vd.paired_verdict({s: 0.7 + 0.01 * s for s in range(5)}, 0.5, ">", margin=0.05)
    assert c.outcome == vd.SHOWN and c.n == 5
    with pytest.raises(ValueError, match="direction"):
        vd.paired_verdict(a, b, ">=", margin=0.1)


def test_a_metric_that_does_not_see_gives_no_verdict():
    v = vd.paired_verdict({s: 1.0 + s for s in range(5)}, 0.0, ">", margin=0.1, sees=False)
    assert v.outcome == vd.INCONCLUSIVE and "does not separate its positive controls" in v.reason


def test_a_claim_combines_its_checks():
    P, C = vd.PRECONDITION, vd.CLAIM
    assert vd.claim_outcome([(P, vd.SHOWN), (C, vd.SHOWN)])[0] == vd.SHOWN
    assert vd.claim_outcome([(P, vd.SHOWN), (C, vd.SHOWN), (C, vd.REFUTED)])[0] == vd.REFUTED
    assert vd.claim_outcome([(P, vd.SHOWN), (C, vd.INCONCLUSIVE), (C, vd.SHOWN)])[0] == vd.INCONCLUSIVE
    outcome, reason = vd.claim_outcome([(P, vd.REFUTED), (C, vd.SHOWN)])
    assert outcome == vd.INCONCLUSIVE and "does not (yet) show the failure" in reason
