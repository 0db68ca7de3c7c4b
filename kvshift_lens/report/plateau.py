"""Noise-aware run labels: the plateau rule that decides whether a run that missed the threshold *failed*.

A run that did not reach the success threshold is either **plateaued** (a failure of the configuration at this
learning rate) or **censored** (it might still learn with more steps; never counted as a failure). Held-out accuracy
moves between evaluations by 0.006–0.02 on flat curves, the size of any practical threshold, so a rule on the raw
gain over the last steps (the rule before issue 19) labels noise. Here the tail slope is judged with its noise:

1. **Tail**: the evaluations in the last `window` of the run's steps (`Protocol.plateau_window`, half the run).
2. **Noise**: the between-evaluation SD of the tail — the residual SD of its least-squares line — floored at the
   metric's resolution on the held-out set, 1 / `eval_size` (so a tail that never moves still gets a non-zero
   interval). The held-out set is fixed per seed, so its binomial sampling error is shared by every evaluation and
   cancels out of the slope; what moves between evaluations is the model, which the residual SD measures.
3. **Rule**: the upper end of the 95 % confidence interval of the tail slope (`1 − alpha`, Student t, n − 2 degrees of
   freedom), projected over `horizon` × the run's steps (1: a doubling of the budget), must lie below the practical
   gain `plateau_gain` (0.01). Then the run is plateaued; otherwise, or with fewer than `MIN_POINTS` evaluations in
   the tail, it is censored.

A late phase change (2-layer vanilla: flat at ~0.15 until step ~900, then 0.92 by step 1,150) cut early has a
short, noisy tail whose bound is wide, so it stays censored; a long flat tail with small noise is plateaued
(`tests/test_plateau.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats

from kvshift_lens.report.verdicts import CENSORED, FAILURE

MIN_POINTS = 4  # evaluations in the tail needed to estimate a slope and its noise (2 residual degrees of freedom)


@dataclass(frozen=True)
class TailFit:
    """The plateau rule applied to one run's tail."""

    n: int  # evaluations in the tail
    slope: float  # least-squares slope of the metric per step over the tail
    noise: float  # between-evaluation SD used (residual SD, floored at 1 / eval_size)
    slope_ucb: float  # one-sided upper confidence bound of the slope
    projected_gain: float  # slope_ucb × horizon × final step: the most the run could plausibly still gain
    label: str  # FAILURE (plateaued) or CENSORED


def tail_fit(steps: Sequence[float], metric: Sequence[float], eval_size: float, window: float = 0.5,
             horizon: float = 1.0, gain: float = 0.01, alpha: float = 0.025) -> TailFit:
    """Label a run that missed the threshold: FAILURE when the upper bound of its tail slope, projected over
    `horizon` × its steps, lies below `gain`; CENSORED otherwise (module doc)."""
    s, m = np.asarray(steps, dtype=float), np.asarray(metric, dtype=float)
    keep = ~np.isnan(m)
    s, m = s[keep], m[keep]
    final = float(s.max()) if len(s) else math.nan
    tail = s >= (1 - window) * final if len(s) else keep[:0]
    x, y = s[tail], m[tail]
    if len(x) < MIN_POINTS or np.ptp(x) == 0:
        return TailFit(len(x), math.nan, math.nan, math.nan, math.nan, CENSORED)
    fit = stats.linregress(x, y)
    resid = y - (fit.intercept + fit.slope * x)
    noise = max(float(np.sqrt((resid ** 2).sum() / (len(x) - 2))), 1.0 / eval_size)
    se = noise / float(np.sqrt(((x - x.mean()) ** 2).sum()))
    ucb = float(fit.slope) + float(stats.t.ppf(1 - alpha, len(x) - 2)) * se
    projected = ucb * horizon * final
    return TailFit(len(x), float(fit.slope), noise, ucb, projected, FAILURE if projected < gain else CENSORED)
