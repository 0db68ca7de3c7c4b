"""Robustness of each verdict to the protocol's two thresholds.

Every verdict that reads run outcomes is recomputed with the success threshold at 0.85 / 0.90 / 0.95 and the plateau
rule's practical gain halved and doubled (`variants`). A verdict whose outcome changes under any variant is
**fragile**: it turns on a threshold choice, and the summary counts it as inconclusive (`summary_outcome`). A finder
takes the `Protocol` as a parameter, so `judge(protocol)` below is a closure over a study's data.

Runs trained with `train.stop_at` stop at the study's threshold: judged at a higher one, they end on a rising tail
and are censored — the variant then asks for longer runs, as it should.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Mapping

import pandas as pd

from kvshift_lens.report.protocol import Protocol
from kvshift_lens.report.verdicts import INCONCLUSIVE, Verdict

THRESHOLDS = (0.85, 0.90, 0.95)  # success thresholds tried
GAIN_FACTORS = (0.5, 2.0)  # the plateau rule's practical gain, halved and doubled
FRAGILE = "fragile"


def variants(base: Protocol) -> dict[str, Protocol]:
    """The protocols each verdict is recomputed under, by name; "base" first."""
    out = {"base": base}
    out.update({f"threshold {t:.2f}": replace(base, threshold=t) for t in THRESHOLDS if t != base.threshold})
    out.update({f"plateau gain {base.plateau_gain * f:g}": replace(base, plateau_gain=base.plateau_gain * f)
                for f in GAIN_FACTORS})
    return out


def robustness(judge: Callable[[Protocol], Mapping[str, Verdict]], base: Protocol) -> pd.DataFrame:
    """One row per verdict `judge` returns: its outcome under every variant (columns named as in `variants`) and
    `fragile` (the outcome differs from the base's under some variant)."""
    outcomes = {name: {k: v.outcome for k, v in judge(p).items()} for name, p in variants(base).items()}
    table = pd.DataFrame(outcomes)
    table.index.name = "verdict"
    table["fragile"] = table.ne(table["base"], axis=0).any(axis=1)
    return table.reset_index()


def summary_outcome(outcome: str, fragile: bool) -> str:
    """The outcome a summary counts: a fragile verdict counts as inconclusive."""
    return INCONCLUSIVE if fragile else outcome


def label(verdict: Verdict, fragile: bool) -> str:
    """`reproduced (fragile)`: the verdict's label with the robustness flag."""
    return f"{verdict.label} ({FRAGILE})" if fragile else verdict.label
