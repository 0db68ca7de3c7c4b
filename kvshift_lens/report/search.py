"""Budget-aware search under the capacity protocol: which runs of a study's full grid to train next.

A full grid (every family × width × learning rate × seed) spends most of its compute where models fail:
a failed cell-seed needs every learning rate at the full budget, while a success stops at the threshold.
Two searches train a subset and keep the protocol's per-cell results (`protocol.cell_status`) and
frontier (`protocol.frontier`):

* **Success-first learning rates**: per cell and seed, the learning rates in a fixed order (the order the
  experiment file lists them), the next one only while none has succeeded. The protocol's per-seed outcome
  is "success" as soon as any learning rate succeeds and otherwise depends on all of them, so stopping at
  the first success changes no outcome; only which of several succeeding rates is reported as the best (the
  earliest to the threshold in a full grid) can differ. Unlike successive halving, no rate is dropped before
  its run has ended, so a late phase change is never cut off.
* **Width scan** (`next_width`): per family, the widths from the narrowest up until a width succeeds. The
  protocol's frontier (`protocol.frontier`) depends only on the widths up to the narrowest success (which one that
  is, and which narrower ones are censored), so the scan returns the full grid's frontier, status and bounds on
  *every* status pattern, success monotone in width or not — a bisection cannot: it settles the widths below a
  failure by assuming they fail too, which a censored width below a failed one (or any non-monotone pattern)
  breaks (`tests/test_search.py` enumerates all 3^5 status patterns of a 5-width grid). Widths above the
  narrowest success are never needed; a family that fails everywhere costs every width, as in the full grid.
  `monotonicity_violations` lists visited widths that contradict monotonicity (evidence only: nothing relies on it);
  `searched_frontier` bounds the frontier of a scan that has not finished.

`plan_round(jobs, runs, ...)` combines both into the jobs of the next round (resumable: a planned job that
did not finish is planned again); a study runs rounds until it returns none (`experiments/mixers.py`).
`tests/test_search.py` checks the searches against the full grid on synthetic outcome grids.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import pandas as pd

from kvshift_lens.report.protocol import FOUND, UPPER_BOUND, Protocol, cell_results, cell_status, frontier
from kvshift_lens.report.verdicts import CENSORED, SUCCESS

SCAN, GRID = "scan", "grid"  # search modes of `plan_round`


def next_width(grid: Sequence[float], status: Mapping[float, str]) -> Optional[float]:
    """The next width of one family to train, or None when its frontier is settled on `grid`.

    `status` maps the widths decided so far to their cell status (success / failure / censored). The narrowest
    width not yet decided below the narrowest success (every width when none succeeded): the full grid's frontier
    depends on exactly those widths and the narrowest success.
    """
    ok = [float(w) for w, st in status.items() if st == SUCCESS]
    top = min(ok) if ok else math.inf
    open_ = sorted(float(w) for w in grid if float(w) < top and float(w) not in status)
    return open_[0] if open_ else None


def lr_order(jobs: pd.DataFrame, lr: str) -> list[float]:
    """The learning rates in the order the jobs first list them (the experiment file's order)."""
    return [float(x) for x in dict.fromkeys(jobs[lr].astype(float))]


def _seed_state(runs: pd.DataFrame, lrs: Sequence[float], p: Protocol) -> tuple[bool, Optional[float]]:
    """(decided, next lr) of one cell-seed from its finished runs (none: the first lr): decided once a run
    succeeded or every lr ran."""
    if (runs["outcome"] == SUCCESS).any():
        return True, None
    tried = set(runs[p.lr])
    untried = [x for x in lrs if x not in tried]
    return (not untried), (untried[0] if untried else None)


def _normalised(frame: pd.DataFrame, family: Sequence[str], width: str, p: Protocol) -> pd.DataFrame:
    """Key columns in one comparable form: widths and learning rates as floats, family values and seeds as text."""
    return frame.assign(**{k: frame[k].astype(str) for k in [*family, p.seed]},
                        **{k: frame[k].astype(float) for k in (width, p.lr)})


def plan_round(jobs: pd.DataFrame, runs: pd.DataFrame, family: Sequence[str], width: str, p: Protocol = Protocol(),
               search: str = SCAN) -> pd.DataFrame:
    """The rows of `jobs` to train next (empty: the study is complete).

    `jobs`: one row per job of the full grid with the `family` columns, `width`, `p.lr` and `p.seed` (plus
    anything else, e.g. the override list); leave out jobs that cannot run (a failed run), and their cell-seed
    is decided by the learning rates that remain. `runs`: `protocol.run_outcomes` rows of the *finished* runs with
    the same columns. `search`: SCAN (success-first learning rates and the width scan, module doc)
    or GRID (every job that has not finished).
    """
    if search not in (SCAN, GRID):
        raise ValueError(f"search={search!r}: use {SCAN!r} or {GRID!r}")
    keys = [*family, width, p.lr, p.seed]
    njobs, nruns = _normalised(jobs, family, width, p), _normalised(runs, family, width, p)
    done = set(map(tuple, nruns[keys].to_numpy()))
    if search == GRID:
        return jobs[[tuple(r) not in done for r in njobs[keys].to_numpy()]]
    lrs = lr_order(njobs, p.lr)
    chosen: list = []
    for fam, fjobs in njobs.groupby(list(family), sort=False):
        mine = nruns[(nruns[list(family)] == pd.Series(dict(zip(family, fam if isinstance(fam, tuple) else (fam,))))).all(axis=1)]
        seeds = list(dict.fromkeys(fjobs[p.seed]))
        plan, status = [], {}
        for w in fjobs[width].unique():
            wruns = mine[mine[width] == w]
            if wruns.empty:
                continue
            wjobs = fjobs[fjobs[width] == w]
            states = {s: _seed_state(wruns[wruns[p.seed] == s], [x for x in lrs if x in set(wjobs[wjobs[p.seed] == s][p.lr])], p)
                      for s in seeds}
            if all(decided for decided, _ in states.values()):
                cells = cell_results(wruns, [*family, width], p)
                status[w] = cell_status(cells, [*family, width], p)["status"].iloc[0]
            else:  # an open width: each undecided seed tries its next learning rate
                plan += [(w, s, nxt) for s, (decided, nxt) in states.items() if not decided]
        if not plan:
            w = next_width(fjobs[width].unique(), status)
            plan = [] if w is None else [(w, s, lrs[0]) for s in seeds]
        for w, s, x in plan:
            chosen += list(fjobs.index[(fjobs[width] == w) & (fjobs[p.seed] == s) & (fjobs[p.lr] == x)])
    return jobs.loc[chosen]


def monotonicity_violations(status: pd.DataFrame, family: Sequence[str], width: str,
                             outcomes: Sequence[str] = ("failure",)) -> pd.DataFrame:
    """`protocol.cell_status` rows of a family whose status is one of `outcomes` at a width above one where it
    succeeded: failed (plateaued) cells there are evidence that success is not monotone in width; with censored
    ones too, the widths where monotonicity is not *shown* (empty when none was seen; the width scan does not
    assume it)."""
    rows = []
    for _, g in status.groupby(list(family), sort=False, dropna=False):
        ok = g.loc[g["status"] == SUCCESS, width].astype(float)
        if len(ok):
            rows.append(g[g["status"].isin(list(outcomes)) & (g[width].astype(float) > ok.min())])
    return pd.concat(rows) if rows else status.iloc[:0]


def _fmt(x: float) -> str:
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.3g}"


def searched_frontier(status: pd.DataFrame, family: Sequence[str], width: str, grid: Sequence[float]) -> pd.DataFrame:
    """`protocol.frontier` of cells visited by a search over `grid`, with `lo` also covering the widths it did not
    train below the frontier (undetermined: nothing about a width is inferred from another's status). On a full grid,
    or once the width scan has finished, this is `protocol.frontier`."""
    table = frontier(status, family, width)
    widths = sorted(float(w) for w in grid)
    for i, row in table.iterrows():
        mine = status[(status[list(family)] == row[list(family)]).all(axis=1)]
        seen = dict(zip(mine[width].astype(float), mine["status"]))
        hi = row["hi"]
        open_ = [w for w in widths if w < hi and (w not in seen or seen[w] == CENSORED)]
        if all(w in seen for w in open_):
            continue  # every width below the frontier was trained: protocol.frontier's bounds stand
        if row["frontier_status"] in (FOUND, UPPER_BOUND):
            lo = 0.0 if open_[0] == widths[0] else open_[0]  # the frontier may lie at or below the narrowest open width
            kind, text = UPPER_BOUND, f"≤ {_fmt(hi)}"
        else:
            lo = open_[0]
            kind, text = CENSORED, f"≥ {_fmt(lo)} (censored)" if any(st == CENSORED for st in seen.values()) \
                else f"≥ {_fmt(lo)} (not reached)"
        table.loc[i, ["lo", "frontier_status", "text"]] = [lo, kind, text]
    return table
