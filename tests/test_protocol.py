"""The capacity protocol, the verdict primitives and the scipy-based statistics on small synthetic frames."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from kvshift_lens.report import protocol as P
from kvshift_lens.report import stats as S
from kvshift_lens.report import verdicts as V


def curve(run: str, accs: list[float], every: int = 100, **config) -> list[dict]:
    """Tidy rows of one run: accuracy at steps 0, every, 2·every, ..."""
    return [{"run": run, "step": i * every, "induction_acc": a, **config} for i, a in enumerate(accs)]


FLAT = [0.1, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]  # plateaued below 0.9
RISING = [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.2, 0.4, 0.6]  # still improving at the end
WIN = [0.1, 0.5, 0.95]  # reaches 0.9 at step 200 (and stops, as with train.stop_at)


# --------------------------------------------------------------------------- runs


def test_a_run_succeeds_plateaus_or_is_censored():
    rows = curve("a", WIN) + curve("b", FLAT) + curve("c", RISING)
    out = P.run_outcomes(pd.DataFrame(rows), []).set_index("run")
    assert out.loc["a", "outcome"] == V.SUCCESS and out.loc["a", "steps_to_threshold"] == 200
    assert out.loc["b", "outcome"] == V.FAILURE and out.loc["b", "gain_last"] == pytest.approx(0.0)
    assert out.loc["c", "outcome"] == V.CENSORED and out.loc["c", "censored"]
    assert math.isnan(out.loc["c", "steps_to_threshold"]) and out.loc["c", "final_step"] == 1000


def test_plateau_gain_is_the_running_maximum_over_the_last_fifth_of_the_steps():
    noisy = [0.1, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.29, 0.305]  # +0.005 in the window: plateaued
    late = noisy[:-1] + [0.32]  # +0.02: still improving
    out = P.run_outcomes(pd.DataFrame(curve("n", noisy) + curve("l", late)), []).set_index("run")
    assert out.loc["n", "outcome"] == V.FAILURE and out.loc["l", "outcome"] == V.CENSORED
    strict = P.run_outcomes(pd.DataFrame(curve("n", noisy)), [], P.Protocol(plateau_gain=0.001))
    assert strict.outcome.item() == V.CENSORED


def test_a_diverged_run_is_a_failure_not_censored():
    rows = [dict(r, status="diverged") for r in curve("d", RISING[:-1] + [float("nan")])]
    out = P.run_outcomes(pd.DataFrame(rows), [])
    assert out.outcome.item() == V.FAILURE and out.final_step.item() == 900  # the NaN evaluation is dropped


def test_a_run_too_short_to_judge_a_plateau_is_censored():
    out = P.run_outcomes(pd.DataFrame(curve("x", [0.1])), [])
    assert out.outcome.item() == V.CENSORED


# --------------------------------------------------------------------------- cells

LRS = (1e-3, 3e-3, 1e-2)


def cell_rows(cell: dict, seed: int, curves_by_lr: dict[float, list[float]]) -> list[dict]:
    return [r for lr, accs in curves_by_lr.items()
            for r in curve(f"{cell}-{seed}-{lr}", accs, **cell, seed=seed, lr=lr)]


def results(rows: list[dict], cell_keys=("arch", "width")) -> pd.DataFrame:
    runs = P.run_outcomes(pd.DataFrame(rows), [*cell_keys, "lr", "seed"], P.Protocol(lr="lr"))
    return P.cell_results(runs, list(cell_keys), P.Protocol(lr="lr"))


def test_a_cell_is_judged_at_its_best_learning_rate():
    rows = cell_rows({"arch": "kv", "width": 8}, 0, {1e-3: FLAT, 3e-3: WIN, 1e-2: [0.1, 0.2, 0.92]})
    best = results(rows).iloc[0]
    assert best.outcome == V.SUCCESS and best.lr == 3e-3  # 3e-3 reaches 0.9 at step 200, 1e-2 also at 200: higher best
    assert best.n_lrs == 3 and best.lr_span == pytest.approx(10) and best.lr_at_edge == False  # noqa: E712
    assert best.event and best.time == 200


def test_without_a_success_the_best_runs_plateau_decides_failure_or_censoring():
    failed = results(cell_rows({"arch": "va", "width": 8}, 0, {lr: FLAT for lr in LRS})).iloc[0]
    assert failed.outcome == V.FAILURE and not failed.event and failed.time == 1000
    open_ = results(cell_rows({"arch": "va", "width": 8}, 0, {1e-3: FLAT, 3e-3: RISING, 1e-2: FLAT})).iloc[0]
    assert open_.outcome == V.CENSORED and open_.lr == 3e-3  # RISING ends highest


def test_lr_grid_violations_flag_too_few_or_too_close_learning_rates():
    ok = results(cell_rows({"arch": "kv", "width": 8}, 0, {lr: WIN for lr in LRS}))
    few = results(cell_rows({"arch": "kv", "width": 8}, 0, {1e-3: WIN, 1e-2: WIN}))
    close = results(cell_rows({"arch": "kv", "width": 8}, 0, {1e-3: WIN, 2e-3: WIN, 3e-3: WIN}))
    assert P.lr_grid_violations(ok).empty
    assert len(P.lr_grid_violations(few)) == 1 and len(P.lr_grid_violations(close)) == 1


def test_cell_status_needs_two_thirds_of_seeds_and_counts_censored_seeds_as_open():
    def status(curves: list[list[float]]) -> str:
        rows = [r for s, c in enumerate(curves) for r in cell_rows({"arch": "kv", "width": 8}, s, {lr: c for lr in LRS})]
        return P.cell_status(results(rows), ["arch", "width"]).status.item()

    assert status([WIN, WIN, FLAT]) == V.SUCCESS
    assert status([WIN, FLAT, FLAT]) == V.FAILURE
    assert status([WIN, RISING, FLAT]) == V.CENSORED


def test_another_study_passes_its_own_cell_keys():
    rows = [r for mixer in ("conv", "attn") for s in range(3)
            for r in cell_rows({"mixer": mixer, "task": "mqar", "width": 8}, s, {lr: WIN if mixer == "attn" else FLAT
                                                                                    for lr in LRS})]
    res = results(rows, ("mixer", "task", "width"))
    status = P.cell_status(res, ["mixer", "task", "width"]).set_index("mixer")
    assert status.loc["attn", "status"] == V.SUCCESS and status.loc["conv", "status"] == V.FAILURE


# --------------------------------------------------------------------------- frontier


def status_table(by_width: dict[int, str], **family) -> pd.DataFrame:
    return pd.DataFrame([{**family, "d_model": w, "status": s} for w, s in by_width.items()])


def test_frontier_statuses():
    S_, F_, C_ = V.SUCCESS, V.FAILURE, V.CENSORED
    cases = {"found": {4: F_, 8: S_, 16: S_}, "upper bound": {4: C_, 8: F_, 16: S_},
             "censored": {4: F_, 8: C_, 16: F_}, "none": {4: F_, 8: F_, 16: F_}}
    table = pd.concat([status_table(w, fam=name) for name, w in cases.items()])
    fr = P.frontier(table, ["fam"]).set_index("fam")
    assert fr.loc["found", "frontier"] == 8 and fr.loc["found", "frontier_status"] == P.FOUND
    assert fr.loc["upper bound", "frontier_status"] == P.UPPER_BOUND and fr.loc["upper bound", "lo"] == 4
    assert fr.loc["censored", "frontier_status"] == V.CENSORED and fr.loc["censored", "hi"] == math.inf
    assert fr.loc["none", "frontier_status"] == P.NONE and fr.loc["none", "lo"] > 16
    assert list(fr.text) == ["≥ 8 (censored)", "8", "> 16", "≤ 16"]


@pytest.mark.parametrize("by_length,trend", [
    ({16: {4: "f", 8: "s"}, 64: {4: "f", 8: "f", 16: "s"}}, P.GROWS),
    ({16: {4: "f", 8: "f", 16: "s"}, 64: {4: "f", 8: "s"}}, P.SHRINKS),
    ({16: {4: "f", 8: "s"}, 64: {4: "f", 8: "s"}}, P.FLAT),
    ({16: {4: "c", 8: "s"}, 64: {4: "f", 8: "s"}}, P.UNDETERMINED),
    ({16: {4: "f", 8: "f", 16: "f"}, 64: {4: "f", 8: "s"}}, P.SHRINKS),  # never reached at 16, found at 64
])
def test_frontier_trend_along_length(by_length, trend):
    code = {"f": V.FAILURE, "s": V.SUCCESS, "c": V.CENSORED}
    table = pd.concat([status_table({w: code[s] for w, s in widths.items()}, arch="kv", seq_len=L)
                       for L, widths in by_length.items()])
    fr = P.frontier(table, ["arch", "seq_len"])
    assert P.frontier_trend(fr, ["arch"], "seq_len").trend.item() == trend


# --------------------------------------------------------------------------- verdict primitives


@pytest.mark.parametrize("lo,hi,expected", [(0.1, 0.5, V.REPRODUCED), (-0.3, 0.02, V.NOT_REPRODUCED),
                                            (-0.1, 0.3, V.INCONCLUSIVE), (math.nan, math.nan, V.INCONCLUSIVE)])
def test_effect_outcome(lo, hi, expected):
    assert V.effect_outcome(lo, hi, margin=0.05) == expected


@pytest.mark.parametrize("p_claim,p_reverse,expected", [(0.01, 0.99, V.REPRODUCED), (0.99, 0.01, V.NOT_REPRODUCED),
                                                        (0.3, 0.7, V.INCONCLUSIVE), (math.nan, math.nan, V.INCONCLUSIVE)])
def test_one_sided_outcome(p_claim, p_reverse, expected):
    assert V.one_sided_outcome(p_claim, p_reverse) == expected


@pytest.mark.parametrize("outcomes,learns,cannot", [
    (["success", "success", "failure"], V.REPRODUCED, V.NOT_REPRODUCED),
    (["success", "failure", "failure"], V.NOT_REPRODUCED, V.NOT_REPRODUCED),
    (["success", "censored", "failure"], V.INCONCLUSIVE, V.NOT_REPRODUCED),
    (["failure", "failure", "failure"], V.NOT_REPRODUCED, V.REPRODUCED),
    (["failure", "censored", "failure"], V.NOT_REPRODUCED, V.INCONCLUSIVE),
    ([], V.INCONCLUSIVE, V.INCONCLUSIVE),
])
def test_learns_and_cannot_learn(outcomes, learns, cannot):
    assert V.learns_outcome(outcomes) == learns and V.cannot_learn_outcome(outcomes) == cannot


@pytest.mark.parametrize("parts,expected", [
    ([V.REPRODUCED, V.REPRODUCED], V.REPRODUCED), ([V.REPRODUCED, V.INCONCLUSIVE], V.PARTLY),
    ([V.REPRODUCED, V.NOT_REPRODUCED], V.PARTLY), ([V.NOT_REPRODUCED, V.INCONCLUSIVE], V.NOT_REPRODUCED),
    ([V.INCONCLUSIVE, V.INCONCLUSIVE], V.INCONCLUSIVE), ([], V.INCONCLUSIVE),
])
def test_combine(parts, expected):
    assert V.combine(parts) == expected


@pytest.mark.parametrize("parts,expected", [
    ([V.REPRODUCED, V.REPRODUCED], V.REPRODUCED), ([V.REPRODUCED, V.NOT_REPRODUCED], V.NOT_REPRODUCED),
    ([V.REPRODUCED, V.INCONCLUSIVE], V.INCONCLUSIVE), ([], V.INCONCLUSIVE),
])
def test_all_of_is_a_conjunction(parts, expected):
    assert V.all_of(parts) == expected


def test_a_verdict_outside_the_vocabulary_is_rejected():
    with pytest.raises(ValueError, match="not one of"):
        V.Verdict("partly", "rule", "baseline")
    assert V.Verdict(V.INCONCLUSIVE, "r", "b", reason="no power").label == "inconclusive (no power)"


# --------------------------------------------------------------------------- statistics


def test_mean_interval_is_students_t():
    x = [0.2, 0.5, 0.6, 0.9]
    mean, lo, hi = S.mean_ci(x)
    ref = sps.t.interval(0.95, 3, loc=np.mean(x), scale=sps.sem(x))
    assert (lo, hi) == pytest.approx(ref) and mean == pytest.approx(0.55)
    assert S.mean_ci([0.4, 0.4]) == (0.4, 0.4, 0.4)
    assert math.isnan(S.mean_ci([0.4])[1]) and math.isnan(S.mean_ci([])[0])


def test_a_three_seed_interval_is_wider_than_the_percentile_bootstrap_was():
    # the percentile bootstrap of 3 values takes at most 10 distinct means and under-covers; t does not
    x = np.array([0.1, 0.5, 0.9])
    _, lo, hi = S.mean_ci(x)
    assert lo < x.min() and hi > x.max()


def test_paired_and_welch_difference_intervals():
    a, b = [1.0, 2.0, 3.0], [0.5, 1.4, 2.6]
    d, lo, hi = S.diff_ci(a, b)
    assert (lo, hi) == pytest.approx(sps.t.interval(0.95, 2, loc=0.5, scale=sps.sem(np.subtract(a, b))))
    d2, lo2, hi2 = S.diff_ci(a, b, paired=False)
    ci = sps.ttest_ind(a, b, equal_var=False).confidence_interval()
    assert d2 == pytest.approx(d) and (lo2, hi2) == pytest.approx((ci.low, ci.high))


def test_wilson_interval_comes_from_binomtest():
    assert S.proportion_ci(3, 5) == pytest.approx(tuple(sps.binomtest(3, 5).proportion_ci(method="wilson")))
    lo, hi = S.proportion_ci(0, 3)
    assert lo == pytest.approx(0) and 0 < hi < 1
    assert all(math.isnan(v) for v in S.proportion_ci(0, 0))


def test_only_discordant_pairs_enter_the_exact_test():
    a = [True] * 7 + [False] * 2 + [True] * 4 + [False] * 5  # the issue's example: 7 vs 2 discordant
    b = [False] * 7 + [True] * 2 + [True] * 4 + [False] * 5
    t = S.discordant_test(a, b)
    assert (t.a_only, t.b_only, t.both, t.neither) == (7, 2, 4, 5)
    assert t.p == pytest.approx(sps.binomtest(7, 9, 0.5, alternative="greater").pvalue)
    assert 0.05 < t.p < 0.1
    assert math.isnan(S.discordant_test([True], [True]).p)
    with pytest.raises(ValueError, match="equal lengths"):
        S.discordant_test([True], [True, False])


def test_logrank_treats_runs_that_never_reach_the_threshold_as_censored():
    fast = S.logrank_test([100, 150, 200, 250], [True] * 4, [900, 1000, 2000, 2000], [True, True, False, False])
    slow = S.logrank_test([900, 1000, 2000, 2000], [True, True, False, False], [100, 150, 200, 250], [True] * 4)
    assert fast.p < 0.05 < slow.p and fast.events_b == 2
    assert math.isnan(S.logrank_test([2000], [False], [2000], [False]).p)
    with pytest.raises(ValueError, match="alternative"):
        S.logrank_test([1], [True], [2], [True], "less")
