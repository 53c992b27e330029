"""The verdict rule of the claims benchmark: paired seeds, a confidence interval, a margin stated before
the run, and three outcomes (issue 27).

A check claims that a score of method A is higher (``">"``) or lower (``"<"``) than that of method B, or
than a constant. Both methods run on the same seeds (the seed fixes the initial Gaussians and the camera
and noise draws), so the evidence is the per-seed difference in the claimed direction

    ``d_s = sign (a_s - b_s)``,  ``sign = +1`` for ``">"``, ``-1`` for ``"<"``,

over the seeds ``s`` with a finite score on both sides (the rest are listed as unpaired and left out).
With ``n`` such seeds, mean ``m``, sample standard deviation ``sd``, the two-sided ``CONFIDENCE``
(95 %) Student-t interval is

    ``[lo, hi] = m -/+ t_{(1 + CONFIDENCE) / 2, n - 1} sd / sqrt(n)``,

and, with the check's margin ``delta > 0`` (the smallest effect that matters, stated with the check
before any run):

- **shown**: ``lo > 0`` (the interval excludes 0 on the claimed side; a one-sided test at level
  ``(1 - CONFIDENCE) / 2`` = 2.5 %: under no effect it is shown at most that often);
- **refuted**: not shown and ``hi < delta`` (the interval excludes every effect as large as the margin
  in the claimed direction: an effect within ``+-delta`` (equivalence), or one the other way);
- **inconclusive** otherwise (the interval holds both 0 and ``delta``), and whenever ``n <
  MIN_SEEDS`` (too few seeds for an interval to mean much) or the metric does not see (it does not
  separate its positive controls, ``positive_controls.separation``).

A claim made of several checks (:func:`claim_outcome`): inconclusive unless its preconditions (the
world shows the failure the claim is about) are shown; then refuted if any of its checks is refuted,
shown if all are, inconclusive otherwise.
"""
import functools
import math
from dataclasses import dataclass, field
from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from scipy import stats

SHOWN, REFUTED, INCONCLUSIVE = "shown", "refuted", "inconclusive"
OUTCOMES = (SHOWN, REFUTED, INCONCLUSIVE)
CONFIDENCE = 0.95
MIN_SEEDS = 5
PRECONDITION, CLAIM = "precondition", "claim"


@dataclass
class Verdict:
    """One check's outcome with its evidence: the mean paired difference in the claimed direction and its
    interval, over ``n`` paired seeds (``seeds``), against ``margin``; ``reason`` says why."""

    outcome: str
    n: int
    mean: float
    low: float
    high: float
    margin: float
    reason: str
    seeds: Tuple = ()
    unpaired: Tuple = ()
    differences: Tuple = field(default=(), repr=False)

    def describe(self) -> str:
        if self.n == 0 or math.isnan(self.mean):
            return self.reason
        ci = "" if math.isnan(self.low) else f" [{CONFIDENCE:.0%} CI {self.low:+.3f}, {self.high:+.3f}]"
        return (f"{self.reason}: mean paired difference {self.mean:+.3f} in the claimed direction{ci}, "
                f"n = {self.n}, margin {self.margin:g}")


@functools.lru_cache(maxsize=None)
def t_quantile(p: float, dof: int) -> float:
    return float(stats.t.ppf(p, dof))


def t_interval(differences: Sequence[float], confidence: float = CONFIDENCE) -> Tuple[float, float, float]:
    """``(mean, low, high)``: the two-sided Student-t interval of the mean (``n >= 2``; an interval of zero
    width when every difference is the same)."""
    d = np.asarray(differences, dtype=np.float64)
    if d.size < 2:
        raise ValueError("a t interval needs at least two values")
    m = float(d.mean())
    half = t_quantile((1 + confidence) / 2, d.size - 1) * float(d.std(ddof=1)) / math.sqrt(d.size)
    return m, m - half, m + half


def decide(differences: Sequence[float], margin: float, confidence: float = CONFIDENCE,
           min_seeds: int = MIN_SEEDS, sees: Optional[bool] = None) -> Verdict:
    """The rule of the module docstring on differences already signed so that the claim is ``d > 0``."""
    if not margin > 0:
        raise ValueError(f"a check's margin must be > 0, got {margin}")
    d = tuple(float(x) for x in differences)
    n = len(d)
    nan = float("nan")
    if sees is False:
        return Verdict(INCONCLUSIVE, n, nan, nan, nan, margin, "the metric does not separate its positive controls",
                       differences=d)
    if n == 0:
        return Verdict(INCONCLUSIVE, 0, nan, nan, nan, margin, "not measured (no seed with both scores)")
    if n < max(2, min_seeds):
        mean = sum(d) / n
        return Verdict(INCONCLUSIVE, n, mean, nan, nan, margin,
                       f"too few seeds: {n} paired, a verdict needs at least {min_seeds}", differences=d)
    mean, low, high = t_interval(d, confidence)
    if low > 0:
        outcome = SHOWN
        reason = ("the interval excludes 0, but not effects smaller than the margin (its upper end is below it)"
                  if high < margin else "the interval excludes 0 on the claimed side")
    elif high < margin:
        outcome = REFUTED
        if high < 0:
            reason = "the opposite: the interval lies below 0"
        elif low > -margin:
            reason = "equivalent: the interval holds 0 and lies within +-margin"
        else:
            reason = "no effect as large as the margin: the interval's upper end is below it"
    else:
        outcome, reason = INCONCLUSIVE, "the interval holds both 0 and the margin"
    return Verdict(outcome, n, mean, low, high, margin, reason, differences=d)


Scores = Union[Mapping[object, float], float]


def _finite(x) -> bool:
    return x is not None and math.isfinite(float(x))


def paired_differences(a: Mapping[object, float], b: Scores, direction: str) -> Tuple[Tuple, Tuple, Tuple]:
    """``(seeds, differences, unpaired)``: ``sign (a_s - b_s)`` over the seeds with finite scores on both
    sides (``b`` a per-seed mapping or one constant), in ``a``'s seed order; ``unpaired`` the seeds of
    either side left out."""
    if direction not in (">", "<"):
        raise ValueError(f"direction must be '>' or '<', got {direction!r}")
    sign = 1.0 if direction == ">" else -1.0
    if isinstance(b, Mapping):
        seeds = tuple(s for s in a if s in b and _finite(a[s]) and _finite(b[s]))
        other = {s: float(b[s]) for s in seeds}
        unpaired = tuple(s for s in list(a) + [s for s in b if s not in a] if s not in seeds)
    else:
        seeds = tuple(s for s in a if _finite(a[s]))
        other = {s: float(b) for s in seeds}
        unpaired = tuple(s for s in a if s not in seeds)
    return seeds, tuple(sign * (float(a[s]) - other[s]) for s in seeds), unpaired


def paired_verdict(a: Mapping[object, float], b: Scores, direction: str, margin: float,
                   confidence: float = CONFIDENCE, min_seeds: int = MIN_SEEDS, sees: Optional[bool] = None) -> Verdict:
    """The verdict on "``a`` ``direction`` ``b``" from per-seed scores ``a`` (``{seed: score}``) and ``b``
    (the same, or a constant), with the check's ``margin``; ``sees`` False (the metric does not separate
    its positive controls) makes it inconclusive."""
    seeds, d, unpaired = paired_differences(a, b, direction)
    v = decide(d, margin, confidence, min_seeds, sees)
    v.seeds, v.unpaired = seeds, unpaired
    return v


def claim_outcome(checks: Iterable[Tuple[str, str]]) -> Tuple[str, str]:
    """``(outcome, reason)`` of a claim from its checks' ``(role, outcome)``, role ``"precondition"`` or
    ``"claim"`` (module docstring)."""
    checks = list(checks)
    pre = [o for r, o in checks if r == PRECONDITION]
    main = [o for r, o in checks if r != PRECONDITION]
    if any(o != SHOWN for o in pre):
        return INCONCLUSIVE, "the world does not (yet) show the failure the claim is about"
    if not main:
        return INCONCLUSIVE, "no check"
    if any(o == REFUTED for o in main):
        return REFUTED, "a check is refuted"
    if all(o == SHOWN for o in main):
        return SHOWN, "every check is shown"
    return INCONCLUSIVE, "some check is inconclusive"


def outcome_rates(effect: float, sd: float, n_seeds: int, margin: float, n_experiments: int = 2000,
                  seed: int = 0, confidence: float = CONFIDENCE, min_seeds: int = MIN_SEEDS) -> Dict[str, float]:
    """How often each outcome comes out of :func:`decide` over ``n_experiments`` simulated experiments
    whose paired differences are ``N(effect, sd^2)`` over ``n_seeds`` seeds (the rule's operating
    characteristics: the false-positive rate at ``effect = 0``, the power at others)."""
    rng = np.random.default_rng(seed)
    counts = {o: 0 for o in OUTCOMES}
    for row in rng.normal(effect, sd, size=(n_experiments, n_seeds)):
        counts[decide(row, margin, confidence, min_seeds).outcome] += 1
    return {o: c / n_experiments for o, c in counts.items()}
