"""The capacity protocol: does a configuration learn a task, judged at its best learning rate.

A fixed learning rate and step budget measure optimisation, not capacity. Following Zoology
(Arora et al. 2023, "the best of 4 learning rates per cell"), every *cell* (a configuration: arch,
depth, width, heads, length, or whatever keys a study passes) is trained per seed at >= 3 learning
rates spanning >= 10x, and judged by its best one:

1. **Per run** (`run_outcomes`): *success* if the metric reaches `threshold` at an evaluation; else *failure*
   if it has plateaued — the upper confidence bound of its tail slope, projected over a doubling of its budget,
   lies below `plateau_gain` (`report.plateau`, the plateau rule, which weighs the slope against the run's own
   evaluation noise) — or diverged (the trainer's `status`); else *censored*: possibly still improving when the
   budget ran out, so the run says nothing about capacity and is never counted as a failure.
2. **Per cell and seed** (`cell_results`): a success if any learning rate succeeds (the earliest one is reported);
   else censored if any learning rate is censored (that rate might still succeed); else a failure. The reported
   run is the earliest success, else the censored or failed run with the highest best metric; time to threshold as
   right-censored data.
3. **Per cell** (`cell_status`): *success* when >= `quorum` (2/3) of seeds succeed, *failure* when that
   is impossible even if every censored seed succeeded, else *censored*.
4. **Frontier** (`frontier`): within a family (every cell key but the width), the smallest width whose
   cell succeeds, with its status ("≤ w" when that is the smallest width tried: the true frontier may be lower);
   `frontier_trend` orders frontiers along another key (sequence length) as "grows", "flat", "shrinks" or
   "undetermined" from the intervals they leave open.

Everything takes column names from the caller (`Protocol` fields and `cell_keys`), so a study with
its own cell keys (a `mixer` or `task` column, another metric) uses it without edits. See
docs/protocol.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from kvshift_lens.report.plateau import tail_fit
from kvshift_lens.report.verdicts import CENSORED, FAILURE, SUCCESS
from kvshift_lens.training.train_config import TrainConfig


@dataclass(frozen=True)
class Protocol:
    """Thresholds of the protocol and the column names it reads."""

    threshold: float = 0.9  # success: metric >= threshold at some evaluation
    plateau_window: float = 0.5  # fraction of a run's steps whose evaluations the plateau rule fits (its tail)
    plateau_gain: float = 0.01  # plateaued when the tail slope's upper bound, projected, lies below this gain
    plateau_horizon: float = 1.0  # the projection, in multiples of the run's steps (1: a doubling of the budget)
    plateau_alpha: float = 0.025  # the slope bound is the upper end of a two-sided 95 % interval
    quorum: float = 2 / 3  # fraction of seeds that must succeed for a cell to succeed
    min_lrs: int = 3  # learning rates per cell and seed
    min_lr_span: float = 10.0  # max lr / min lr per cell and seed
    metric: str = "induction_acc"
    step: str = "step"
    lr: str = "train.lr"
    seed: str = "seed"
    run: str = "run"
    status: str = "status"  # the trainer's run status, if the frame has it: "diverged" runs cannot improve
    eval_size: str = "train.eval_size"  # held-out sequences per evaluation, if the frame has it (else the default)


RUN_COLUMNS = ["final_step", "final", "best", "steps_to_threshold", "gain_last", "tail_slope", "tail_noise",
               "projected_gain", "outcome", "censored"]
CELL_COLUMNS = ["lr", "n_lrs", "lr_span", "lr_at_edge", "outcome", "censored", "final", "best",
                "steps_to_threshold", "time", "event", "run"]


def run_outcomes(curves: pd.DataFrame, keys: Sequence[str], p: Protocol = Protocol()) -> pd.DataFrame:
    """One row per run of a tidy learning-curve frame (run × evaluation step): `keys` (cell keys, lr, seed,
    anything constant per run), then RUN_COLUMNS. `outcome` is success / failure / censored (module doc);
    `gain_last` (running-best gain over the tail) is descriptive, the label comes from `plateau.tail_fit`."""
    rows = []
    for run, g in curves.sort_values(p.step).groupby(p.run, sort=True):
        diverged = p.status in g and (g[p.status] == "diverged").any()
        eval_size = float(g[p.eval_size].iloc[0]) if p.eval_size in g else float(TrainConfig.eval_size)
        g = g[g[p.metric].notna()]
        if g.empty:
            continue
        steps, metric = g[p.step].to_numpy(float), g[p.metric].to_numpy(float)
        final_step = steps[-1]
        hit = steps[metric >= p.threshold]
        start = (1 - p.plateau_window) * final_step
        before, window = metric[steps < start], metric[steps >= start]
        gain = float(metric.max() - before.max()) if len(before) and len(window) else math.nan
        tail = tail_fit(steps, metric, eval_size, p.plateau_window, p.plateau_horizon, p.plateau_gain, p.plateau_alpha)
        outcome = SUCCESS if len(hit) else FAILURE if diverged else tail.label
        rows.append({p.run: run, **{k: g[k].iloc[0] for k in keys}, "final_step": int(final_step),
                     "final": float(metric[-1]), "best": float(metric.max()),
                     "steps_to_threshold": float(hit[0]) if len(hit) else math.nan, "gain_last": gain,
                     "tail_slope": tail.slope, "tail_noise": tail.noise, "projected_gain": tail.projected_gain,
                     "outcome": outcome, "censored": outcome == CENSORED})
    return pd.DataFrame(rows, columns=[p.run, *keys, *RUN_COLUMNS])


def cell_results(runs: pd.DataFrame, cell_keys: Sequence[str], p: Protocol = Protocol()) -> pd.DataFrame:
    """Per cell and seed, the run at the best learning rate (`run_outcomes` rows in, CELL_COLUMNS out).

    Outcome: a success if any learning rate succeeds; else censored if any is censored (it might still succeed, so
    the cell-seed has not failed); else a failure. The reported run: the earliest success (ties to the higher best
    metric); else the highest best metric among the runs with the cell-seed's outcome. `time`/`event` give time to
    threshold as right-censored data: the best lr's steps to threshold, or the longest run of the cell and seed as
    a censored time. `lr_at_edge` flags a reported lr at the end of the grid (the grid may need to widen).
    """
    rank = {SUCCESS: 0, CENSORED: 1, FAILURE: 2}
    rows = []
    for key, g in runs.groupby([*cell_keys, p.seed], sort=True, dropna=False):
        ranked = g.assign(_rank=g["outcome"].map(rank), _t=g["steps_to_threshold"].fillna(np.inf)).sort_values(
            ["_rank", "_t", "best"], ascending=[True, True, False])
        best = ranked.iloc[0]
        lrs = np.sort(g[p.lr].astype(float).unique())
        event = best["outcome"] == SUCCESS
        rows.append({**dict(zip([*cell_keys, p.seed], key)), "lr": float(best[p.lr]), "n_lrs": len(lrs),
                     "lr_span": float(lrs[-1] / lrs[0]) if lrs[0] > 0 else math.nan,
                     "lr_at_edge": len(lrs) > 1 and float(best[p.lr]) in (lrs[0], lrs[-1]),
                     "outcome": best["outcome"], "censored": best["outcome"] == CENSORED,
                     "final": best["final"], "best": best["best"], "steps_to_threshold": best["steps_to_threshold"],
                     "time": float(best["steps_to_threshold"]) if event else float(g["final_step"].max()),
                     "event": bool(event), "run": best[p.run]})
    return pd.DataFrame(rows, columns=[*cell_keys, p.seed, *CELL_COLUMNS])


def lr_grid_violations(cells: pd.DataFrame, p: Protocol = Protocol()) -> pd.DataFrame:
    """Rows of `cell_results` whose learning-rate grid is too small (< min_lrs rates or a span < min_lr_span)."""
    return cells[(cells["n_lrs"] < p.min_lrs) | ~(cells["lr_span"] >= p.min_lr_span)]


def cell_status(cells: pd.DataFrame, cell_keys: Sequence[str], p: Protocol = Protocol()) -> pd.DataFrame:
    """Per cell: n_seeds, n_success, n_failure, n_censored and `status` (success / failure / censored)."""
    rows = []
    for key, g in cells.groupby(list(cell_keys), sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        n, wins, open_ = len(g), int((g["outcome"] == SUCCESS).sum()), int((g["outcome"] == CENSORED).sum())
        status = SUCCESS if wins >= p.quorum * n else FAILURE if wins + open_ < p.quorum * n else CENSORED
        rows.append({**dict(zip(cell_keys, key)), "n_seeds": n, "n_success": wins,
                     "n_failure": n - wins - open_, "n_censored": open_, "status": status})
    return pd.DataFrame(rows, columns=[*cell_keys, "n_seeds", "n_success", "n_failure", "n_censored", "status"])


FOUND, UPPER_BOUND, NONE = "found", "upper bound", "none"  # frontier status (plus CENSORED)


def _fmt(x: float) -> str:
    return "nan" if x != x else (f"{x:.0f}" if float(x).is_integer() else f"{x:.3g}")


def frontier(status: pd.DataFrame, family_keys: Sequence[str], width: str = "d_model") -> pd.DataFrame:
    """Per family (`cell_status` rows grouped by `family_keys`), the smallest `width` whose cell succeeds.

    `frontier_status`: found (every smaller width tried failed), upper bound ("≤ w": a smaller width is censored,
    or w is the smallest width tried, so the true frontier may be lower; lo = 0 when it may lie below the grid),
    censored (no width succeeded, some censored: the frontier may lie inside the grid), none (every width failed:
    the frontier is above the widest tried). `lo`/`hi` bound the true frontier (hi = inf when none succeeded);
    `frontier` is the narrowest succeeding width, `text` a display string.
    """
    rows = []
    for key, g in status.groupby(list(family_keys), sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        g = g.sort_values(width)
        widths = g[width].to_numpy(float)
        ok = g["status"].to_numpy() == SUCCESS
        open_ = g["status"].to_numpy() == CENSORED
        if ok.any():
            w = widths[ok.argmax()]
            narrowest = float(widths[(open_ & (widths < w)) | (widths == w)].min())  # where the frontier may be
            kind = FOUND if narrowest == w and w > widths.min() else UPPER_BOUND
            lo, hi = (0.0 if narrowest == widths.min() else narrowest), w  # 0: it may lie below the grid
            text = _fmt(w) if kind == FOUND else f"≤ {_fmt(w)}"
        elif open_.any():
            kind, lo, hi, w = CENSORED, float(widths[open_].min()), math.inf, math.nan
            text = f"≥ {_fmt(lo)} (censored)"
        else:
            kind, lo, hi, w = NONE, float(np.nextafter(widths.max(), math.inf)), math.inf, math.nan
            text = f"> {_fmt(widths.max())}"
        rows.append({**dict(zip(family_keys, key)), "frontier": w, "frontier_status": kind, "lo": lo, "hi": hi,
                     "min_width": float(widths.min()), "max_width": float(widths.max()), "text": text})
    return pd.DataFrame(rows, columns=[*family_keys, "frontier", "frontier_status", "lo", "hi", "min_width",
                                       "max_width", "text"])


GROWS, FLAT, SHRINKS, UNDETERMINED = "grows", "flat", "shrinks", "undetermined"


def frontier_trend(frontiers: pd.DataFrame, group_keys: Sequence[str], along: str = "seq_len") -> pd.DataFrame:
    """Per group, how the frontier moves as `along` increases, from the [lo, hi] intervals of `frontier`.

    shrinks: some longer setting's interval lies entirely below a shorter one's; grows: never shrinks and
    some interval lies entirely above an earlier one; flat: every frontier found and equal; else
    undetermined (overlapping intervals: censored or bounded frontiers). Also the log-log slope of the
    found frontiers (NaN with fewer than two).
    """
    rows = []
    for key, g in frontiers.groupby(list(group_keys), sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        g = g.sort_values(along)
        if len(g) < 2:
            continue
        lo, hi = g["lo"].to_numpy(float), g["hi"].to_numpy(float)
        pairs = [(i, j) for i in range(len(g)) for j in range(i + 1, len(g))]
        down = any(hi[j] < lo[i] for i, j in pairs)
        up = any(lo[j] > hi[i] for i, j in pairs)
        exact = (g["frontier_status"] == FOUND).to_numpy()
        if down:
            trend = SHRINKS
        elif up:
            trend = GROWS
        elif exact.all() and np.all(lo == lo[0]):
            trend = FLAT
        else:
            trend = UNDETERMINED
        found = g[exact]
        slope = (round(float(np.polyfit(np.log2(found[along].astype(float)), np.log2(found["frontier"]), 1)[0]), 6)
                 + 0.0 if len(found) >= 2 else math.nan)
        rows.append({**dict(zip(group_keys, key)), "trend": trend, "slope": slope,
                     along: list(g[along]), "frontiers": list(g["text"])})
    return pd.DataFrame(rows, columns=[*group_keys, "trend", "slope", along, "frontiers"])
