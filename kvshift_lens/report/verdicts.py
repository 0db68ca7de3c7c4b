"""The verdict vocabulary and the rule primitives every claim is judged with.

A claim's verdict is one of `OUTCOMES`; it comes from a rule that compares the claim with a baseline
that could make it fail (the init state, the vanilla counterpart, chance). When the data cannot
decide (too few seeds, censored runs, both arms at floor or ceiling) the verdict is "inconclusive",
never a guess in either direction. The primitives below are shared by every study:

* `one_sided_outcome(p_claim, p_reverse)`: a test in each direction → reproduced / not reproduced /
  inconclusive at `ALPHA`;
* `effect_outcome(lo, hi, margin)`: an interval of an effect in the claimed direction → reproduced if
  it excludes 0, not reproduced if it lies below the smallest effect that counts (`margin`), else
  inconclusive;
* `learns_outcome` / `cannot_learn_outcome`: per-seed success / failure / censored outcomes of the
  capacity protocol (`kvshift_lens.report.protocol`) → whether a model learns a task;
* `combine`: a claim made of several parts; `all_of`: one part that is a conjunction of conditions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

REPRODUCED = "reproduced"
PARTLY = "partly reproduced"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive"
OUTCOMES = (REPRODUCED, PARTLY, NOT_REPRODUCED, INCONCLUSIVE)

SUCCESS, FAILURE, CENSORED = "success", "failure", "censored"  # per-run / per-seed protocol outcomes
ALPHA = 0.05  # significance level of every one-sided test


@dataclass
class Verdict:
    """One rule applied to data: its outcome, the rule and baseline in one line each, and what it read."""

    outcome: str  # one of OUTCOMES
    rule: str  # the rule, one line (what is compared, which test, which thresholds)
    baseline: str  # what the claim is compared against
    evidence: list[str] = field(default_factory=list)  # the numbers the rule read
    reason: str = ""  # qualifier shown in parentheses, e.g. "no power", "not tested"
    p: float = math.nan  # one-sided p of the test in the claimed direction (NaN: the outcome is not a test's)
    p_reverse: float = math.nan  # one-sided p of the test against the claim (reverse direction, or below the margin)
    p_adjusted: float = math.nan  # `p` after Holm's adjustment within the claim's family (report.multiplicity)
    p_reverse_adjusted: float = math.nan  # `p_reverse` after the same adjustment
    unadjusted: str = ""  # the outcome before Holm's adjustment ("" when none was applied)
    test: str = ""  # names the test behind `p` when two parts share it (one hypothesis in the family); "" = its own

    @property
    def raw_outcome(self) -> str:
        """The outcome before Holm's adjustment (the outcome itself when none was applied)."""
        return self.unadjusted or self.outcome

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"verdict outcome {self.outcome!r} is not one of {OUTCOMES}")

    @property
    def label(self) -> str:
        """`inconclusive (no power)`, `reproduced`, ..."""
        return f"{self.outcome} ({self.reason})" if self.reason else self.outcome


def effect_outcome(lo: float, hi: float, margin: float = 0.0) -> str:
    """Outcome of an effect whose interval [lo, hi] is oriented so that > 0 supports the claim.

    reproduced: lo > 0; not reproduced: hi < margin (the effect is below the smallest size that counts,
    or reversed); inconclusive: otherwise, or when there is no interval (NaN).
    """
    if lo != lo or hi != hi:
        return INCONCLUSIVE
    if lo > 0:
        return REPRODUCED
    if hi < margin:
        return NOT_REPRODUCED
    return INCONCLUSIVE


def one_sided_outcome(p_claim: float, p_reverse: float, alpha: float = ALPHA) -> str:
    """Outcome of a pair of one-sided tests: reproduced if the test in the claimed direction rejects at `alpha`,
    not reproduced if the test in the reverse direction does, inconclusive otherwise (or without p-values)."""
    if p_claim == p_claim and p_claim < alpha:
        return REPRODUCED
    if p_reverse == p_reverse and p_reverse < alpha:
        return NOT_REPRODUCED
    return INCONCLUSIVE


def learns_outcome(outcomes: Sequence[str], quorum: float = 2 / 3) -> str:
    """"The model learns the task": reproduced when at least `quorum` of seeds succeed, not reproduced when
    that is impossible even if every censored seed were to succeed, else inconclusive."""
    n = len(outcomes)
    if n == 0:
        return INCONCLUSIVE
    wins, open_ = sum(o == SUCCESS for o in outcomes), sum(o == CENSORED for o in outcomes)
    if wins >= quorum * n:
        return REPRODUCED
    if wins + open_ < quorum * n:
        return NOT_REPRODUCED
    return INCONCLUSIVE


def cannot_learn_outcome(outcomes: Sequence[str]) -> str:
    """"The model cannot learn the task": reproduced when every seed failed after plateauing, not reproduced
    when any seed succeeded, inconclusive when some seed is censored (still improving at the end)."""
    if not outcomes:
        return INCONCLUSIVE
    if any(o == SUCCESS for o in outcomes):
        return NOT_REPRODUCED
    if any(o == CENSORED for o in outcomes):
        return INCONCLUSIVE
    return REPRODUCED


def all_of(parts: Iterable[str]) -> str:
    """Outcome of a conjunction ("learns, and later"): reproduced if every condition is, not reproduced if any
    is not, else inconclusive."""
    parts = list(parts)
    if parts and all(p == REPRODUCED for p in parts):
        return REPRODUCED
    if any(p == NOT_REPRODUCED for p in parts):
        return NOT_REPRODUCED
    return INCONCLUSIVE


def combine(parts: Iterable[str]) -> str:
    """Outcome of a claim made of parts: all reproduced -> reproduced; all inconclusive -> inconclusive;
    some reproduced -> partly reproduced; none reproduced but some not -> not reproduced."""
    parts = list(parts)
    if not parts or all(p == INCONCLUSIVE for p in parts):
        return INCONCLUSIVE
    if all(p == REPRODUCED for p in parts):
        return REPRODUCED
    if any(p in (REPRODUCED, PARTLY) for p in parts):
        return PARTLY
    return NOT_REPRODUCED
