"""Adaptive budgets and learning rates: which runs a study trains next, read from the runs it has.

A fixed budget and a fixed learning-rate grid decide some cells by optimisation, not capacity: a run
still improving when its budget ran out says nothing (it is *censored*), and a cell whose best learning
rate sits at the end of the grid might do better beyond it. A study therefore trains in rounds
(plan -> multirun -> read -> plan ...), each round planned here from the protocol's per-run outcomes
(`protocol.run_outcomes`: success / failure / censored):

* **Budgets** (`budget_decision`, `plan_budgets`): a censored run is trained on with its budget doubled
  (`train.steps=2×`, in its own run directory: the trainer resumes it, and under a constant learning rate
  after warmup the longer run is bit for bit the run trained with that budget from the start;
  `training.resume.extends`) until it succeeds, plateaus, diverges or reaches the study's cap
  (`Adaptive.cap` × its grid budget). A censored run whose cell and seed already succeeded at another
  learning rate is not extended: the cell-seed's outcome cannot change.
* **"Cannot learn"** (`CannotRule`, `cannot_table`): a claim that a model cannot learn a task is judged only
  once its failed runs were trained ≥ `Adaptive.cannot_ratio` (4) × the steps the positive arm needed to
  succeed (per seed its earliest success over learning rates, the most over seeds). Failed runs of the negative arm short of
  that are doubled like censored ones (within the cap); `cannot_table` states the budget behind every
  "cannot" (column `cannot_budget`) and whether it is judged (`cannot_judged`).
* **Learning rates** (`lr_decision`, `plan_lrs`, `lr_table`): when a cell's best learning rate sits at an
  edge of the rates tried, the next rate on the half-decade grid (…, 1e-3, 3e-3, 1e-2, 3e-2, …) beyond it
  is added for every seed and for every arm of the same setting alike (the cells that differ only in the
  `arm_keys`), until the best is interior, the edge rate diverged, or the next rate leaves
  `Adaptive.lr_bounds` (1e-4 … 1e-1 by default: beyond 1e-1 AdamW diverges on every model we train, below
  1e-4 nothing learns within 8× budgets). `lr_table` reports the best learning rate per cell and names an
  edge that remains (column `lr_edge`).

Column names are the caller's (`protocol.Protocol` fields); jobs are hydra override lists as the study's
experiment file expands them (`training.sweeps`). Nothing here trains: the study commands run each round as
one multirun of the planned jobs (`sweeps.write_selection` + the grids sweeper's `select`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from kvshift_lens.report.protocol import RUN_COLUMNS, Protocol, cell_results, run_outcomes
from kvshift_lens.report.verdicts import CENSORED, FAILURE, SUCCESS
from kvshift_lens.training import sweeps
from kvshift_lens.training.runs import run_status

DOUBLE, STOP_SUCCESS, STOP_PLATEAU, STOP_DIVERGED, STOP_CAP = "double", "success", "plateau", "diverged", "cap"
EXTEND, INTERIOR, BOUND, FIXED = "extend", "interior", "bound", "fixed"  # lr decisions (plus STOP_DIVERGED)
PLAN_COLUMNS = ["job", "reason", "run", "from", "to"]


@dataclass(frozen=True)
class Adaptive:
    """A study's adaptive policy: budget growth and cap, the "cannot" ratio, learning-rate bounds."""

    factor: int = 2  # a censored run's budget is multiplied by this each round
    cap: float = 8.0  # ... up to this multiple of its grid budget (1: budgets never grow)
    cannot_ratio: float = 4.0  # "cannot learn" needs failed runs trained >= this × the positive arm's steps
    lr_bounds: Optional[tuple[float, float]] = (1e-4, 1e-1)  # half-decade rates added within these; None: never
    steps_key: str = "train.steps"  # override keys of the budget and the learning rate
    lr_key: str = "train.lr"


OFF = Adaptive(cap=1.0, lr_bounds=None)  # the grid as written (tiny test profiles)


# ---------------------------------------------------------------------------------------------- jobs


def override_value(job: Sequence[str], key: str) -> Optional[str]:
    """The value `job` (a hydra override list) gives `key`, or None."""
    return next((o.split("=", 1)[1] for o in job if o.split("=", 1)[0].lstrip("+") == key), None)


def job_with(job: Sequence[str], key: str, value: object) -> list[str]:
    """`job` with `key=value` replacing its entry for `key` (or appended)."""
    out = [o for o in job if o.split("=", 1)[0].lstrip("+") != key]
    return out + [f"{key}={value}"]


def lr_text(lr: float) -> str:
    return f"{lr:.0e}".replace("e-0", "e-").replace("e+0", "e")


# ------------------------------------------------------------------------------------------- budgets


def budget_decision(outcome: str, budget: int, grid_budget: int, a: Adaptive = Adaptive(),
                    diverged: bool = False) -> tuple[str, Optional[int]]:
    """What to do with one run at `budget` steps (its grid gave it `grid_budget`): (decision, next budget or None).
    success -> stop; failure (plateaued) -> stop; diverged -> stop; censored -> double, unless that passes the cap."""
    if outcome == SUCCESS:
        return STOP_SUCCESS, None
    if diverged:
        return STOP_DIVERGED, None
    if outcome == FAILURE:
        return STOP_PLATEAU, None
    nxt = int(budget * a.factor)
    return (DOUBLE, nxt) if nxt <= a.cap * grid_budget + 1e-9 else (STOP_CAP, None)


@dataclass(frozen=True)
class CannotRule:
    """A claim that the `negative` arm cannot learn what the `positive` arm learns, compared `within` groups
    (column -> value selectors; e.g. negative {"arch": "vanilla", "n_layers": 1}, positive {"arch": "kvshift",
    "n_layers": 1}, within ["seq_len"])."""

    name: str
    negative: Mapping[str, object]
    positive: Mapping[str, object]
    within: Sequence[str] = ()


def _select(runs: pd.DataFrame, where: Mapping[str, object]) -> pd.Series:
    mask = pd.Series(True, index=runs.index)
    for col, value in where.items():  # a key a job does not set reads as ""
        column = runs[col].fillna("").astype(str) if col in runs else pd.Series("", index=runs.index)
        mask &= column == str(value)
    return mask


def _groups(runs: pd.DataFrame, within: Sequence[str]):
    if not within:
        yield (), runs
        return
    for key, g in runs.groupby(list(within), sort=True, dropna=False):
        yield (key if isinstance(key, tuple) else (key,)), g


def _positive_steps(runs: pd.DataFrame, rule: CannotRule, p: Protocol) -> float:
    """The steps the positive arm needed: per seed its earliest success over learning rates, the most over seeds."""
    pos = runs[_select(runs, rule.positive) & (runs["outcome"] == SUCCESS)]
    return float(pos.groupby(p.seed)["steps_to_threshold"].min().max()) if len(pos) else math.nan


def cannot_table(runs: pd.DataFrame, rules: Sequence[CannotRule], a: Adaptive = Adaptive(),
                 p: Protocol = Protocol()) -> pd.DataFrame:
    """Per rule and group: `positive_steps` (the steps the positive arm needed: each seed's earliest success, the most
    over seeds), `cannot_budget_needed` (`cannot_ratio` × that), `cannot_budget` (the smallest budget among the
    negative arm's failed runs: the budget behind the "cannot"), `cannot_judged` (every failed negative run trained at
    least the needed budget; a diverged one never is)."""
    rows = []
    for rule in rules:
        for key, g in _groups(runs, rule.within):
            negative = _select(g, rule.negative)
            if not negative.any():
                continue  # the negative arm was never trained here: no "cannot" to state
            steps = _positive_steps(g, rule, p)
            neg = g[negative & (g["outcome"] == FAILURE)]
            needed = a.cannot_ratio * steps if steps == steps else math.nan
            budget = float(neg["budget"].min()) if len(neg) else math.nan
            rows.append({"rule": rule.name, **dict(zip(rule.within, key)), "positive_steps": steps,
                         "cannot_budget_needed": needed, "cannot_budget": budget,
                         "cannot_judged": bool(len(neg)) and needed == needed and bool((neg["budget"] >= needed).all())})
    return pd.DataFrame(rows, columns=["rule", *sorted({k for r in rules for k in r.within}), "positive_steps",
                                       "cannot_budget_needed", "cannot_budget", "cannot_judged"])


def plan_budgets(runs: pd.DataFrame, cell_keys: Sequence[str], a: Adaptive = Adaptive(),
                 rules: Sequence[CannotRule] = (), p: Protocol = Protocol()) -> pd.DataFrame:
    """The budget extensions of the next round (PLAN_COLUMNS: the job with its doubled `steps_key`, why, which run,
    from and to budget). `runs`: one row per run with `job`, `budget`, `grid_budget`, `outcome`, optionally
    `status` ("diverged"), `steps_to_threshold`, the cell keys and the protocol's seed and lr columns."""
    done = set() if runs.empty else {
        k for k, g in runs.groupby([*cell_keys, p.seed], dropna=False) if (g["outcome"] == SUCCESS).any()}
    short = set()  # negative-arm failures trained less than the "cannot" rule needs
    for rule in rules:
        for _, g in _groups(runs, rule.within):
            steps = _positive_steps(g, rule, p)
            if steps == steps:
                needed = a.cannot_ratio * steps
                neg = g[_select(g, rule.negative) & (g["outcome"] == FAILURE)]
                short |= set(neg.index[neg["budget"] < needed])
    rows = []
    for i, r in runs.iterrows():
        key = tuple(r[k] for k in [*cell_keys, p.seed])
        key = key if len(key) > 1 else key[0]
        diverged = str(r.get(p.status, "")) == "diverged"
        outcome = CENSORED if i in short and not diverged else r["outcome"]
        if outcome == CENSORED and key in done and i not in short:
            continue  # the cell-seed succeeded at another learning rate: this run cannot change its outcome
        decision, nxt = budget_decision(outcome, int(r["budget"]), int(r["grid_budget"]), a, diverged)
        if decision == DOUBLE and str(r.get("schedule", "constant")) == "constant":  # else a longer run is another run
            rows.append({"job": job_with(r["job"], a.steps_key, nxt), "reason": "cannot: 4x" if i in short else "censored",
                         "run": r.get(p.run), "from": int(r["budget"]), "to": nxt})
    return pd.DataFrame(rows, columns=PLAN_COLUMNS)


# --------------------------------------------------------------------------------------- learning rates


def _rate(k: int) -> float:
    """Half-decade grid rate k: 10^(k/2), with 10^0.5 written as 3 (k = -4: 1e-2, k = -5: 3e-3)."""
    return float(f"{1 if k % 2 == 0 else 3}e{k // 2}")


def half_decade(lr: float, direction: int) -> float:
    """The next rate above (`direction` +1) or below (-1) `lr` on the half-decade grid 1, 3, 10, 30, … × 10^k
    (for a rate off the grid, the nearest grid rate beyond it)."""
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 or -1, not {direction}")
    k = int(round(2 * math.log10(lr))) - 2 * direction
    while not (_rate(k) > lr * (1 + 1e-9) if direction > 0 else _rate(k) < lr * (1 - 1e-9)):
        k += direction
    return _rate(k)


def lr_decision(lrs: Sequence[float], edge: int, diverged: Sequence[float] = (),
                a: Adaptive = Adaptive()) -> tuple[str, Optional[float]]:
    """For a cell whose best rate sits at `edge` (+1 top, -1 bottom, 0 interior) of the rates tried: (decision,
    next rate or None). interior -> stop; the edge rate diverged -> stop; the next rate outside `a.lr_bounds` ->
    stop (bound); fewer than 2 rates or no bounds -> fixed; else extend."""
    lrs = sorted(float(x) for x in lrs)
    if len(lrs) < 2 or a.lr_bounds is None:
        return FIXED, None
    if edge == 0:
        return INTERIOR, None
    at = lrs[-1] if edge > 0 else lrs[0]
    if any(math.isclose(at, float(d), rel_tol=1e-6) for d in diverged):
        return STOP_DIVERGED, None
    nxt = half_decade(at, edge)
    lo, hi = a.lr_bounds
    if not lo * (1 - 1e-9) <= nxt <= hi * (1 + 1e-9):
        return BOUND, None
    return EXTEND, nxt


def _edges(runs: pd.DataFrame, cell_keys: Sequence[str], p: Protocol) -> pd.DataFrame:
    """Per cell: the rates tried, the diverged rates, the median best rate over seeds and its edge (+1/-1/0). A
    seed counts towards an edge when its best run succeeded, or when its best metric beats the neighbouring rate's
    by more than `plateau_gain` (an all-failing cell whose rates tie is interior, not noise-driven)."""
    if runs.empty:
        return pd.DataFrame(columns=[*cell_keys, "lrs", "diverged_lrs", "best_lr", "edge"])
    best = cell_results(runs, cell_keys, p)
    rows = []
    for key, g in runs.groupby(list(cell_keys), sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        lrs = sorted(g[p.lr].astype(float).unique())
        div = sorted(g.loc[g.get(p.status, pd.Series("", index=g.index)).astype(str) == "diverged", p.lr].astype(float).unique())
        b = best[(best[list(cell_keys)].astype(str) == pd.Series(key, index=list(cell_keys)).astype(str)).all(axis=1)]
        votes = []
        for _, s in b.iterrows():
            lr = float(s["lr"])
            side = 1 if lr == lrs[-1] else -1 if lr == lrs[0] else 0
            if side and len(lrs) > 1 and s["outcome"] != SUCCESS:
                seed_runs = g[g[p.seed].astype(str) == str(s[p.seed])]
                nb = lrs[-2] if side > 0 else lrs[1]
                other = seed_runs.loc[seed_runs[p.lr].astype(float) == nb, "best"]
                if len(other) and float(s["best"]) - float(other.max()) <= p.plateau_gain:
                    side = 0
            votes.append(side)
        edge = 0
        if len(lrs) > 1 and votes:
            edge = 1 if votes.count(1) * 2 >= len(votes) else -1 if votes.count(-1) * 2 >= len(votes) else 0
        rows.append({**dict(zip(cell_keys, key)), "lrs": lrs, "diverged_lrs": div,
                     "best_lr": float(np.median(b["lr"].astype(float))) if len(b) else math.nan, "edge": edge})
    return pd.DataFrame(rows, columns=[*cell_keys, "lrs", "diverged_lrs", "best_lr", "edge"])


def lr_table(runs: pd.DataFrame, cell_keys: Sequence[str], a: Adaptive = Adaptive(),
             p: Protocol = Protocol()) -> pd.DataFrame:
    """Per cell: `best_lr` (median over seeds of each seed's best rate), `lrs_tried` and `lr_edge`: "" when the best
    is interior (or the grid fixed), else which edge remains and why ("top: bound 1e-1", "bottom: diverged at 1e-4",
    "top: not yet extended")."""
    edges = _edges(runs, cell_keys, p)
    texts = []
    for r in edges.itertuples(index=False):
        decision, nxt = lr_decision(r.lrs, r.edge, r.diverged_lrs, a)
        side = "top" if r.edge > 0 else "bottom"
        at = r.lrs[-1] if r.edge > 0 else r.lrs[0]
        if decision == INTERIOR or (decision == FIXED and r.edge == 0):
            texts.append("")
        elif decision == FIXED:
            texts.append(f"{side}: fixed grid")
        elif decision == STOP_DIVERGED:
            texts.append(f"{side}: diverged at {lr_text(at)}")
        elif decision == BOUND:
            texts.append(f"{side}: bound {lr_text(half_decade(at, r.edge))}")
        else:
            texts.append(f"{side}: not yet extended")
    return edges.assign(lrs_tried=[" ".join(lr_text(x) for x in lrs) for lrs in edges["lrs"]],
                        lr_edge=texts).drop(columns=["lrs", "diverged_lrs", "edge"])


def plan_lrs(runs: pd.DataFrame, cell_keys: Sequence[str], arm_keys: Sequence[str], a: Adaptive = Adaptive(),
             p: Protocol = Protocol()) -> pd.DataFrame:
    """The learning rates of the next round (PLAN_COLUMNS): for every cell whose best rate sits at an edge (and
    `lr_decision` says extend), the next half-decade rate for every seed of every cell of its setting (cells equal
    on the cell keys other than `arm_keys`), at the grid budget. `runs` needs `job` and `grid_job` (the run's job
    at its grid budget) besides the protocol's columns."""
    if runs.empty or a.lr_bounds is None:
        return pd.DataFrame(columns=PLAN_COLUMNS)
    setting = [k for k in cell_keys if k not in arm_keys]
    edges = _edges(runs, cell_keys, p)
    new: dict[tuple, set[float]] = {}
    for _, r in edges.iterrows():
        decision, nxt = lr_decision(r["lrs"], r["edge"], r["diverged_lrs"], a)
        if decision == EXTEND:
            new.setdefault(tuple(str(r[k]) for k in setting), set()).add(nxt)
    rows, seen = [], set()
    tried = {(tuple(str(r[k]) for k in [*cell_keys, p.seed]), round(float(r[p.lr]), 12)) for _, r in runs.iterrows()}
    for _, r in runs.drop_duplicates([*cell_keys, p.seed]).iterrows():
        for lr in sorted(new.get(tuple(str(r[k]) for k in setting), ())):
            cell_seed = tuple(str(r[k]) for k in [*cell_keys, p.seed])
            if (cell_seed, round(lr, 12)) in tried or (cell_seed, lr) in seen:
                continue
            seen.add((cell_seed, lr))
            rows.append({"job": job_with(r["grid_job"], a.lr_key, lr_text(lr)), "reason": f"lr edge: {lr_text(lr)}",
                         "run": None, "from": None, "to": None})
    return pd.DataFrame(rows, columns=PLAN_COLUMNS)


def plan_round(runs: pd.DataFrame, cell_keys: Sequence[str], arm_keys: Sequence[str], a: Adaptive = Adaptive(),
               rules: Sequence[CannotRule] = (), p: Protocol = Protocol()) -> pd.DataFrame:
    """Every job of the next adaptive round: budget extensions, then new learning rates (empty: the study is done)."""
    parts = [plan_budgets(runs, cell_keys, a, rules, p), plan_lrs(runs, cell_keys, arm_keys, a, p)]
    return pd.concat([x for x in parts if len(x)], ignore_index=True) if any(len(x) for x in parts) \
        else pd.DataFrame(columns=PLAN_COLUMNS)


# ------------------------------------------------------------------------------- a study's runs, generically

ARM_KEYS = ("model", "model/mixer", "model.arch", "model.n_layers", "model.attn_only")  # what tells arms apart
ARM_PREFIXES = ("model.mixer.",)  # mixer options are arm keys too (sides, param, window)
NOT_CELL = ("seed", "train.steps", "train.lr")  # a cell is a job up to its seed, budget and learning rate


def _is_arm(key: str) -> bool:
    return key in ARM_KEYS or key.startswith(ARM_PREFIXES)


def study_runs(sweep_dir: Path, jobs: Sequence[Sequence[str]], grid_steps: int,
               threshold: float = 0.9) -> pd.DataFrame:
    """One row per finished run (completed or diverged) of `jobs` under `sweep_dir`, at whatever budget and rate
    adaptive rounds gave it: `run`, `job` (its recorded overrides), `grid_job` (the grid job it extends), `cell`
    and `setting` / `arm` (the cell's overrides without / with only the arm keys, as text), `seed`, `lr`, `budget`,
    `grid_budget`, `status`, every override key as a text column, then the protocol's RUN_COLUMNS
    (`protocol.run_outcomes` on `induction_acc`, at the job's `train.stop_at` when it sets one, else `threshold`)."""
    grid = {sweeps.base_identity(j): list(j) for j in jobs}
    rows, frames = [], []
    for d in sweeps.runs_of_jobs(sweep_dir, jobs):
        status = run_status(d)
        if status not in ("completed", "diverged") or not (d / "metrics.csv").exists():
            continue
        job = [o for o in sweeps.job_overrides(d) if o.split("=", 1)[0] not in sweeps.VOLATILE]
        grid_job = grid[sweeps.base_identity(job)]
        config = json.loads((d / "config.json").read_text())["train"]
        keys = {o.split("=", 1)[0].lstrip("+"): o.split("=", 1)[1] for o in grid_job}
        cell = {k: v for k, v in keys.items() if k not in NOT_CELL}
        stop = float(config.get("stop_at") or 0) or threshold
        run = str(d.relative_to(sweep_dir))
        curve = pd.read_csv(d / "metrics.csv")[["step", "induction_acc"]]
        frames.append(curve.assign(run=run, status=status, threshold=stop, **{"train.eval_size": config["eval_size"]}))
        rows.append({"run": run, "job": job, "grid_job": grid_job, **keys,
                     "cell": " ".join(f"{k}={v}" for k, v in sorted(cell.items())),
                     "setting": " ".join(f"{k}={v}" for k, v in sorted(cell.items()) if not _is_arm(k)),
                     "arm": " ".join(f"{k}={v}" for k, v in sorted(cell.items()) if _is_arm(k)),
                     "seed": str(keys.get("seed", "0")), "lr": float(config["lr"]), "budget": int(config["steps"]),
                     "grid_budget": sweeps.grid_budget({"steps": grid_steps}, grid_job), "status": status,
                     "schedule": config.get("schedule", "constant")})
    if not rows:
        return pd.DataFrame(columns=["run", "job", "grid_job", "cell", "setting", "arm", "seed", "lr", "budget",
                                     "grid_budget", "status", "schedule", *RUN_COLUMNS])
    curves = pd.concat(frames, ignore_index=True)
    outcomes = []
    for stop, g in curves.groupby("threshold"):  # stop_at differs between grids (hop-k: 0.95)
        outcomes.append(run_outcomes(g, ["status"], Protocol(threshold=float(stop), lr="lr")).drop(columns="status"))
    return pd.DataFrame(rows).merge(pd.concat(outcomes, ignore_index=True), on="run")


def plan_study(runs: pd.DataFrame, a: Adaptive = Adaptive(), rules: Sequence[CannotRule] = ()) -> pd.DataFrame:
    """The next adaptive round of a `study_runs` frame: budgets per run, rates per cell (`plan_round` with cell
    keys setting + arm, arms compared within a setting)."""
    return plan_round(runs, ["setting", "arm"], ["arm"], a, rules, Protocol(lr="lr"))


def next_round(sweep_dir: Path, spec: dict, a: Adaptive, rules: Sequence[CannotRule] = (),
               grids: Sequence[str] = ()) -> list[list[str]]:
    """The jobs of a study's next adaptive round, read from the finished runs of its `grids` (all when empty) under
    `sweep_dir` (`sweeps.experiment_spec` in; what `sweeps.train_rounds` asks for before each round)."""
    runs = study_runs(sweep_dir, sweeps.expand_jobs(spec, only=list(grids)), spec["steps"])
    return list(plan_study(runs, a, rules)["job"])
