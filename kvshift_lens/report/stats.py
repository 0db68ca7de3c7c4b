"""The statistics every verdict uses, from `scipy.stats` (no hand-written intervals or tests).

| quantity | interval / test |
|---|---|
| mean over seeds | Student-t 95 % interval (`mean_ci`; n ≥ 2, NaN below) |
| paired difference of means (same seeds) | Student-t interval of the per-pair differences (`diff_ci`) |
| unpaired difference of means | Welch-t interval (`diff_ci(paired=False)`) |
| success proportion k/n | Wilson score interval (`binomtest(k, n).proportion_ci("wilson")`) |
| success of two conditions paired by seed/width | exact binomial test on the discordant pairs (`discordant_test`, McNemar's exact test) |
| time to a threshold with censoring | log-rank test (`logrank_test`, `scipy.stats.logrank`; one-sided: a sooner) |
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

LEVEL = 0.95


def _clean(values: Sequence[float]) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    return x[~np.isnan(x)]


def mean_ci(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, lo, hi): Student-t interval of the mean of `values` (NaNs dropped). One value: (x, nan, nan);
    identical values: a zero-width interval."""
    x = _clean(values)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if len(x) == 1:
        return mean, math.nan, math.nan
    if np.ptp(x) == 0:
        return mean, mean, mean
    lo, hi = stats.t.interval(level, len(x) - 1, loc=mean, scale=float(stats.sem(x)))
    return mean, float(lo), float(hi)


def group_mean_ci(df: pd.DataFrame, by: Sequence[str], value: str, level: float = LEVEL) -> pd.DataFrame:
    """Per group of `by` (one row per seed/run expected): n, mean, lo, hi of `value` (`mean_ci`)."""
    rows = []
    for key, group in df.groupby(list(by), sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        mean, lo, hi = mean_ci(group[value].to_numpy(), level)
        rows.append({**dict(zip(by, key)), "n": int(group[value].notna().sum()), "mean": mean, "lo": lo, "hi": hi})
    return pd.DataFrame(rows, columns=[*by, "n", "mean", "lo", "hi"])


def diff_ci(a: Sequence[float], b: Sequence[float], paired: bool = True,
            level: float = LEVEL) -> tuple[float, float, float]:
    """(mean of a − b, lo, hi): t-interval of the paired differences (NaN pairs dropped) or, unpaired, Welch's."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if paired:
        return mean_ci(a - b, level)
    a, b = _clean(a), _clean(b)
    if len(a) < 2 or len(b) < 2:
        return (float(a.mean() - b.mean()) if len(a) and len(b) else math.nan), math.nan, math.nan
    diff = float(a.mean() - b.mean())
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return diff, diff, diff
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(level)
    return diff, float(ci.low), float(ci.high)


def proportion_ci(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of a success proportion k/n; (nan, nan) when n = 0."""
    if n == 0:
        return math.nan, math.nan
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


@dataclass(frozen=True)
class DiscordantTest:
    """McNemar's exact test: among pairs where exactly one side succeeds, a_only vs b_only under Bin(n, 1/2)."""

    a_only: int  # pairs where only a succeeds
    b_only: int  # pairs where only b succeeds
    both: int
    neither: int
    p: float  # exact binomial p-value of a_only out of a_only + b_only (NaN without discordant pairs)
    alternative: str


def discordant_test(a: Sequence[bool], b: Sequence[bool], alternative: str = "greater") -> DiscordantTest:
    """Exact test on discordant pairs of paired successes `a`, `b` (same length): does a succeed more often?

    Only discordant pairs carry information about the difference; concordant pairs are counted but not tested.
    """
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes need equal lengths, got {a.shape} and {b.shape}")
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    n = a_only + b_only
    p = float(stats.binomtest(a_only, n, 0.5, alternative=alternative).pvalue) if n else math.nan
    return DiscordantTest(a_only, b_only, int((a & b).sum()), int((~a & ~b).sum()), p, alternative)


@dataclass(frozen=True)
class LogrankTest:
    """Log-rank comparison of time-to-threshold; events are runs that reached it, the rest are censored."""

    n_a: int
    events_a: int
    n_b: int
    events_b: int
    statistic: float
    p: float  # NaN when no run of either group reached the threshold
    alternative: str  # "a_sooner", "a_later" or "two-sided"


_LOGRANK = {"a_sooner": "greater", "a_later": "less", "two-sided": "two-sided"}  # ours -> scipy's (hazard of a vs b)


def logrank_test(time_a: Sequence[float], event_a: Sequence[bool], time_b: Sequence[float],
                 event_b: Sequence[bool], alternative: str = "a_sooner") -> LogrankTest:
    """scipy.stats.logrank on right-censored times: does a reach the threshold sooner ("a_sooner": a's hazard is
    greater), later, or differently? `time` is the step of the event, or for a censored run its last step."""
    if alternative not in _LOGRANK:
        raise ValueError(f"alternative={alternative!r} must be one of {list(_LOGRANK)}")
    def censored(time: Sequence[float], event: Sequence[bool]) -> stats.CensoredData:
        t, e = np.asarray(time, dtype=float), np.asarray(event, dtype=bool)
        return stats.CensoredData(uncensored=t[e], right=t[~e])

    ea, eb = int(np.sum(event_a)), int(np.sum(event_b))
    if ea + eb == 0 or len(time_a) == 0 or len(time_b) == 0:
        return LogrankTest(len(time_a), ea, len(time_b), eb, math.nan, math.nan, alternative)
    res = stats.logrank(censored(time_a, event_a), censored(time_b, event_b), alternative=_LOGRANK[alternative])
    return LogrankTest(len(time_a), ea, len(time_b), eb, float(res.statistic), float(res.pvalue), alternative)


def fmt_ci(mean: float, lo: float, hi: float, digits: int = 2) -> str:
    """`0.93 [0.91, 0.95]`; without an interval (one value) `0.93 (no interval)`; NaN -> `n/a`."""
    if mean != mean:
        return "n/a"
    if lo != lo:
        return f"{mean:.{digits}f} (no interval)"
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def fmt_p(p: float) -> str:
    """`p = 0.031`, `p < 0.001`, or `p n/a`."""
    return "p n/a" if p != p else ("p < 0.001" if p < 0.001 else f"p = {p:.3g}")
