"""Budget-aware search (kvshift_lens.report.search) against the full grid on synthetic outcome grids."""

import itertools
import random

import pandas as pd
import pytest

from kvshift_lens.report.protocol import Protocol, cell_results, cell_status, frontier
from kvshift_lens.report.search import GRID, SCAN, monotonicity_violations, next_width, plan_round, searched_frontier
from kvshift_lens.report.verdicts import CENSORED, FAILURE, SUCCESS

P = Protocol(lr="lr", seed="seed", run="run")
WIDTHS = [4, 8, 16, 32, 64]
LRS = [3e-3, 1e-2, 1e-3]  # the search order (the experiment file's)


def grid_jobs(families, widths=WIDTHS, lrs=LRS, seeds=(0, 1, 2)) -> pd.DataFrame:
    rows = [{"fam": f, "d": w, "lr": x, "seed": s} for f, w, x, s in itertools.product(families, widths, lrs, seeds)]
    return pd.DataFrame(rows).assign(job=lambda df: [f"job{i}" for i in range(len(df))])


def monotone_truth(rng: random.Random, families, widths=WIDTHS, lrs=LRS, seeds=(0, 1, 2)) -> dict:
    """Per (family, lr, seed) a width from which runs succeed (or never); up to two grid widths just below it are
    censored (still improving), all narrower ones fail after plateauing: success is monotone in width."""
    truth = {}
    for f, x, s in itertools.product(families, lrs, seeds):
        start = rng.choice([*widths, None])  # None: never succeeds
        edge = len(widths) if start is None else widths.index(start)
        n_censored = rng.choice([0, 0, 1, 2])  # widths just below the success region still improving at the end
        for i, w in enumerate(widths):
            if i >= edge:
                truth[f, w, x, s] = (SUCCESS, 0.95)
            elif i >= edge - n_censored:
                truth[f, w, x, s] = (CENSORED, 0.5 + rng.random() / 10)
            else:
                truth[f, w, x, s] = (FAILURE, 0.05 + rng.random() / 10)
    return truth


def outcomes(jobs: pd.DataFrame, truth: dict) -> pd.DataFrame:
    """`protocol.run_outcomes`-shaped rows for finished jobs."""
    rows = []
    for r in jobs.itertuples():
        outcome, best = truth[r.fam, r.d, r.lr, r.seed]
        rows.append({"run": r.job, "fam": r.fam, "d": r.d, "lr": r.lr, "seed": r.seed, "final_step": 100,
                     "final": best, "best": best, "steps_to_threshold": 50.0 if outcome == SUCCESS else float("nan"),
                     "gain_last": 0.0, "outcome": outcome, "censored": outcome == CENSORED})
    return pd.DataFrame(rows, columns=["run", "fam", "d", "lr", "seed", "final_step", "final", "best",
                                       "steps_to_threshold", "gain_last", "outcome", "censored"])


def search(jobs: pd.DataFrame, truth: dict, mode: str = SCAN) -> tuple[pd.DataFrame, int]:
    """Run rounds until the plan is empty: (finished runs, number of rounds)."""
    runs, rounds = outcomes(jobs.iloc[:0], truth), 0
    while len(plan := plan_round(jobs, runs, ["fam"], "d", P, mode)):
        runs = pd.concat([runs, outcomes(plan, truth)], ignore_index=True)
        rounds += 1
        assert rounds < 100
    return runs, rounds


def judged(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    cells = cell_results(runs, ["fam", "d"], P)
    return cells, frontier(cell_status(cells, ["fam", "d"], P), ["fam"], width="d")


@pytest.mark.parametrize("seed", range(40))
def test_the_width_scan_with_success_first_lrs_returns_the_full_grids_frontier_and_cell_outcomes(seed):
    families = ["a", "b", "c"]
    truth = monotone_truth(random.Random(seed), families)
    jobs = grid_jobs(families)
    full_cells, full_frontier = judged(outcomes(jobs, truth))
    runs, _ = search(jobs, truth)
    cells, front = judged(runs)
    cols = ["fam", "frontier", "frontier_status", "lo", "hi"]
    pd.testing.assert_frame_equal(front[cols], full_frontier[cols])
    visited = cells.merge(full_cells, on=["fam", "d", "seed"], suffixes=("", "_full"))
    assert len(visited) == len(cells) and (visited.outcome == visited.outcome_full).all()
    assert len(runs) < len(jobs)


def test_the_search_trains_fewer_runs_than_the_grid_and_the_grid_mode_trains_all():
    families = ["a", "b", "c", "d"]
    truth = monotone_truth(random.Random(1), families)
    jobs = grid_jobs(families)
    runs, _ = search(jobs, truth)
    assert len(runs) <= 0.8 * len(jobs)
    all_runs, rounds = search(jobs, truth, GRID)
    assert len(all_runs) == len(jobs) and rounds == 1


def test_a_failing_family_costs_every_width_at_every_lr_and_seed():
    truth = {("v", w, x, s): (FAILURE, 0.1) for w, x, s in itertools.product(WIDTHS, LRS, range(3))}
    runs, rounds = search(grid_jobs(["v"]), truth)
    assert set(runs.d) == set(WIDTHS) and len(runs) == 45 and rounds == 15  # one learning rate per round
    _, front = judged(runs)
    assert front.frontier_status.item() == "none"


def test_a_success_at_the_narrowest_width_and_first_lr_decides_the_family():
    truth = {("k", w, x, s): (SUCCESS, 0.95) for w, x, s in itertools.product(WIDTHS, LRS, range(3))}
    runs, rounds = search(grid_jobs(["k"]), truth)
    assert set(runs.lr) == {LRS[0]} and set(runs.d) == {4} and rounds == 1
    _, front = judged(runs)
    assert front.frontier.item() == 4 and front.text.item() == "≤ 4"  # the grid's narrowest: may lie below


def test_an_unfinished_planned_run_is_planned_again():
    jobs = grid_jobs(["k"])
    first = plan_round(jobs, outcomes(jobs.iloc[:0], {}), ["fam"], "d", P)
    truth = {("k", w, x, s): (SUCCESS, 0.95) for w, x, s in itertools.product(WIDTHS, LRS, range(3))}
    partial = outcomes(first.iloc[:1], truth)  # one of the three seeds finished
    again = plan_round(jobs, partial, ["fam"], "d", P)
    assert list(again.job) == list(first.job[1:])


@pytest.mark.parametrize("status,expected", [
    ({}, 4), ({4: FAILURE}, 8), ({4: CENSORED, 8: FAILURE}, 16), ({4: SUCCESS}, None),
    ({4: FAILURE, 8: SUCCESS}, None), ({4: FAILURE, 8: FAILURE, 16: FAILURE, 32: FAILURE, 64: FAILURE}, None),
    ({64: SUCCESS}, 4), ({64: SUCCESS, 4: FAILURE, 8: CENSORED, 16: FAILURE}, 32)])
def test_next_width_is_the_narrowest_undecided_width_below_the_narrowest_success(status, expected):
    assert next_width(WIDTHS, status) == expected


def status_frame(by_width: dict) -> pd.DataFrame:
    return pd.DataFrame({"fam": "a", "d": [float(w) for w in by_width], "status": list(by_width.values())})


def test_the_width_scan_returns_the_full_grids_answer_on_all_243_status_patterns_of_five_widths():
    cols = ["frontier", "frontier_status", "lo", "hi", "text"]
    visits = []
    for pattern in itertools.product([SUCCESS, FAILURE, CENSORED], repeat=len(WIDTHS)):
        full = dict(zip(WIDTHS, pattern))
        seen: dict = {}
        while (w := next_width(WIDTHS, seen)) is not None:
            seen[w] = full[w]
        got = searched_frontier(status_frame(seen), ["fam"], "d", WIDTHS)[cols]
        pd.testing.assert_frame_equal(got, frontier(status_frame(full), ["fam"], width="d")[cols], obj=str(pattern))
        visits.append(len(seen))
    assert len(visits) == 3 ** 5 and sum(visits) < len(visits) * len(WIDTHS)  # widths above a success are skipped


def test_monotonicity_violations_list_failures_above_a_success():
    status = pd.DataFrame({"fam": ["a"] * 3 + ["b"] * 2, "d": [8, 16, 32, 8, 16],
                           "status": [SUCCESS, FAILURE, SUCCESS, FAILURE, SUCCESS]})
    got = monotonicity_violations(status, ["fam"], "d")
    assert list(zip(got.fam, got.d)) == [("a", 16)]


def test_censored_cells_above_a_success_are_listed_only_when_asked():
    status = pd.DataFrame({"fam": ["a"] * 4, "d": [8, 16, 32, 64], "status": [CENSORED, SUCCESS, CENSORED, FAILURE]})
    assert list(monotonicity_violations(status, ["fam"], "d").d) == [64]
    assert list(monotonicity_violations(status, ["fam"], "d", (FAILURE, CENSORED)).d) == [32, 64]
    assert monotonicity_violations(status.assign(status=CENSORED), ["fam"], "d", (FAILURE, CENSORED)).empty


def test_an_unknown_search_mode_is_refused():
    with pytest.raises(ValueError, match="search='halving'"):
        plan_round(grid_jobs(["a"]), outcomes(grid_jobs(["a"]).iloc[:0], {}), ["fam"], "d", P, "halving")


def test_searched_frontier_equals_the_protocols_on_a_full_grid():
    truth = monotone_truth(random.Random(7), ["a", "b", "c", "d"])
    cells = cell_results(outcomes(grid_jobs(["a", "b", "c", "d"]), truth), ["fam", "d"], P)
    status = cell_status(cells, ["fam", "d"], P)
    pd.testing.assert_frame_equal(searched_frontier(status, ["fam"], "d", WIDTHS), frontier(status, ["fam"], width="d"))


@pytest.mark.parametrize("seen,kind,lo,hi,text", [
    ({4: FAILURE, 8: CENSORED}, "censored", 8, float("inf"), "≥ 8 (censored)"),  # 16-64 not trained yet
    ({64: CENSORED}, "censored", 4, float("inf"), "≥ 4 (censored)"),
    ({64: SUCCESS}, "upper bound", 0, 64, "≤ 64"),  # an unfinished search: even the narrowest width may succeed
    ({4: FAILURE, 8: CENSORED, 32: SUCCESS}, "upper bound", 8, 32, "≤ 32"),
    ({64: FAILURE}, "censored", 4, float("inf"), "≥ 4 (not reached)")])  # nothing is inferred from a failure
def test_searched_frontier_counts_every_untrained_width_below_the_frontier_as_undetermined(seen, kind, lo, hi, text):
    row = searched_frontier(status_frame(seen), ["fam"], "d", WIDTHS).iloc[0]
    assert (row.frontier_status, row.lo, row.hi, row.text) == (kind, pytest.approx(lo), hi, text)


def test_a_job_left_out_of_the_grid_does_not_keep_its_seed_open():
    jobs = grid_jobs(["v"], widths=[64])
    truth = {("v", 64, x, s): (FAILURE, 0.1) for x in LRS for s in range(3)}
    without = jobs[~((jobs.seed == 0) & (jobs.lr == LRS[1]))]  # e.g. a run that failed with an error
    runs, _ = search(without, truth)
    assert len(runs) == 8 and not ((runs.seed == 0) & (runs.lr == LRS[1])).any()
