"""The statistics every verdict uses, from `scipy.stats` (no hand-written tests).

| quantity | interval / test |
|---|---|
| mean over seeds, unbounded (loss, distance) | Student-t 95 % interval (`mean_ci`; n ≥ 2) |
| mean of a bounded quantity (accuracy, share, their differences), n < 10 | exact sign-flip interval: Hartigan's subset means, clipped to the bounds (`mean_ci(bounds=...)`, `signflip_ci`) |
| mean of a bounded quantity, n ≥ 10 | Student-t interval clipped to the bounds |
| paired difference of means (same seeds) | the interval above of the per-pair differences (`diff_ci`) |
| paired difference, as a test | exact paired sign-flip permutation test (`signflip_test`, `scipy.stats.permutation_test`) |
| unpaired difference of means | Welch-t interval (`diff_ci(paired=False)`) |
| success proportion k/n | Wilson score interval (`proportion_ci`); exact Clopper–Pearson (`proportion_ci(method="exact")`) |
| success of two conditions paired by seed/width | exact binomial test on the discordant pairs (`discordant_test`, McNemar's exact test) |
| time to a threshold with censoring | log-rank test (`logrank_test`, `scipy.stats.logrank`; one-sided: a sooner); Kaplan–Meier median (`km_median`, `scipy.stats.ecdf`) |

Identical values (zero variance) get no interval: a zero-width interval would decide a verdict on no evidence of
spread. A Student-t interval on 3 bounded, bimodal values runs outside the bounds (fig1b's old "0.64 [−0.59, 1.87]");
the sign-flip interval never does, and with fewer than 6 values no 95 % interval is narrower than the bounds.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from scipy import stats

LEVEL = 0.95


def _clean(values: Sequence[float]) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    return x[~np.isnan(x)]


SMALL_N = 10  # below this many values a bounded quantity gets the exact sign-flip interval, not Student t
Bounds = Optional[tuple[float, float]]  # (lowest, highest) value a quantity can take; None: unbounded


def subset_means(values: Sequence[float]) -> np.ndarray:
    """The 2^n − 1 means of the non-empty subsets of `values` (n < 16), sorted: Hartigan's (1969) typical values."""
    x = np.asarray(values, dtype=float)
    if len(x) >= 16:
        raise ValueError(f"{len(x)} values: 2^n subset means are too many; use the t-interval at this n")
    masks = np.array(list(itertools.product([0, 1], repeat=len(x)))[1:], dtype=float)  # [2^n - 1, n]
    return np.sort(masks @ x / masks.sum(axis=1))


def signflip_ci(values: Sequence[float], level: float = LEVEL, bounds: Bounds = None) -> tuple[float, float, float]:
    """(mean, lo, hi): the exact interval of the centre of values symmetric about it (Hartigan 1969): between the
    k-th smallest and the k-th largest subset mean, k = ⌊(1 − level)/2 · 2^n⌋, which inverts the sign-flip test of the
    mean. With too few values for the level (k = 0: n < 6 at 95 %) the interval is the bounds (±inf if none)."""
    x = _clean(values)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    lo_b, hi_b = bounds or (-math.inf, math.inf)
    k = int(math.floor((1 - level) / 2 * 2 ** len(x)))
    if k == 0:
        return float(x.mean()), float(lo_b), float(hi_b)
    means = subset_means(x)
    return float(x.mean()), max(float(means[k - 1]), lo_b), min(float(means[-k]), hi_b)


def mean_ci(values: Sequence[float], level: float = LEVEL, bounds: Bounds = None) -> tuple[float, float, float]:
    """(mean, lo, hi) of `values` (NaNs dropped). Unbounded: Student t. Bounded (`bounds`): the exact sign-flip
    interval below SMALL_N values, else Student t clipped to the bounds. One value, or identical values: no
    interval (lo = hi = NaN)."""
    x = _clean(values)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if len(x) == 1 or np.ptp(x) == 0:
        return mean, math.nan, math.nan
    if bounds is not None and len(x) < SMALL_N:
        return signflip_ci(x, level, bounds)
    lo, hi = stats.t.interval(level, len(x) - 1, loc=mean, scale=float(stats.sem(x)))
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return mean, float(lo), float(hi)


def interval_method(n: int, bounds: Bounds) -> str:
    """The name of the interval `mean_ci` gives n values with these bounds, for rule texts."""
    if bounds is not None and n < SMALL_N:
        return "exact sign-flip interval (Hartigan's subset means; the bounds below 6 values)"
    return "Student-t interval" + (" clipped to the bounds" if bounds is not None else "")


def group_mean_ci(df: pd.DataFrame, by: Sequence[str], value: str, level: float = LEVEL,
                  bounds: Bounds = None) -> pd.DataFrame:
    """Per group of `by` (one row per seed/run expected): n, mean, lo, hi of `value` (`mean_ci`)."""
    rows = []
    for key, group in df.groupby(list(by), sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        mean, lo, hi = mean_ci(group[value].to_numpy(), level, bounds)
        rows.append({**dict(zip(by, key)), "n": int(group[value].notna().sum()), "mean": mean, "lo": lo, "hi": hi})
    return pd.DataFrame(rows, columns=[*by, "n", "mean", "lo", "hi"])


def diff_ci(a: Sequence[float], b: Sequence[float], paired: bool = True, level: float = LEVEL,
            bounds: Bounds = None) -> tuple[float, float, float]:
    """(mean of a − b, lo, hi): `mean_ci` of the paired differences (NaN pairs dropped; `bounds` of the difference)
    or, unpaired, Welch's t-interval."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if paired:
        return mean_ci(a - b, level, bounds)
    a, b = _clean(a), _clean(b)
    if len(a) < 2 or len(b) < 2:
        return (float(a.mean() - b.mean()) if len(a) and len(b) else math.nan), math.nan, math.nan
    diff = float(a.mean() - b.mean())
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return diff, math.nan, math.nan
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(level)
    return diff, float(ci.low), float(ci.high)


def signflip_test(differences: Sequence[float], alternative: str = "greater", shift: float = 0.0) -> float:
    """Exact paired sign-flip permutation test (`scipy.stats.permutation_test`, every sign pattern) of the mean of
    `differences` against `shift`: p of "the mean is greater" (or "less", "two-sided"). NaN without values."""
    d = _clean(differences) - shift
    if len(d) == 0:
        return math.nan
    res = stats.permutation_test((d,), np.mean, permutation_type="samples", alternative=alternative,
                                 n_resamples=np.inf)
    return float(res.pvalue)


def proportion_ci(k: int, n: int, level: float = LEVEL, method: str = "wilson") -> tuple[float, float]:
    """Interval of a success proportion k/n: Wilson score ("wilson") or exact Clopper–Pearson ("exact"), from
    `binomtest(k, n).proportion_ci`; (nan, nan) when n = 0."""
    if n == 0:
        return math.nan, math.nan
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method=method)
    return float(ci.low), float(ci.high)


def km_median(time: Sequence[float], event: Sequence[bool]) -> float:
    """Kaplan–Meier median time to the threshold (`scipy.stats.ecdf` on right-censored times): runs that never
    reached it count as censored at their last step, not left out. NaN when the survival curve never falls to 1/2
    (fewer than half reached it)."""
    t, e = np.asarray(time, dtype=float), np.asarray(event, dtype=bool)
    if len(t) == 0 or not e.any():
        return math.nan
    sf = stats.ecdf(stats.CensoredData(uncensored=t[e], right=t[~e])).sf
    below = sf.quantiles[sf.probabilities <= 0.5]
    return float(below.min()) if len(below) else math.nan


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


def sooner_in_pairs(time_a: Sequence[float], event_a: Sequence[bool], time_b: Sequence[float],
                    event_b: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """Per pair of right-censored times (Gehan's pairwise ordering): whether a reached the event strictly before b
    had (b reached it later or was still without it at a's time), and the same for b; a pair with neither is
    undecided (a tie, both censored, or one censored before the other's event)."""
    ta, tb = np.asarray(time_a, dtype=float), np.asarray(time_b, dtype=float)
    ea, eb = np.asarray(event_a, dtype=bool), np.asarray(event_b, dtype=bool)
    a_first = ea & ((ta < tb) | ((ta == tb) & ~eb))
    b_first = eb & ((tb < ta) | ((ta == tb) & ~ea))
    return a_first, b_first


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
