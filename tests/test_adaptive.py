"""Adaptive budgets and learning rates (kvshift_lens/report/adaptive.py) and the resume that extends a run."""

import json

import pandas as pd
import pytest
import torch

from kvshift_lens.core.errors import ConfigError
from kvshift_lens.data.tasks import task_config
from kvshift_lens.models.config import ModelConfig
from kvshift_lens.report import adaptive as A
from kvshift_lens.report.protocol import Protocol
from kvshift_lens.training import sweeps
from kvshift_lens.training.resume import load_resume
from kvshift_lens.training.train_config import TrainConfig
from kvshift_lens.training.trainer import train

TASK = task_config("induction", d_vocab=16, seq_len=16, seed=0)
MODEL = ModelConfig(mixer="kv_shift", n_layers=1, d_model=16, n_heads=2, d_vocab=16, n_ctx=16, seed=0)
P = Protocol(lr="lr")


def tiny(**kw) -> TrainConfig:
    return TrainConfig(**{**dict(steps=8, batch_size=8, eval_every=4, eval_size=16, warmup=2, n_checkpoints=4,
                                 threads=1), **kw})


def test_extending_a_run_by_doubling_equals_training_with_the_doubled_budget_from_the_start(tmp_path):
    train(MODEL, TASK, tiny(steps=8), tmp_path / "ext", progress=False)
    train(MODEL, TASK, tiny(steps=16), tmp_path / "ext", progress=False)  # same directory, budget doubled
    train(MODEL, TASK, tiny(steps=16), tmp_path / "full", progress=False)
    a, b = (pd.read_csv(tmp_path / d / "metrics.csv").drop(columns="train_seconds") for d in ("ext", "full"))
    pd.testing.assert_frame_equal(a, b)
    x, y = (load_resume(tmp_path / d / "resume.pt") for d in ("ext", "full"))
    assert x["step"] == y["step"] == 16
    assert all(torch.equal(x["model"][k], y["model"][k]) for k in y["model"])


def test_a_cosine_schedule_is_never_extended_and_a_shorter_budget_keeps_the_longer_run(tmp_path):
    train(MODEL, TASK, tiny(steps=8, schedule="cosine"), tmp_path / "cos", progress=False)
    with pytest.raises(ConfigError, match="different config"):
        train(MODEL, TASK, tiny(steps=16, schedule="cosine"), tmp_path / "cos", progress=False)
    with pytest.raises(ConfigError, match="different config"):  # a cosine run is never cut or stretched
        train(MODEL, TASK, tiny(steps=4, schedule="cosine"), tmp_path / "cos", progress=False)
    train(MODEL, TASK, tiny(steps=8), tmp_path / "short", progress=False)
    # the grid's job re-run after an adaptive round extended its run: that run stands, nothing is retrained
    assert train(MODEL, TASK, tiny(steps=4), tmp_path / "short", progress=False)["final_step"] == 8


@pytest.mark.parametrize("outcome, budget, diverged, decision, nxt", [
    ("success", 1000, False, A.STOP_SUCCESS, None),
    ("failure", 1000, False, A.STOP_PLATEAU, None),
    ("censored", 1000, True, A.STOP_DIVERGED, None),
    ("censored", 1000, False, A.DOUBLE, 2000),
    ("censored", 4000, False, A.DOUBLE, 8000),
    ("censored", 8000, False, A.STOP_CAP, None),
])
def test_budget_decision_for_each_outcome(outcome, budget, diverged, decision, nxt):
    assert A.budget_decision(outcome, budget, 1000, A.Adaptive(cap=8), diverged) == (decision, nxt)


def _runs(rows):
    """Run rows: cell `arch`, `d`, lr, seed, outcome, budget; jobs built from them."""
    out = []
    for arch, d, lr, seed, outcome, budget, *rest in rows:
        job = [f"model/mixer={arch}", f"model.d_model={d}", f"train.lr={lr}", f"seed={seed}"]
        out.append({"arch": arch, "d": d, "lr": lr, "seed": seed, "outcome": outcome, "budget": budget,
                    "grid_budget": 1000, "status": rest[1] if len(rest) > 1 else "completed",
                    "steps_to_threshold": rest[0] if rest else float("nan"),
                    "best": 0.95 if outcome == "success" else 0.3, "final": 0.3, "final_step": budget, "run": f"{arch}/{d}/{lr}/{seed}",
                    "job": job + ([f"train.steps={budget}"] if budget != 1000 else []), "grid_job": job})
    return pd.DataFrame(out)


def test_plan_doubles_censored_runs_and_skips_cell_seeds_that_succeeded_at_another_rate():
    runs = _runs([("kv", 8, 1e-2, 0, "censored", 1000), ("kv", 8, 1e-3, 0, "success", 1000, 300.0),
                  ("kv", 8, 1e-2, 1, "censored", 2000), ("kv", 8, 1e-2, 2, "censored", 8000),
                  ("kv", 8, 1e-2, 3, "failure", 1000)])
    plan = A.plan_budgets(runs, ["arch", "d"], A.Adaptive(cap=8), p=P)
    assert plan["run"].tolist() == ["kv/8/0.01/1"] and plan["to"].tolist() == [4000]
    assert "train.steps=4000" in plan["job"][0]


def test_cannot_rule_extends_plateaued_negative_runs_to_four_times_the_positive_arms_steps():
    runs = _runs([("kv", 8, 1e-2, 0, "success", 1000, 600.0), ("none", 8, 1e-2, 0, "failure", 1000),
                  ("none", 8, 1e-2, 1, "failure", 2000)])
    rule = A.CannotRule("v1 cannot", negative={"arch": "none"}, positive={"arch": "kv"}, within=["d"])
    plan = A.plan_budgets(runs, ["arch", "d"], A.Adaptive(cap=8), [rule], P)
    assert sorted(plan["to"]) == [2000, 4000] and set(plan["reason"]) == {"cannot: 4x"}
    table = A.cannot_table(runs, [rule], A.Adaptive(), P).iloc[0]
    assert table.positive_steps == 600 and table.cannot_budget_needed == 2400 and table.cannot_budget == 1000
    assert not table.cannot_judged
    judged = A.cannot_table(runs.assign(budget=4000), [rule], A.Adaptive(), P).iloc[0]
    assert judged.cannot_judged and judged.cannot_budget == 4000


def test_cannot_rule_stops_at_the_cap():
    runs = _runs([("kv", 8, 1e-2, 0, "success", 1000, 900.0), ("none", 8, 1e-2, 0, "failure", 2000)])
    rule = A.CannotRule("v1 cannot", negative={"arch": "none"}, positive={"arch": "kv"})
    assert A.plan_budgets(runs, ["arch", "d"], A.Adaptive(cap=2), [rule], P).empty
    assert not A.cannot_table(runs, [rule], A.Adaptive(cap=2), P).iloc[0].cannot_judged


def test_cannot_table_has_no_row_where_the_negative_arm_was_never_trained():
    runs = _runs([("kv", 8, 1e-2, 0, "success", 1000, 600.0), ("none", 8, 1e-2, 0, "failure", 4000),
                  ("kv", 16, 1e-2, 0, "success", 1000, 300.0)])
    rule = A.CannotRule("v1 cannot", negative={"arch": "none"}, positive={"arch": "kv"}, within=["d"])
    assert A.cannot_table(runs, [rule], A.Adaptive(), P)["d"].tolist() == [8]


@pytest.mark.parametrize("lr, direction, expected", [(1e-2, 1, 3e-2), (3e-3, 1, 1e-2), (1e-3, -1, 3e-4),
                                                     (3e-4, -1, 1e-4), (2e-3, 1, 3e-3)])
def test_half_decade_grid(lr, direction, expected):
    assert A.half_decade(lr, direction) == pytest.approx(expected)


@pytest.mark.parametrize("edge, diverged, bounds, decision, nxt", [
    (1, (), (1e-4, 1e-1), A.EXTEND, 3e-2),
    (-1, (), (1e-4, 1e-1), A.EXTEND, 3e-4),
    (0, (), (1e-4, 1e-1), A.INTERIOR, None),
    (1, (1e-2,), (1e-4, 1e-1), A.STOP_DIVERGED, None),
    (1, (), (1e-4, 1e-2), A.BOUND, None),
    (1, (), None, A.FIXED, None),
])
def test_lr_decision_for_each_case(edge, diverged, bounds, decision, nxt):
    got = A.lr_decision([1e-3, 3e-3, 1e-2], edge, diverged, A.Adaptive(lr_bounds=bounds))
    assert got[0] == decision and (got[1] == pytest.approx(nxt) if nxt else got[1] is None)


def test_an_edge_adds_the_next_rate_for_every_arm_and_seed_of_its_setting():
    runs = _runs([(arch, 8, lr, s, "success" if (arch == "kv" and lr == 1e-2) else "failure", 1000, 200.0)
                  for arch in ("kv", "none") for lr in (1e-3, 3e-3, 1e-2) for s in (0, 1)]
                 + [("kv", 16, lr, s, "success" if lr == 3e-3 else "failure", 1000, 200.0)
                    for lr in (1e-3, 3e-3, 1e-2) for s in (0, 1)])
    plan = A.plan_lrs(runs, ["arch", "d"], ["arch"], A.Adaptive(), P)
    jobs = {tuple(sorted(j)) for j in plan["job"]}
    assert len(jobs) == 4 and all("train.lr=3e-2" in j and "model.d_model=8" in j for j in jobs)
    table = A.lr_table(runs, ["arch", "d"], A.Adaptive(), P).set_index(["arch", "d"])
    assert table.loc[("kv", 8), "lr_edge"] == "top: not yet extended" and table.loc[("kv", 16), "lr_edge"] == ""
    capped = A.lr_table(runs, ["arch", "d"], A.Adaptive(lr_bounds=(1e-4, 1e-2)), P).set_index(["arch", "d"])
    assert capped.loc[("kv", 8), "lr_edge"] == "top: bound 3e-2"
    assert A.plan_lrs(runs, ["arch", "d"], ["arch"], A.Adaptive(lr_bounds=(1e-4, 1e-2)), P).empty


def test_an_all_failing_cell_whose_rates_tie_is_not_an_edge_and_a_diverged_edge_stops():
    ties = _runs([("none", 8, lr, 0, "failure", 1000) for lr in (1e-3, 3e-3, 1e-2)])
    assert A.plan_lrs(ties, ["arch", "d"], ["arch"], A.Adaptive(), P).empty
    div = _runs([("kv", 8, 1e-3, 0, "failure", 1000), ("kv", 8, 3e-3, 0, "failure", 1000),
                 ("kv", 8, 1e-2, 0, "success", 1000, 100.0, "diverged")])
    assert A.plan_lrs(div, ["arch", "d"], ["arch"], A.Adaptive(), P).empty
    assert A.lr_table(div, ["arch", "d"], A.Adaptive(), P)["lr_edge"].iloc[0] == "top: diverged at 1e-2"


def test_selection_accepts_grid_jobs_at_another_budget_or_rate_and_runs_them_as_listed(tmp_path):
    grid = [["model.d_model=8", "train.lr=1e-2", "seed=0"], ["model.d_model=16", "train.lr=1e-2", "seed=0"]]
    listed = [["model.d_model=16", "train.lr=1e-2", "seed=0", "train.steps=4000"],
              ["model.d_model=8", "train.lr=3e-2", "seed=0"]]
    got = sweeps.select_jobs(grid, sweeps.write_selection(tmp_path / "r.yaml", listed))
    assert got == [listed[1], listed[0]]  # grid order
    with pytest.raises(ValueError, match="not jobs of this sweep"):
        sweeps.select_jobs(grid, sweeps.write_selection(tmp_path / "bad.yaml", [["model.d_model=32", "seed=0"]]))


def test_an_adaptive_round_extends_a_grid_run_in_its_own_directory(tmp_path):
    spec = sweeps.experiment_spec("phase_diagram_tiny")
    job = sweeps.expand_jobs(spec, only=["main"])[0]
    sweep_dir = tmp_path / "sweeps" / spec["name"]
    plans = iter([[job], [A.job_with(job, "train.steps", 8)], []])
    assert sweeps.train_rounds(spec, lambda: next(plans), sweep_dir, tmp_path, "basic", None) == 2
    (run,) = sweeps.runs_of_jobs(sweep_dir, [job])
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 8
    assert pd.read_csv(run / "metrics.csv")["step"].tolist() == [0, 2, 4, 6, 8]
    table = A.study_runs(sweep_dir, [job], spec["steps"])
    assert table[["budget", "grid_budget"]].values.tolist() == [[8, 4]]
