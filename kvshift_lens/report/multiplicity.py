"""Multiplicity control: Holm's adjustment of the tests behind each claim's verdict.

A claim is judged by several parts, several of them tests at α = 0.05 (log-rank, exact tests on discordant pairs,
sign-flip tests). Each claim is one declared **family** (its name in the claim table); within it the p-values of
the tests in the claimed direction are adjusted together by Holm's step-down method
(`statsmodels.stats.multitest.multipletests(method="holm")`), and so are those of the reverse tests; two parts
backed by the same test (fig1a's "faster than 2L vanilla" and "2L vanilla learns later"; `Verdict.test` names it)
count once. A part whose
outcome came from a test keeps it only if the adjusted p still rejects; otherwise it becomes inconclusive
("not significant after Holm"), and the claim's verdict is recombined from its parts. Parts decided without a test
(counts of seeds that succeed, frontier intervals) have no p and are left as they are.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests

from kvshift_lens.report.verdicts import (
    ALPHA, INCONCLUSIVE, NOT_REPRODUCED, OUTCOMES, REPRODUCED, Verdict, combine,
)

HOLM_REASON = "not significant after Holm"


def holm(pvalues: Sequence[float], alpha: float = ALPHA) -> np.ndarray:
    """Holm-adjusted p-values (NaN entries stay NaN and do not count towards the family's size)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(len(p), math.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = multipletests(p[ok], alpha=alpha, method="holm")[1]
    return out


def _holm_by_test(parts: Sequence[tuple[str, Verdict]], key: str, alpha: float) -> np.ndarray:
    """`holm` over the family's hypotheses: parts naming the same `test` share one p-value and count once."""
    ids = [v.test or f"part {i}" for i, (_, v) in enumerate(parts)]
    first = {}
    for i, (_, v) in zip(ids, parts):
        if getattr(v, key) == getattr(v, key):
            first.setdefault(i, getattr(v, key))
    adjusted = dict(zip(first, holm(list(first.values()), alpha)))
    return np.array([adjusted.get(i, math.nan) if getattr(v, key) == getattr(v, key) else math.nan
                     for i, (_, v) in zip(ids, parts)])


def adjust(parts: Sequence[tuple[str, Verdict]], alpha: float = ALPHA) -> None:
    """Holm within one family (a claim's parts), in place: set `p_adjusted` / `p_reverse_adjusted` and `unadjusted`,
    and turn a test-decided outcome that no longer rejects after the adjustment inconclusive."""
    adj, adj_rev = (_holm_by_test(parts, key, alpha) for key in ("p", "p_reverse"))
    for (_, v), pa, pr in zip(parts, adj, adj_rev):
        v.p_adjusted, v.p_reverse_adjusted, v.unadjusted = float(pa), float(pr), v.raw_outcome
        lost = (v.outcome == REPRODUCED and v.p == v.p and not pa < alpha) or \
               (v.outcome == NOT_REPRODUCED and v.p_reverse == v.p_reverse and not pr < alpha)
        if lost:
            v.outcome, v.reason = INCONCLUSIVE, HOLM_REASON


def combined(parts: Sequence[tuple[str, Verdict]], rule: str, baseline: str, alpha: float = ALPHA) -> Verdict:
    """A claim's verdict from its parts (one family): Holm's adjustment (`adjust`), then `verdicts.combine` of the
    adjusted outcomes; `unadjusted` keeps the combination of the raw ones."""
    raw = combine(v.raw_outcome for _, v in parts)
    adjust(parts, alpha)
    return Verdict(combine(v.outcome for _, v in parts), rule, baseline,
                   evidence=[f"{name}: {v.label}" for name, v in parts], unadjusted=raw)


def fmt_adjusted(v: Verdict) -> str:
    """`p = 0.0058, Holm 0.058` for the test behind a part (claimed direction), or "" without one."""
    if v.p != v.p:
        return ""
    adj = f", Holm {v.p_adjusted:.3g}" if v.p_adjusted == v.p_adjusted else ""
    return f"p = {v.p:.3g}{adj}"


def count_table(verdicts: Mapping[str, Verdict], fragile: Optional[Mapping[str, bool]] = None) -> pd.DataFrame:
    """Verdict counts per outcome before and after Holm's adjustment and, with `fragile` (claim name -> flag from
    `report.robustness`), after counting a fragile verdict as inconclusive."""
    columns = {"before Holm": [v.raw_outcome for v in verdicts.values()],
               "after Holm": [v.outcome for v in verdicts.values()]}
    if fragile is not None:
        columns["after Holm, fragile as inconclusive"] = [INCONCLUSIVE if fragile.get(k, False) else v.outcome
                                                         for k, v in verdicts.items()]
    return pd.DataFrame([{"verdict": o, **{c: sum(x == o for x in xs) for c, xs in columns.items()}} for o in OUTCOMES],
                        columns=["verdict", *columns])
