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


FLAT = [0.1, 0.2] + [0.3] * 19  # plateaued below 0.9: 2,000 steps, the last 1,000 flat
RISING = [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.2, 0.4, 0.6]  # still improving at the end
WIN = [0.1, 0.5, 0.95]  # reaches 0.9 at step 200 (and stops, as with train.stop_at)


# --------------------------------------------------------------------------- runs


def test_a_run_succeeds_plateaus_or_is_censored():
    rows = curve("a", WIN) + curve("b", FLAT) + curve("c", RISING)
    out = P.run_outcomes(pd.DataFrame(rows), []).set_index("run")
    assert out.loc["a", "outcome"] == V.SUCCESS and out.loc["a", "steps_to_threshold"] == 200
    assert out.loc["b", "outcome"] == V.FAILURE and out.loc["b", "gain_last"] == pytest.approx(0.0)
    assert out.loc["b", "projected_gain"] < 0.01
    assert out.loc["c", "outcome"] == V.CENSORED and out.loc["c", "censored"]
    assert math.isnan(out.loc["c", "steps_to_threshold"]) and out.loc["c", "final_step"] == 1000


def test_the_plateau_rule_weighs_the_tail_slope_against_the_runs_noise():
    n = 41  # 2,000 steps, evaluated every 50
    noise = np.random.default_rng(0).normal(0, 0.002, n)
    flat = list(0.3 + noise)  # flat within noise: plateaued
    late = list(0.3 + noise + np.clip(np.arange(n) - 34, 0, None) * 0.005)  # +0.03 over the last 300 steps
    out = P.run_outcomes(pd.DataFrame(curve("n", flat, 50) + curve("l", late, 50)), []).set_index("run")
    assert out.loc["n", "outcome"] == V.FAILURE and out.loc["l", "outcome"] == V.CENSORED
    strict = P.run_outcomes(pd.DataFrame(curve("n", flat, 50)), [], P.Protocol(plateau_gain=0.001))
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


def test_a_cell_seed_fails_only_when_every_learning_rate_plateaued():
    failed = results(cell_rows({"arch": "va", "width": 8}, 0, {lr: FLAT for lr in LRS})).iloc[0]
    assert failed.outcome == V.FAILURE and not failed.event and failed.time == 2000
    open_ = results(cell_rows({"arch": "va", "width": 8}, 0, {1e-3: FLAT, 3e-3: RISING, 1e-2: FLAT})).iloc[0]
    assert open_.outcome == V.CENSORED and open_.lr == 3e-3


def test_a_censored_learning_rate_keeps_the_cell_seed_open_even_below_a_higher_plateau():
    high_flat = [0.1, 0.5] + [0.6] * 19  # plateaued at 0.6
    low_rising = RISING  # ends at 0.6 too but still rising; a lower best would not matter either
    best = results(cell_rows({"arch": "va", "width": 8}, 0, {1e-3: high_flat, 3e-3: [a / 2 for a in low_rising],
                                                               1e-2: high_flat})).iloc[0]
    assert best.outcome == V.CENSORED and best.lr == 3e-3


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
             "censored": {4: F_, 8: C_, 16: F_}, "none": {4: F_, 8: F_, 16: F_}, "grid minimum": {4: S_, 8: S_},
             "bounded": {4: F_, 8: C_, 16: S_}}
    table = pd.concat([status_table(w, fam=name) for name, w in cases.items()])
    fr = P.frontier(table, ["fam"]).set_index("fam")
    assert fr.loc["found", "frontier"] == 8 and fr.loc["found", "frontier_status"] == P.FOUND
    assert fr.loc["upper bound", "frontier_status"] == P.UPPER_BOUND and fr.loc["upper bound", "lo"] == 0  # below the grid
    assert fr.loc["bounded", "frontier_status"] == P.UPPER_BOUND and fr.loc["bounded", "lo"] == 8
    assert fr.loc["censored", "frontier_status"] == V.CENSORED and fr.loc["censored", "hi"] == math.inf
    assert fr.loc["none", "frontier_status"] == P.NONE and fr.loc["none", "lo"] > 16
    assert fr.loc["grid minimum", "frontier_status"] == P.UPPER_BOUND and fr.loc["grid minimum", "lo"] == 0
    assert list(fr.text) == ["≤ 16", "≥ 8 (censored)", "8", "≤ 4", "> 16", "≤ 16"]


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


def test_mean_interval_of_an_unbounded_quantity_is_students_t():
    x = [0.2, 0.5, 0.6, 0.9]
    mean, lo, hi = S.mean_ci(x)
    ref = sps.t.interval(0.95, 3, loc=np.mean(x), scale=sps.sem(x))
    assert (lo, hi) == pytest.approx(ref) and mean == pytest.approx(0.55)
    assert math.isnan(S.mean_ci([0.4])[1]) and math.isnan(S.mean_ci([])[0])


def test_identical_values_get_no_interval_rather_than_a_zero_width_one():
    mean, lo, hi = S.mean_ci([0.4, 0.4, 0.4, 0.4, 0.4, 0.4], bounds=(0, 1))
    assert mean == pytest.approx(0.4) and math.isnan(lo) and math.isnan(hi)
    assert V.effect_outcome(lo, hi) == V.INCONCLUSIVE and S.fmt_ci(mean, lo, hi) == "0.40 (no interval)"


def test_a_bounded_small_sample_gets_the_exact_sign_flip_interval_inside_its_bounds():
    three = [0.9, 0.95, 1.0]  # fig8's old t-interval of such values: [0.83, 1.07]
    assert S.mean_ci(three, bounds=(0, 1))[1:] == (0.0, 1.0)  # 2^3 sign patterns: no 95 % interval narrower
    six = np.array([0.1, 0.25, 0.3, 0.45, 0.5, 0.7])
    mean, lo, hi = S.mean_ci(six, bounds=(-1, 1))
    assert (lo, hi) == (six.min(), six.max())  # k = 1 of 63 subset means from each end: 1 − 2/64 ≥ 95 %
    bimodal = [1.0, 1.0, -0.1, 1.0, 0.95, -0.05]  # fig1b-like: t would run past 1
    assert -1 <= S.mean_ci(bimodal, bounds=(-1, 1))[1] and S.mean_ci(bimodal, bounds=(-1, 1))[2] <= 1
    assert S.interval_method(6, (0, 1)).startswith("exact sign-flip")
    assert S.interval_method(12, (0, 1)) == "Student-t interval clipped to the bounds"


def test_the_sign_flip_interval_inverts_the_exact_sign_flip_test():
    d = np.array([0.12, -0.03, 0.2, 0.31, 0.07, 0.18, 0.02])
    _, lo, hi = S.signflip_ci(d, level=0.90)
    assert S.signflip_test(d, "greater", shift=lo - 1e-9) < 0.05 + 1e-9  # just below lo: rejected at 5 %
    assert S.signflip_test(d, "greater", shift=lo + 1e-6) > 0.05  # inside: not rejected
    assert S.signflip_test(d, "less", shift=hi + 1e-9) < 0.05 + 1e-9


def test_sign_flip_test_is_exact_and_needs_five_pairs_to_reject_at_five_percent():
    assert S.signflip_test([0.2, 0.3, 0.1]) == pytest.approx(1 / 8)
    assert S.signflip_test([0.2, 0.3, 0.1, 0.4, 0.25]) == pytest.approx(1 / 32)
    assert S.signflip_test([-0.2, -0.3, -0.1, -0.4, -0.25], "less") == pytest.approx(1 / 32)
    assert math.isnan(S.signflip_test([]))


def test_clopper_pearson_interval_is_exact_and_never_zero_width():
    lo, hi = S.proportion_ci(0, 16, method="exact")
    assert lo == 0 and hi == pytest.approx(1 - 0.025 ** (1 / 16))
    assert S.proportion_ci(9, 128, method="exact")[0] > 0.02


def test_kaplan_meier_median_counts_runs_that_never_reach_the_threshold_as_censored():
    # vanilla 2L d16: one seed at 1,950, two never by 2,000 — the old median of successes read 1,950
    assert math.isnan(S.km_median([1950, 2000, 2000], [True, False, False]))
    assert S.km_median([100, 200, 300, 2000], [True, True, True, False]) == 200
    assert math.isnan(S.km_median([2000], [False]))


def test_a_three_seed_t_interval_is_wider_than_the_percentile_bootstrap_was():
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


def test_paired_ordering_of_censored_times_decides_only_what_the_censoring_allows():
    a_first, b_first = S.sooner_in_pairs([100, 500, 300, 2000, 400, 700], [True, True, True, False, True, False],
                                         [200, 200, 2000, 2000, 400, 500], [True, True, False, False, False, True])
    # a sooner; b sooner; a before b's censoring; both censored; a's event at b's censoring; b before a's censoring
    assert a_first.tolist() == [True, False, True, False, True, False]
    assert b_first.tolist() == [False, True, False, False, False, True]
    late_a, _ = S.sooner_in_pairs([900], [True], [400], [False])  # b censored before a's event: undecided
    assert not late_a.any()


def test_logrank_treats_runs_that_never_reach_the_threshold_as_censored():
    fast = S.logrank_test([100, 150, 200, 250], [True] * 4, [900, 1000, 2000, 2000], [True, True, False, False])
    slow = S.logrank_test([900, 1000, 2000, 2000], [True, True, False, False], [100, 150, 200, 250], [True] * 4)
    assert fast.p < 0.05 < slow.p and fast.events_b == 2
    assert math.isnan(S.logrank_test([2000], [False], [2000], [False]).p)
    with pytest.raises(ValueError, match="alternative"):
        S.logrank_test([1], [True], [2], [True], "less")
