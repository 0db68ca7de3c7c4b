"""Holm's adjustment within each claim's family of tests (kvshift_lens.report.multiplicity) and robustness of a
verdict to the protocol's thresholds (kvshift_lens.report.robustness), on synthetic verdicts."""

import math

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests

from kvshift_lens.report import multiplicity as M
from kvshift_lens.report import robustness as R
from kvshift_lens.report.protocol import Protocol
from kvshift_lens.report.verdicts import INCONCLUSIVE, NOT_REPRODUCED, PARTLY, REPRODUCED, Verdict


def part(outcome: str, p: float = math.nan, p_reverse: float = math.nan) -> Verdict:
    return Verdict(outcome, "rule", "baseline", p=p, p_reverse=p_reverse)


def test_holm_is_statsmodels_and_leaves_missing_p_values_out_of_the_family():
    got = M.holm([0.01, math.nan, 0.04, 0.03])
    ref = multipletests([0.01, 0.04, 0.03], method="holm")[1]
    assert got[[0, 2, 3]] == pytest.approx(ref) and math.isnan(got[1])


def test_a_reproduced_part_that_no_longer_rejects_after_holm_becomes_inconclusive():
    parts = [("a", part(REPRODUCED, p=0.0058)), ("b", part(REPRODUCED, p=0.03)), ("c", part(REPRODUCED)),
             ("d", part(REPRODUCED, p=0.04))]
    verdict = M.combined(parts, "rule", "baseline")
    a, b, c, d = (v for _, v in parts)
    assert a.outcome == REPRODUCED and a.p_adjusted == pytest.approx(0.0174)
    assert b.outcome == d.outcome == INCONCLUSIVE and b.p_adjusted == pytest.approx(0.06)
    assert b.reason == M.HOLM_REASON and b.raw_outcome == REPRODUCED
    assert c.outcome == REPRODUCED and math.isnan(c.p_adjusted)  # decided without a test: untouched
    assert verdict.outcome == PARTLY and verdict.raw_outcome == REPRODUCED


def test_a_not_reproduced_part_is_adjusted_on_its_reverse_test():
    parts = [("a", part(NOT_REPRODUCED, p=0.9, p_reverse=0.04)), ("b", part(NOT_REPRODUCED, p=0.9, p_reverse=0.03))]
    assert M.combined(parts, "r", "b").outcome == INCONCLUSIVE
    kept = [("a", part(NOT_REPRODUCED, p_reverse=0.001)), ("b", part(INCONCLUSIVE, p=0.5, p_reverse=0.5))]
    assert M.combined(kept, "r", "b").outcome == NOT_REPRODUCED


def test_two_parts_backed_by_the_same_test_count_once_and_equal_p_values_of_different_tests_twice():
    shared = [("faster", part(REPRODUCED, p=0.03)), ("later", part(REPRODUCED, p=0.03))]
    for _, v in shared:
        v.test = "log-rank kvshift 1L vs vanilla 2L"
    M.adjust(shared)
    assert all(v.outcome == REPRODUCED and v.p_adjusted == pytest.approx(0.03) for _, v in shared)
    two = [("share", part(REPRODUCED, p=1 / 32)), ("distance", part(REPRODUCED, p=1 / 32))]  # exact tests tie often
    M.adjust(two)
    assert all(v.outcome == INCONCLUSIVE and v.p_adjusted == pytest.approx(1 / 16) for _, v in two)


def test_every_outcome_survives_an_adjustment_that_does_not_bite():
    for outcome, p, pr in ((REPRODUCED, 0.001, math.nan), (NOT_REPRODUCED, math.nan, 0.001),
                           (INCONCLUSIVE, 0.5, 0.5)):
        parts = [("x", part(outcome, p, pr))]
        assert M.combined(parts, "r", "b").outcome == outcome


def test_count_table_counts_verdicts_before_and_after_holm_and_fragile_as_inconclusive():
    v = {"a": Verdict(INCONCLUSIVE, "r", "b", unadjusted=REPRODUCED), "b": Verdict(REPRODUCED, "r", "b"),
         "c": Verdict(NOT_REPRODUCED, "r", "b")}
    table = M.count_table(v, {"b": True}).set_index("verdict")
    assert table.loc[REPRODUCED].tolist() == [2, 1, 0]
    assert table.loc[INCONCLUSIVE].tolist() == [0, 1, 2]
    assert table.loc[NOT_REPRODUCED].tolist() == [1, 1, 1]


def test_robustness_varies_the_success_threshold_and_the_plateau_gain():
    names = list(R.variants(Protocol()))
    assert names == ["base", "threshold 0.85", "threshold 0.95", "plateau gain 0.005", "plateau gain 0.02"]


def test_a_verdict_that_turns_on_a_threshold_is_fragile_and_counts_as_inconclusive():
    def judge(p: Protocol) -> dict[str, Verdict]:
        best = 0.93  # succeeds at 0.85 and 0.90, not at 0.95
        return {"learns": Verdict(REPRODUCED if best >= p.threshold else NOT_REPRODUCED, "r", "b"),
                "steady": Verdict(NOT_REPRODUCED, "r", "b")}

    table = R.robustness(judge, Protocol()).set_index("verdict")
    assert table.loc["learns", "fragile"] and not table.loc["steady", "fragile"]
    assert table.loc["learns", "threshold 0.95"] == NOT_REPRODUCED
    assert R.summary_outcome(REPRODUCED, True) == INCONCLUSIVE and R.summary_outcome(REPRODUCED, False) == REPRODUCED
    assert R.label(Verdict(REPRODUCED, "r", "b"), True) == "reproduced (fragile)"


def test_the_plateau_variant_moves_a_borderline_run_between_failure_and_censored():
    from kvshift_lens.report.protocol import run_outcomes

    steps = np.arange(0, 2001, 50)
    acc = 0.2 + np.random.default_rng(1).normal(0, 0.004, len(steps))
    curves = pd.DataFrame({"run": "r", "step": steps, "induction_acc": acc})
    labels = {name: run_outcomes(curves, [], p).outcome.item() for name, p in R.variants(Protocol()).items()}
    assert labels["plateau gain 0.005"] == "censored" and labels["plateau gain 0.02"] == "failure"
