"""Every verdict rule of the report, on small synthetic frames, driven to every outcome it can return."""

import math

import numpy as np
import pandas as pd
import pytest

from kvshift_lens.report import claims as C
from kvshift_lens.report import phase as PH
from kvshift_lens.report import protocol as P
from kvshift_lens.report.tables import QUADRANTS
from kvshift_lens.report.verdicts import INCONCLUSIVE, NOT_REPRODUCED, PARTLY, REPRODUCED

WIN = [0.05, 0.5, 0.95]  # reaches 90 % at step 200
LATE = [0.05] * 8 + [0.5, 0.95]  # reaches 90 % at step 900
FLAT = [0.05, 0.1, 0.12] + [0.12] * 28  # plateaus below 90 % (3,000 steps: enough flat tail to tell from noise)
RISING = [0.05] * 8 + [0.2, 0.5]  # still improving when its budget ends


def jitter(accs: list[float], seed: int) -> list[float]:
    return [min(1.0, a + 0.003 * ((seed * 7 + i) % 3)) for i, a in enumerate(accs)]


def curves(spec: dict[str, list[list[float]]], extra: dict | None = None, every: int = 100) -> pd.DataFrame:
    """Curves table: label -> one accuracy curve per seed (plus the config columns `setup_line` reads)."""
    rows = []
    for label, per_seed in spec.items():
        for seed, accs in enumerate(per_seed):
            for i, a in enumerate(jitter(accs, seed)):
                rows.append({"run": f"{label}/{seed}", "seed": seed, "label": label, "step": i * every,
                             "induction_acc": a, **(extra or {}).get(label, {})})
    df = pd.DataFrame(rows)
    defaults = {"model.d_model": 64, "n_params": 1000, "task.name": "induction", "task.d_vocab": 64,
                "task.seq_len": 32, "train.steps": 1000, "train.lr": 3e-3, "model.arch": "kvshift"}
    return df.assign(**{k: df[k] if k in df else v for k, v in defaults.items()})


# --------------------------------------------------------------------------- Fig 1a

FIG1A = {
    REPRODUCED: {"kvshift 1L": [WIN] * 3, "vanilla 1L": [FLAT] * 3, "vanilla 2L": [LATE] * 3},
    PARTLY: {"kvshift 1L": [WIN] * 3, "vanilla 1L": [FLAT] * 3, "vanilla 2L": [LATE] * 3, "vanilla 4L": [RISING] * 3},
    NOT_REPRODUCED: {"kvshift 1L": [FLAT] * 3, "vanilla 1L": [WIN] * 3, "vanilla 2L": [WIN] * 3},
    INCONCLUSIVE: {"kvshift 1L": [RISING] * 3, "vanilla 1L": [RISING] * 3},
}


@pytest.mark.parametrize("expected", list(FIG1A))
def test_fig1a_rule_returns_each_outcome(expected):
    finding = C.find_fig1a(curves(FIG1A[expected]))
    assert finding.verdict.outcome == expected
    assert finding.verdict.rule and finding.verdict.baseline


def test_fig1a_an_untrained_deeper_vanilla_is_not_tested_rather_than_failed():
    parts = dict(C.find_fig1a(curves(FIG1A[PARTLY])).parts)
    assert parts["vanilla 4L learns, with a delay"].label == "inconclusive (not tested: censored)"
    assert parts["vanilla 2L learns, with a delay"].outcome == REPRODUCED


def test_fig1a_faster_needs_the_log_rank_test_not_a_median():
    tie = curves({"kvshift 1L": [WIN, LATE, WIN], "vanilla 1L": [FLAT] * 3, "vanilla 2L": [LATE, WIN, LATE]})
    parts = dict(C.find_fig1a(tie).parts)
    assert parts["1L KV shift faster than 2L vanilla"].outcome == INCONCLUSIVE


# --------------------------------------------------------------------------- Fig 8


@pytest.mark.parametrize("spec,must_fail,expected,reason", [
    ({"shift kv": [WIN] * 3, "shift k": [WIN] * 3, "vanilla 1L": [FLAT] * 3}, True, REPRODUCED, ""),
    ({"shift kv": [WIN] * 3, "shift v": [FLAT] * 3, "vanilla 1L": [FLAT] * 3}, True, PARTLY, ""),
    ({"shift kv": [FLAT] * 3, "shift v": [FLAT] * 3, "vanilla 1L": [WIN] * 3}, True, NOT_REPRODUCED, ""),
    ({"shift kv": [RISING] * 3, "vanilla 1L": [RISING] * 3}, True, INCONCLUSIVE, ""),
    ({"window=1": [WIN] * 3, "window=2": [WIN] * 3, "vanilla 1L": [WIN] * 3}, False, INCONCLUSIVE,
     "the vanilla control learns too"),
])
def test_fig8_rule_returns_each_outcome(spec, must_fail, expected, reason):
    verdict = C.find_variants("claim", (), "vanilla 1L", must_fail)(curves(spec)).verdict
    assert verdict.outcome == expected and verdict.reason == reason


def test_fig8_judges_a_value_only_shift_against_the_expectation_the_family_study_uses():
    from kvshift_lens.report import family as F

    spec = {"shift kv": [WIN] * 3, "shift k": [WIN] * 3, "shift v": [FLAT] * 3, "vanilla 1L": [FLAT] * 3}
    finding = C.find_variants("claim", (), "vanilla 1L", True, cannot=("shift v",))(curves(spec))
    value_only = dict(finding.parts)["shift v cannot (value-only mixing)"]
    assert finding.verdict.outcome == REPRODUCED and value_only.outcome == REPRODUCED
    learned = C.find_variants("claim", (), "vanilla 1L", True, cannot=("shift v",))(curves({**spec, "shift v": [WIN] * 3}))
    assert dict(learned.parts)["shift v cannot (value-only mixing)"].outcome == NOT_REPRODUCED
    expectation = C.EXPECTATIONS["value_only"].text
    fam = pd.DataFrame([{"task": "induction", "model.n_layers": "1", "arm": a, "key_reach": k, "value_reach": 1,
                         "widest": 64, "widest_outcomes": "0/3", "widest_best_acc": 0.2, "text": "8",
                         "learns": REPRODUCED, "cannot_learn": c} for a, k, c in
                        (("kv_shift", 1, NOT_REPRODUCED), ("kv_shift[v]", 0, REPRODUCED))])
    assert expectation in value_only.baseline and expectation in F.value_only_verdict(fam, "induction").baseline


# --------------------------------------------------------------------------- Fig 1b


def fig1b(kv: list[list[float]], va: list[list[float]]) -> pd.DataFrame:
    """kv / va: per seed, the curve at each of 3 learning rates (same curve reused across lrs unless given)."""
    frames = []
    for label, per_seed in (("kvshift 1L", kv), ("vanilla 2L", va)):
        for lr in (1e-3, 3e-3, 1e-2):
            t = curves({label: per_seed if lr == 3e-3 else [FLAT] * len(per_seed)})
            frames.append(t.assign(run=t.run + f"/{lr}", **{"train.lr": lr, "model.d_model": 8}))
    return pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize("kv,va,expected", [
    ([WIN] * 6, [FLAT] * 6, REPRODUCED),
    ([WIN] * 6, [WIN] * 6, PARTLY),  # learns, but vanilla 2L does not do worse
    ([FLAT] * 6, [WIN] * 6, NOT_REPRODUCED),
    ([RISING[:-1] + [0.3], RISING, RISING[:-1] + [0.7]] * 2, [RISING] * 6, INCONCLUSIVE),  # censored, gap unclear
])
def test_fig1b_rule_returns_each_outcome_at_the_best_learning_rate(kv, va, expected):
    finding = C.find_fig1b(fig1b(kv, va))
    assert finding.verdict.outcome == expected
    assert not finding.notes  # three learning rates spanning 10×: the protocol is met


def test_fig1b_with_three_seeds_has_no_power_and_its_interval_stays_inside_the_bounds():
    finding = C.find_fig1b(fig1b([WIN] * 3, [FLAT] * 3))
    worse = dict(finding.parts)["vanilla 2L does worse at d_model 8"]
    assert worse.outcome == INCONCLUSIVE and worse.p == pytest.approx(1 / 8)  # 3 sign flips: p ≥ 1/8
    assert "[-1.00, 1.00]" in worse.evidence[0]  # no 95 % statement narrower than the bounds at n = 3


def test_fig1b_flags_a_learning_rate_grid_that_breaks_the_protocol():
    table = fig1b([WIN] * 3, [FLAT] * 3)
    finding = C.find_fig1b(table[table["train.lr"] != 1e-2])
    assert "protocol not met" in finding.notes[0]


# --------------------------------------------------------------------------- Fig 3


def fig3(sizes: dict[str, tuple[float, float]], start: float = 0.02, noise: float = 0.01) -> pd.DataFrame:
    rows = []
    for size, finals in sizes.items():
        for arch, final in zip(("kvshift", "vanilla"), finals):
            for seed in range(6):
                acc = min(1.0, final + noise * (seed % 3 - 1) * (1 if arch == "kvshift" else -1))
                run = f"{size}/{arch}/{seed}"
                rows += [{"run": run, "seed": seed, "label": f"{arch} {size}", "size": size, "model.arch": arch,
                          "step": s, "induction_acc": a} for s, a in ((0, start), (50, acc))]
    return curves({}).iloc[:0].pipe(lambda _: pd.DataFrame(rows)).assign(
        **{"model.d_model": 4, "n_params": 1, "task.name": "ngram", "task.d_vocab": 64, "task.seq_len": 32,
           "train.steps": 50, "train.lr": 3e-3})


@pytest.mark.parametrize("sizes,expected,reason", [
    ({"2L": (0.7, 0.6)}, REPRODUCED, ""),
    ({"2L": (0.7, 0.6), "4L": (0.3, 0.6)}, PARTLY, ""),
    ({"2L": (0.4, 0.6)}, NOT_REPRODUCED, ""),
    ({"2L": (0.99, 1.0), "1L": (0.03, 0.04)}, INCONCLUSIVE, "no power"),  # ceiling and floor
])
def test_fig3_rule_returns_each_outcome_and_refuses_floor_and_ceiling(sizes, expected, reason):
    verdict = C.find_fig3(fig3(sizes)).verdict
    assert verdict.outcome == expected and verdict.reason == reason


def test_fig3_overlapping_intervals_are_inconclusive():
    assert C.find_fig3(fig3({"2L": (0.6, 0.61)}, noise=0.2)).verdict.outcome == INCONCLUSIVE


# --------------------------------------------------------------------------- hop-k


def hopk(acc: dict[tuple[str, int], float], noise: float = 0.01) -> pd.DataFrame:
    rows = [{"run": f"{lab}/{h}/{s}", "seed": s, "label": lab, "step": 100, "task.hops": h,
             "induction_acc": a + noise * (s % 3 - 1) * (1 if lab.startswith("kv") else -1)}
            for (lab, h), a in acc.items() for s in range(6)]
    return pd.DataFrame(rows).assign(**{"model.d_model": 64, "n_params": 1, "task.name": "hop_k", "task.d_vocab": 8,
                                         "task.seq_len": 16, "train.steps": 100, "train.lr": 3e-3})


@pytest.mark.parametrize("acc,expected,reason", [
    ({("kvshift 2L", 1): 0.95, ("vanilla 2L", 1): 0.7, ("kvshift 2L", 2): 0.9, ("vanilla 2L", 2): 0.4},
     REPRODUCED, ""),
    ({("kvshift 2L", 1): 0.95, ("vanilla 2L", 1): 0.7, ("kvshift 2L", 2): 0.9, ("vanilla 2L", 2): 0.7},
     PARTLY, ""),  # lower error at both, but the gap does not grow
    ({("kvshift 2L", 1): 0.6, ("vanilla 2L", 1): 0.9}, NOT_REPRODUCED, ""),
    ({("kvshift 2L", 1): 0.97, ("vanilla 2L", 1): 0.96}, INCONCLUSIVE, ""),  # both at the 95 % stop: no power
    ({("kvshift 2L", 1): 0.35, ("vanilla 2L", 1): 0.33, ("kvshift 2L", 2): 0.5, ("vanilla 2L", 2): 0.45}, INCONCLUSIVE,
     "no model learned beyond the context-free baseline"),  # 0.5 at hops 2 is below that task's baseline + margin
])
def test_hopk_rule_returns_each_outcome_and_nothing_learned_is_inconclusive(acc, expected, reason):
    finding = C.find_hopk(hopk(acc), context_free={1: 0.34, 2: 0.48})
    assert finding.verdict.outcome == expected and finding.verdict.reason == reason
    if len(acc) == 2 and min(acc.values()) > 0.95:
        assert dict(finding.parts)["2L, k=1: KV shift lower error"].label == "inconclusive (no power)"


# --------------------------------------------------------------------------- Fig 2 and Table 4


def shifts(init: list[tuple[float, float]], end: list[tuple[float, float]], runs: int = 6,
           label: str = "kvshift 1L", spread: float = 0.02) -> pd.DataFrame:
    """Per run, heads at init and end given as (α1, β1) with α2 = 1 − α1, β2 = 1 − β1 (small per-run offsets)."""
    rows = []
    for r in range(runs):
        for progress, heads in ((0.0, init), (1.0, end)):
            for h, (a1, b1) in enumerate(heads):
                a1, b1 = a1 + spread * r, b1 - spread * r
                rows.append({"run": f"{label}/{r}", "label": label, "seed": r, "step": int(progress * 100),
                             "final_step": 100, "progress": progress, "layer": 0, "head": h, "alpha1": a1,
                             "alpha2": 1 - a1, "beta1": b1, "beta2": 1 - b1})
    df = pd.DataFrame(rows)
    from kvshift_lens.report.tables import quadrant
    return df.assign(quadrant=quadrant(df))


RANDOM = [(0.3, 0.3), (0.6, 0.2), (0.2, 0.6), (0.7, 0.7)]  # one head per quadrant
CORNER = [(0.05, 0.95)] * 4  # all at the induction head (0, 1)


@pytest.mark.parametrize("init,end,expected", [
    ([(0.3, 0.3)] * 4, CORNER, REPRODUCED),
    (CORNER, [(0.3, 0.3)] * 4, NOT_REPRODUCED),
    ([(0.3, 0.3)] * 4, [(0.45, 0.55)] * 2 + [(0.3, 0.3)] * 2, PARTLY),  # 2 heads step into the corner, barely closer
])
def test_fig2_rule_returns_each_outcome(init, end, expected):
    assert C.find_fig2(shifts(init, end)).verdict.outcome == expected


def test_fig2_with_runs_that_disagree_is_inconclusive():
    a = shifts([(0.3, 0.3)] * 4, CORNER, runs=3)
    b = shifts([(0.3, 0.3)] * 4, [(0.6, 0.1)] * 4, runs=3).assign(run=lambda d: d.run + "b", seed=lambda d: d.seed + 3)
    assert C.find_fig2(pd.concat([a, b], ignore_index=True)).verdict.outcome == INCONCLUSIVE


@pytest.mark.parametrize("init,end,runs,expected", [
    ([(0.3, 0.3)] * 4, RANDOM, 6, REPRODUCED),  # one quadrant at init, all four used at the end, 18/24 heads moved
    (RANDOM, RANDOM, 10, NOT_REPRODUCED),  # all four used, but already at init: 0/40 heads moved
    ([(0.3, 0.3)] * 4, [(0.3, 0.3)] * 4, 50, NOT_REPRODUCED),  # 200 heads, one quadrant, none moved
    (RANDOM, RANDOM, 1, INCONCLUSIVE),  # 4 heads: no interval excludes either side
])
def test_table4_rule_returns_each_outcome(init, end, runs, expected):
    assert C.find_table4(shifts(init, end, runs=runs, spread=0.0)).verdict.outcome == expected


def test_table4_judges_the_papers_own_counts_as_spread_over_all_four_quadrants():
    paper = pd.Series(C.PAPER_TABLE4)
    assert C.quadrant_use(paper).outcome == REPRODUCED
    assert "chi-square p = 1" in C.paper_fit_line(paper)  # 128 heads: every expected count ≥ 5
    assert "not testable at this scale" in C.paper_fit_line(pd.Series([5, 2, 1, 5], index=QUADRANTS))


def test_no_head_moving_gives_a_non_degenerate_interval_not_a_zero_width_one():
    few, many = C.quadrant_moves(0, 16), C.quadrant_moves(0, 400)
    assert few.outcome == INCONCLUSIVE and "[0.00, 0.21]" in few.evidence[0]
    assert many.outcome == NOT_REPRODUCED


def test_table4_judges_each_model_and_combines_them():
    up = shifts([(0.3, 0.3)] * 4, RANDOM, spread=0.0)
    two = pd.concat([up, shifts(RANDOM, RANDOM, runs=10, spread=0.0, label="kvshift 2L")], ignore_index=True)
    assert C.find_table4(two).verdict.outcome == PARTLY
    assert set(QUADRANTS) >= set(two.quadrant)


# --------------------------------------------------------------------------- phase diagram


def cells(spec: dict[tuple[str, int], dict[int, list[str]]], seq_len: int = 32) -> pd.DataFrame:
    """(arch, depth) -> {width: per-seed outcome}; success at step 500 (1L KV shift) or 1500, else censored at 2000."""
    rows = []
    for (arch, layers), widths in spec.items():
        for d, outcomes in widths.items():
            for seed, o in enumerate(outcomes):
                t = (500 if arch == "kvshift" else 1500) if o == "success" else 2000
                rows.append({"arch": arch, "n_layers": layers, "n_heads": 1, "seq_len": seq_len, "d_model": d,
                             "seed": seed, "outcome": o, "time": float(t), "event": o == "success"})
    return pd.DataFrame(rows)


S_, F_, C_ = "success", "failure", "censored"
WIDTHS = (8, 16, 32, 64)


@pytest.mark.parametrize("kv,v1,v2,expected", [
    ({d: [S_] * 3 for d in WIDTHS}, {d: [F_] * 3 for d in WIDTHS}, {d: [F_] * 3 for d in WIDTHS}, REPRODUCED),
    ({d: [S_] * 3 for d in WIDTHS}, {d: [F_] * 3 for d in WIDTHS}, {d: [S_] * 3 for d in WIDTHS}, PARTLY),
    ({d: [F_] * 3 for d in WIDTHS}, {d: [S_] * 3 for d in WIDTHS}, {d: [S_] * 3 for d in WIDTHS}, NOT_REPRODUCED),
    ({d: [C_] * 3 for d in WIDTHS}, {d: [C_] * 3 for d in WIDTHS}, {d: [C_] * 3 for d in WIDTHS}, INCONCLUSIVE),
])
def test_depth_rule_returns_each_outcome(kv, v1, v2, expected):
    verdict, parts = PH.depth_verdict(cells({("kvshift", 1): kv, ("vanilla", 1): v1, ("vanilla", 2): v2}))
    assert verdict.outcome == expected and len(parts) == 3


def test_depth_rule_counts_only_discordant_pairs_and_leaves_censored_pairs_out():
    # the case: 7 vs 2 discordant pairs among 18 is not significant (p ≈ 0.09)
    kv = [S_] * 7 + [F_] * 2 + [S_] * 4 + [F_] * 3 + [C_] * 2
    v2 = [F_] * 7 + [S_] * 2 + [S_] * 4 + [F_] * 3 + [S_] * 2
    table = cells({("kvshift", 1): {8: kv}, ("vanilla", 2): {8: v2}, ("vanilla", 1): {8: [F_] * 18}})
    part = dict(PH.compare_models(table, ("kvshift", 1), ("vanilla", 2)))["kvshift 1L succeeds more often than vanilla 2L"]
    assert part.outcome == INCONCLUSIVE and "only kvshift 1L 7, only vanilla 2L 2, censored 2" in part.evidence[0]


def frontier_rows(by_length: dict[int, dict[int, str]], arch: str = "kvshift", layers: int = 1) -> pd.DataFrame:
    status = pd.DataFrame([{"arch": arch, "n_layers": layers, "n_heads": 1, "seq_len": L, "d_model": w, "status": s}
                           for L, widths in by_length.items() for w, s in widths.items()])
    return PH.length_trends(PH.frontiers(status))


@pytest.mark.parametrize("by_length,expected,reason", [
    ({16: {4: F_, 8: S_}, 64: {4: F_, 8: F_, 16: S_}}, REPRODUCED, ""),
    ({16: {4: F_, 8: F_, 16: S_}, 64: {4: F_, 8: S_}}, NOT_REPRODUCED, ""),
    ({16: {4: F_, 8: S_}, 64: {4: F_, 8: S_}}, NOT_REPRODUCED, ""),  # flat
    ({16: {4: C_, 8: S_}, 64: {4: F_, 8: S_}}, INCONCLUSIVE, "censored frontiers"),
])
def test_width_rule_returns_each_outcome(by_length, expected, reason):
    verdict = PH.width_verdict(frontier_rows(by_length))
    assert verdict.outcome == expected and verdict.reason == reason


def test_width_rule_without_a_one_layer_length_sweep_is_inconclusive():
    verdict = PH.width_verdict(frontier_rows({16: {8: S_}, 64: {8: S_}}, arch="vanilla", layers=2))
    assert verdict.outcome == INCONCLUSIVE and verdict.reason == "no one-layer length sweep"


def test_censored_runs_are_never_counted_as_failures_in_a_frontier():
    status = pd.DataFrame([{"arch": "kvshift", "n_layers": 1, "n_heads": 1, "seq_len": 32, "d_model": w, "status": s}
                           for w, s in ((4, C_), (8, F_), (16, S_))])
    fr = PH.frontiers(status).iloc[0]
    assert fr.frontier_status == P.UPPER_BOUND and fr.text == "≤ 16" and not math.isnan(fr.frontier)
    assert np.isfinite(fr.lo)


def test_the_hopk_context_free_baseline_is_per_task_and_reads_run_columns():
    from kvshift_lens.report.tables import context_free_accuracy

    task = {"name": "hop_k", "d_vocab": 8.0, "seq_len": 16, "alphabet_size": 4.0, "seed": 0, "n_pairs": float("nan")}
    acc = {k: context_free_accuracy({**task, "hops": k}, n=5000) for k in (1, 2, 3)}
    assert 0.25 < acc[1] < 0.45 and acc[2] > acc[1] > acc[3] > 0.15  # hop 2 often lands back on the last token


def test_a_paired_sign_flip_part_says_when_its_seeds_are_too_few_to_ever_reject():
    three = C.paired_effect([0.5, 0.6, 0.7], [0.1, 0.2, 0.3], -0.02, (-1.0, 1.0), "acc", "vanilla")
    assert three.outcome == INCONCLUSIVE and three.reason == "no power at 3 seeds: the exact test's smallest p is 0.125"
    five = C.paired_effect([0.5, 0.6, 0.7, 0.55, 0.65], [0.1, 0.2, 0.3, 0.15, 0.25], -0.02, (-1.0, 1.0), "acc", "vanilla")
    assert five.outcome == REPRODUCED and five.reason == ""  # 1 / 2^5 = 0.031 < 0.05
