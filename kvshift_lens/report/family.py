"""The local-mixing family study: which one-layer mixer learns induction and associative recall, at what width,
and through which path (docs/family.md).

Runs come from one experiment file (`conf/experiment/mixers*.yaml`) and are identified by their hydra
overrides: a **family** is (task, mixer, mixer sides, layers), its frontier is taken over `model.d_model`
under the capacity protocol (`report.protocol`), and `report.search` decides which runs of the full grid
are trained. Everything below is a function of tidy frames; the verdict rules state their rule and baseline
and are unit-tested on synthetic frames for every outcome (`tests/test_family.py`).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from kvshift_lens.training import provenance, sweeps
from kvshift_lens.training.runs import run_status
from kvshift_lens.models.config import ModelConfig
from kvshift_lens.report.claims import EXPECTATIONS, plateau_text
from kvshift_lens.report.protocol import Protocol, cell_results, cell_status, lr_grid_violations, run_outcomes
from kvshift_lens.report.search import monotonicity_violations, searched_frontier
from kvshift_lens.report.verdicts import (
    CENSORED, INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, SUCCESS, Verdict, all_of, cannot_learn_outcome,
    combine, learns_outcome,
)

FAMILY = ["task", "model/mixer", "model.mixer.sides", "model.n_layers"]  # override keys: one frontier each
WIDTH = "model.d_model"
DEFAULTS = {"model/mixer": "kv_shift", "model.mixer.sides": "", "model.n_layers": "1"}  # conf/model/base.yaml
PROTOCOL = Protocol(lr="train.lr", seed="seed", metric="induction_acc")
RECALL_TASKS = ("induction", "mqar")  # need a previous-token path in one layer; stacked_mqar is the control
CONTROL_TASK = "stacked_mqar"
PAPER = "kv_shift"  # the arm of Xu et al.'s mixer (K and V)
VANILLA_1L, VANILLA_2L = "vanilla 1L", "vanilla 2L"
HEADS_FILE = "family_heads.csv"  # per analysed run, cached beside its checkpoints
HEAD_BATCH = 256  # task sequences per mechanism analysis


def parse_overrides(overrides: Sequence[str]) -> dict[str, str]:
    """`["task=mqar", "model/mixer=canon", ...]` -> {"task": "mqar", "model/mixer": "canon", ...}."""
    return dict(o.split("=", 1) for o in overrides)


def arm_label(mixer: str, sides: str, n_layers: str) -> str:
    """A family's model in one word: `kv_shift`, `kv_shift[v]` (sides), `vanilla 1L`, `vanilla 2L`."""
    if mixer == "none":
        return f"vanilla {n_layers}L"
    return mixer + (f"[{sides}]" if sides else "") + ("" if n_layers == "1" else f" {n_layers}L")


def _keys(overrides: dict[str, str]) -> dict[str, str]:
    keys = {k: overrides.get(k, DEFAULTS.get(k, "")) for k in [*FAMILY, WIDTH, PROTOCOL.lr, PROTOCOL.seed]}
    return {**keys, "arm": arm_label(keys["model/mixer"], keys["model.mixer.sides"], keys["model.n_layers"])}


def job_frame(spec: dict) -> pd.DataFrame:
    """One row per job of the experiment's full grid: FAMILY, WIDTH, lr, seed, `arm` and the override list `job`."""
    jobs = sweeps.expand_jobs(spec)
    return pd.DataFrame([{**_keys(parse_overrides(j)), "job": j} for j in jobs])


def job_runs(sweep_dir: Path, jobs: pd.DataFrame) -> dict[Path, str]:
    """The run directories of `jobs` under `sweep_dir` (strays from other grids left out) and their status
    (`analysis.run_status`: completed, diverged, failed, incomplete)."""
    return {d: run_status(d) for d in sweeps.runs_of_jobs(sweep_dir, list(jobs["job"]))}


def failed_jobs(sweep_dir: Path, jobs: pd.DataFrame) -> pd.Index:
    """Index of the `jobs` whose run failed with an error (error.txt): they are not planned again."""
    failed = {sweeps.identity(sweeps.job_overrides(d)) for d, st in job_runs(sweep_dir, jobs).items() if st == "failed"}
    return jobs.index[[sweeps.identity(j) in failed for j in jobs["job"]]]


def finished_curves(sweep_dir: Path, jobs: pd.DataFrame) -> pd.DataFrame:
    """Learning curves (metrics.csv rows) of the finished runs of `jobs` (completed, or diverged: a failure the
    protocol counts) under `sweep_dir`, with the job's keys, `run` (relative path), `status`, `chance`, `budget` and
    `train.eval_size` (the plateau rule's noise floor)."""
    frames = []
    for run_dir, st in job_runs(sweep_dir, jobs).items():
        if st not in ("completed", "diverged"):
            continue
        summary = json.loads((run_dir / "summary.json").read_text())
        curve = pd.read_csv(run_dir / "metrics.csv")
        keys = _keys(parse_overrides(sweeps.job_overrides(run_dir)))
        frames.append(curve.assign(run=str(run_dir.relative_to(sweep_dir)), status=st, chance=summary["chance_accuracy"],
                                   budget=summary["config"]["train"]["steps"],
                                   **{PROTOCOL.eval_size: summary["config"]["train"]["eval_size"]}, **keys))
    columns = ["run", "status", *FAMILY, WIDTH, PROTOCOL.lr, PROTOCOL.seed, "arm", "chance", "budget",
               PROTOCOL.eval_size, "step", "induction_acc", "train_seconds"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


@lru_cache(maxsize=None)
def _reach(model_json: str) -> tuple[int, int]:
    from kvshift_lens.models.coefficients import mixer_reach

    reach = mixer_reach(ModelConfig.from_dict(json.loads(model_json)))
    return reach["k"], reach["v"]


def run_table(curves: pd.DataFrame, sweep_dir: Path, protocol: Protocol = PROTOCOL) -> pd.DataFrame:
    """One row per finished run: keys, protocol outcome (`run_outcomes`), `chance`, `budget`, `train_seconds`, and
    how far back the key and the value read through the mixers (`key_reach`, `value_reach`; models.mixer_reach)."""
    keys = [*FAMILY, WIDTH, protocol.lr, protocol.seed, "arm", "chance", "budget"]
    runs = run_outcomes(curves, keys, protocol)
    seconds = curves.sort_values("step").groupby("run")["train_seconds"].last()
    reach = [_reach(json.dumps(json.loads((sweep_dir / r / "config.json").read_text())["model"], sort_keys=True))
             for r in runs["run"]]
    return runs.assign(train_seconds=runs["run"].map(seconds), key_reach=[r[0] for r in reach],
                       value_reach=[r[1] for r in reach])


def typed(table: pd.DataFrame) -> pd.DataFrame:
    """Width, learning rate, layers and seed as numbers (overrides arrive as text)."""
    return table.assign(**{WIDTH: table[WIDTH].astype(float).astype(int), PROTOCOL.lr: table[PROTOCOL.lr].astype(float),
                           "model.n_layers": table["model.n_layers"].astype(int),
                           PROTOCOL.seed: table[PROTOCOL.seed].astype(int)})


def cells(runs: pd.DataFrame, protocol: Protocol = PROTOCOL) -> pd.DataFrame:
    """Per cell (family × width) and seed, the best learning rate's run (`protocol.cell_results`)."""
    best = cell_results(runs, [*FAMILY, WIDTH], protocol)
    extra = runs.groupby([*FAMILY, WIDTH], dropna=False)[["arm", "chance", "key_reach", "value_reach"]].first()
    return best.join(extra, on=[*FAMILY, WIDTH])


def status(cell_table: pd.DataFrame, protocol: Protocol = PROTOCOL) -> pd.DataFrame:
    """Per cell: seeds succeeding / failing / censored at their best lr, and the cell's status."""
    return cell_status(cell_table, [*FAMILY, WIDTH], protocol)


def families(cell_table: pd.DataFrame, grid: Sequence[float], protocol: Protocol = PROTOCOL) -> pd.DataFrame:
    """One row per family: `arm`, reach, frontier over the width `grid` (`search.searched_frontier`: frontier,
    frontier_status, lo, hi, text),
    the widest width trained with its seeds' outcomes and mean best accuracy, and the rule inputs `learns`
    (`verdicts.learns_outcome` at the frontier, or at the widest width when there is none) and `cannot_learn`
    (`verdicts.cannot_learn_outcome` at the widest width)."""
    front = searched_frontier(status(cell_table, protocol), FAMILY, WIDTH, grid)
    rows = []
    for key, g in cell_table.groupby(FAMILY, sort=False, dropna=False):
        f = front[(front[FAMILY] == pd.Series(dict(zip(FAMILY, key)))).all(axis=1)].iloc[0]
        widest = g[g[WIDTH] == g[WIDTH].max()]
        at = g[g[WIDTH] == f["frontier"]] if f["frontier"] == f["frontier"] else widest
        outcomes = list(widest["outcome"])
        rows.append({**dict(zip(FAMILY, key)), "arm": g["arm"].iloc[0], "key_reach": int(g["key_reach"].iloc[0]),
                     "value_reach": int(g["value_reach"].iloc[0]), "chance": float(g["chance"].iloc[0]),
                     **f[["frontier", "frontier_status", "lo", "hi", "text"]].to_dict(),
                     "widths": ",".join(str(int(w)) for w in sorted(g[WIDTH].unique())),
                     "widest": int(widest[WIDTH].iloc[0]), "widest_outcomes": outcomes_text(outcomes),
                     "widest_best_acc": float(widest["best"].mean()),
                     "learns": learns_outcome(list(at["outcome"]), protocol.quorum),
                     "cannot_learn": cannot_learn_outcome(outcomes)})
    return pd.DataFrame(rows)


def outcomes_text(outcomes: Sequence[str]) -> str:
    """"2/3 (1 censored)": seeds succeeding out of all, and how many are censored."""
    k, c = sum(o == SUCCESS for o in outcomes), sum(o == CENSORED for o in outcomes)
    return f"{k}/{len(outcomes)}" + (f" ({c} censored)" if c else "")


# --------------------------------------------------------------------------- verdict rules


def _one(fam: pd.DataFrame, task: str, arm: str) -> Optional[pd.Series]:
    rows = fam[(fam["task"] == task) & (fam["arm"] == arm)]
    return rows.iloc[0] if len(rows) else None


def _key_mixers(fam: pd.DataFrame, task: str) -> pd.DataFrame:
    """One-layer families of `task` whose key reads an earlier token through the mixer."""
    return fam[(fam["task"] == task) & (fam["model.n_layers"].astype(int) == 1) & (fam["key_reach"] > 0)]


def key_mixing_verdict(fam: pd.DataFrame, task: str) -> Verdict:
    """"Every mixer that puts an earlier token into the key gives one-layer <task>; one vanilla layer does not."""
    rule = ("each one-layer mixer whose key reads an earlier token (mixer_reach k ≥ 1) succeeds (≥ 2/3 seeds reach "
            "90 % at their best lr) at some width; reproduced if all do, partly if some")
    baseline = "one vanilla layer at the widest width must fail (every seed plateaus below 90 %); if it learns, the mixer is not what gives it"
    mixers, base = _key_mixers(fam, task), _one(fam, task, VANILLA_1L)
    evidence = [f"{r.arm}: frontier {r.text}" for r in mixers.itertuples()]
    if base is None or mixers.empty:
        return Verdict(INCONCLUSIVE, rule, baseline, evidence, "not tested")
    evidence.append(f"{VANILLA_1L} at d_model {base.widest}: {base.widest_outcomes} succeed, best acc "
                    f"{base.widest_best_acc:.2f} (chance {base.chance:.3f})")
    if base.cannot_learn == NOT_REPRODUCED:
        return Verdict(NOT_REPRODUCED, rule, baseline, evidence, "one vanilla layer learns it too")
    if base.cannot_learn == INCONCLUSIVE:
        return Verdict(INCONCLUSIVE, rule, baseline, evidence, "baseline censored")
    return Verdict(combine(list(mixers["learns"])), rule, baseline, evidence)


def value_only_verdict(fam: pd.DataFrame, task: str) -> Verdict:
    """"Mixing only the values does not give one-layer <task>" — `claims.EXPECTATIONS["value_only"]`, the same
    expectation fig8's value-only shift is judged against."""
    expectation = EXPECTATIONS["value_only"]
    rule = ("every one-layer mixer that mixes values but not keys (mixer_reach k = 0, v ≥ 1) fails at the widest width "
            "(all seeds plateau below the threshold); not reproduced if any seed succeeds")
    baseline = (f"expectation: {expectation.text} ({expectation.source}); positive control: {PAPER} (keys and values) "
                "succeeds with the same budget at some width")
    rows = fam[(fam["task"] == task) & (fam["model.n_layers"].astype(int) == 1) & (fam["key_reach"] == 0)
               & (fam["value_reach"] > 0)]
    control = _one(fam, task, PAPER)
    evidence = [f"{r.arm} at d_model {r.widest}: {r.widest_outcomes} succeed, best acc {r.widest_best_acc:.2f}"
                for r in rows.itertuples()]
    if rows.empty or control is None:
        return Verdict(INCONCLUSIVE, rule, baseline, evidence, "not tested")
    evidence.append(f"{PAPER}: frontier {control.text}")
    outcome = all_of(list(rows["cannot_learn"]))
    if outcome == REPRODUCED and control.learns != REPRODUCED:
        return Verdict(INCONCLUSIVE, rule, baseline, evidence, "no positive control")
    return Verdict(outcome, rule, baseline, evidence)


def control_verdict(fam: pd.DataFrame) -> Verdict:
    """"One vanilla layer recalls from stacked key-value tokens but not from MQAR's separate ones."""
    rule = (f"{VANILLA_1L} succeeds on {CONTROL_TASK} at some width and fails on mqar at the widest width "
            "(all seeds plateau below 90 %)")
    baseline = "chance accuracy and the 90 % threshold; the same model, budget and protocol on both tasks"
    stacked, mqar = _one(fam, CONTROL_TASK, VANILLA_1L), _one(fam, "mqar", VANILLA_1L)
    if stacked is None or mqar is None:
        return Verdict(INCONCLUSIVE, rule, baseline, [], "not tested")
    evidence = [f"{CONTROL_TASK}: frontier {stacked.text} (chance {stacked.chance:.3f})",
                f"mqar at d_model {mqar.widest}: {mqar.widest_outcomes} succeed, best acc {mqar.widest_best_acc:.2f} "
                f"(chance {mqar.chance:.3f})"]
    return Verdict(all_of([stacked.learns, mqar.cannot_learn]), rule, baseline, evidence)


def special_verdict(fam: pd.DataFrame, task: str) -> Verdict:
    """"KV shift needs less width than every other key-mixing mixer" (is KV shift special?)."""
    rule = (f"{PAPER}'s frontier interval lies entirely below every other key-mixing mixer's; not reproduced if some "
            "other mixer's interval lies at or below it (it needs no more width)")
    baseline = "the other one-layer mixers whose key reads an earlier token, same protocol and budget"
    kv, others = _one(fam, task, PAPER), _key_mixers(fam, task)
    others = others[others["arm"] != PAPER]
    if kv is None or others.empty:
        return Verdict(INCONCLUSIVE, rule, baseline, [], "not tested")
    evidence = [f"{r.arm}: {r.text}" for r in [kv, *others.itertuples()]]
    if (others["hi"] <= kv["lo"]).any():
        return Verdict(NOT_REPRODUCED, rule, baseline, evidence)
    if np.isfinite(kv["hi"]) and (kv["hi"] < others["lo"]).all():
        return Verdict(REPRODUCED, rule, baseline, evidence)
    return Verdict(INCONCLUSIVE, rule, baseline, evidence, "frontiers overlap or are not reached")


def depth_verdict(fam: pd.DataFrame, task: str) -> Verdict:
    """"One mixing layer needs no more width than two vanilla layers." Per key-mixing mixer, from frontier intervals."""
    rule = ("per key-mixing mixer: reproduced if its frontier interval's top is ≤ the bottom of two vanilla layers', "
            "not reproduced if its bottom is above their top, else inconclusive; combined over mixers")
    baseline = f"{VANILLA_2L} (the two-layer circuit), same task, protocol and budget"
    van2, mixers = _one(fam, task, VANILLA_2L), _key_mixers(fam, task)
    if van2 is None or mixers.empty:
        return Verdict(INCONCLUSIVE, rule, baseline, [], "not tested")
    parts = [REPRODUCED if r.hi <= van2["lo"] else NOT_REPRODUCED if r.lo > van2["hi"] else INCONCLUSIVE
             for r in mixers.itertuples()]
    evidence = [f"{VANILLA_2L}: {van2['text']}"] + [f"{r.arm}: {r.text} ({p})" for r, p in zip(mixers.itertuples(), parts)]
    return Verdict(combine(parts), rule, baseline, evidence)


def mechanism_verdict(heads: pd.DataFrame, task: str) -> Verdict:
    """"Every one-layer model that solves <task> through a key-mixing mixer has a mixer-mediated head."""
    rule = ("per mixer: every analysed solving run (best lr, at the frontier and the widest width) has a head that "
            "attends the task's target (≥ 0.3) with prev_key_fraction and own_value_fraction ≥ 0.5 "
            "(circuits.target_heads); combined over mixers")
    baseline = "a head matching the key's own token (direct) or missing the target (none) makes it fail"
    mine = heads[(heads["task"] == task) & (heads["key_reach"] > 0) & (heads["model.n_layers"].astype(int) == 1)]
    if mine.empty:
        return Verdict(INCONCLUSIVE, rule, baseline, [], "no solving one-layer model analysed")
    parts, evidence = [], []
    for arm, g in mine.groupby("arm", sort=True):
        per_run = g.groupby("run")["mechanism"].apply(lambda m: (m == "mixer-mediated").any())
        parts.append(REPRODUCED if per_run.all() else NOT_REPRODUCED)
        evidence.append(f"{arm}: {int(per_run.sum())}/{len(per_run)} runs")
    return Verdict(combine(parts), rule, baseline, evidence)


CLAIMS = {
    "key": "Every mixer that puts an earlier token into the key gives one-layer {task}; one vanilla layer does not.",
    "value": "Mixing only the values does not give one-layer {task} (the expectation fig8's value-only shift is judged by).",
    "control": "One vanilla layer recalls from stacked key-value tokens but not from MQAR's separate key and value tokens.",
    "special": "KV shift needs less width for {task} than every other key-mixing mixer.",
    "depth": "One mixing layer needs no more width for {task} than two vanilla layers.",
    "mechanism": "Every one-layer model that solves {task} through a key-mixing mixer does so with a mixer-mediated head.",
}


def verdicts(fam: pd.DataFrame, heads: pd.DataFrame) -> list[tuple[str, Verdict]]:
    """Every claim of the study with its verdict, in report order."""
    out = []
    for task in RECALL_TASKS:
        out += [(CLAIMS["key"].format(task=task), key_mixing_verdict(fam, task)),
                (CLAIMS["value"].format(task=task), value_only_verdict(fam, task))]
    out.append((CLAIMS["control"], control_verdict(fam)))
    for task in RECALL_TASKS:
        out += [(CLAIMS["special"].format(task=task), special_verdict(fam, task)),
                (CLAIMS["depth"].format(task=task), depth_verdict(fam, task)),
                (CLAIMS["mechanism"].format(task=task), mechanism_verdict(heads, task))]
    return out


def judge(curves: pd.DataFrame, sweep_dir: Path, grid: Sequence[float], heads: pd.DataFrame,
          protocol: Protocol = PROTOCOL) -> dict[str, Verdict]:
    """Every verdict of the study (`verdicts`, by claim) from its learning curves under `protocol`: what
    `report.robustness` recomputes (the mechanism verdicts read `heads`, which no threshold changes)."""
    cell_table = cells(typed(run_table(curves, sweep_dir, protocol)), protocol)
    return dict(verdicts(families(cell_table, grid, protocol), heads))


# --------------------------------------------------------------------------- mechanism of the solving heads


def runs_to_analyse(cell_table: pd.DataFrame, fam: pd.DataFrame) -> pd.DataFrame:
    """The best-lr runs of the succeeding one-layer cell-seeds at each family's frontier width and widest width."""
    picks = []
    for _, f in fam[fam["model.n_layers"].astype(int) == 1].iterrows():
        mine = cell_table[(cell_table[FAMILY] == f[FAMILY]).all(axis=1) & (cell_table["outcome"] == SUCCESS)]
        picks.append(mine[mine[WIDTH].isin([w for w in (f["widest"], f["frontier"]) if w == w])])
    return pd.concat(picks) if picks else cell_table.iloc[:0]


def analyse_run(run_dir: Path, batch_size: int = HEAD_BATCH, seed: int = 0) -> pd.DataFrame:
    """Per head of a run's last checkpoint: `circuits.target_heads` on its task's own batch (`Task.attention_targets`)
    and the unchanged detectors' `induction_score` and `previous_token_score` on `[BOS] r r`; cached in HEADS_FILE."""
    cached = run_dir / HEADS_FILE
    if cached.exists():
        return pd.read_csv(cached)
    import torch

    from kvshift_lens.analysis.circuits import target_heads
    from kvshift_lens.analysis.head_detectors import head_scores
    from kvshift_lens.analysis.emergence import run_checkpoints
    from kvshift_lens.models.checkpoints import load_model
    from kvshift_lens.data.tasks.base import make_task

    steps = run_checkpoints(run_dir)
    model = load_model(steps[max(steps)])
    task = make_task(json.loads((run_dir / "config.json").read_text())["task"])
    batch = task.sample(batch_size, torch.Generator().manual_seed(seed))
    table = target_heads(model, batch.tokens, task.attention_targets(batch))
    standard = head_scores(model, metrics=("induction_score", "previous_token_score"), seed=seed)
    table = table.merge(standard.pivot_table(index=["layer", "head"], columns="metric", values="value").reset_index(),
                        on=["layer", "head"]).assign(step=max(steps))
    table.to_csv(cached, index=False)
    return table


def head_table(sweep_dir: Path, picks: pd.DataFrame) -> pd.DataFrame:
    """`analyse_run` of every picked run (`runs_to_analyse` rows) with its cell keys: one row per run × head."""
    keys = [*FAMILY, WIDTH, PROTOCOL.seed, "lr", "arm", "key_reach", "run"]
    if picks.empty:
        return pd.DataFrame(columns=[*keys, "layer", "head", "mechanism", "target_attention", "prev_key_fraction",
                                     "own_value_fraction", "induction_score", "previous_token_score"])
    analysed = pd.concat([analyse_run(sweep_dir / run).assign(run=run) for run in picks["run"]], ignore_index=True)
    return picks[keys].merge(analysed, on="run")


# --------------------------------------------------------------------------- tables for the report

ARM_ORDER = ["kv_shift", "smeared_key", "primer_dconv", "canon", "token_shift", "short_conv", "kv_shift[v]",
             VANILLA_1L, VANILLA_2L]


def mechanism_summary(heads: pd.DataFrame) -> pd.DataFrame:
    """Per (task, arm): analysed solving runs, how many have each mechanism (their most target-attending head),
    and that head's mean target attention and standard induction score over all of them, and its mean
    prev_key_fraction and own_value_fraction over the runs whose head attends the target (mechanism not "none"):
    the fractions divide by the target's logit margin, meaningless where the target is not attended."""
    cols = ["task", "arm", "analysed", "mechanisms", "target_attention", "prev_key_fraction", "own_value_fraction",
            "induction_score"]
    if heads.empty:
        return pd.DataFrame(columns=cols)
    top = heads.sort_values("target_attention", ascending=False).groupby("run", sort=False).head(1)
    rows = []
    for (task, arm), g in top.groupby(["task", "arm"], sort=True):
        counts = g["mechanism"].value_counts()
        rows.append({"task": task, "arm": arm, "analysed": len(g),
                     "mechanisms": ", ".join(f"{m} {n}/{len(g)}" for m, n in counts.items()),
                     **{c: float(g[c].mean()) for c in ("target_attention", "induction_score")},
                     **{c: float(g.loc[g["mechanism"] != "none", c].mean()) for c in ("prev_key_fraction",
                                                                                        "own_value_fraction")}})
    return pd.DataFrame(rows, columns=cols)


def family_table(fam: pd.DataFrame, heads: pd.DataFrame) -> pd.DataFrame:
    """The study in one table: per task and arm, reach, widths trained, frontier, seeds and mean best accuracy at the
    widest width, and the mechanism of the solving one-layer heads."""
    table = fam.merge(mechanism_summary(heads), on=["task", "arm"], how="left")
    table = table.assign(reach=lambda d: "k " + d["key_reach"].astype(str) + " / v " + d["value_reach"].astype(str),
                         order=lambda d: d["arm"].map({a: i for i, a in enumerate(ARM_ORDER)}).fillna(len(ARM_ORDER)))
    table = table.sort_values(["task", "order"])
    out = table[["task", "arm", "reach", "widths", "text", "widest", "widest_outcomes", "widest_best_acc", "chance",
                 "mechanisms", "target_attention", "prev_key_fraction", "own_value_fraction", "induction_score"]]
    return out.rename(columns={"text": "frontier d_model", "widths": "widths trained", "widest": "widest d_model",
                               "widest_outcomes": "seeds ≥ 90 % (widest)", "widest_best_acc": "best acc (widest)",
                               "mechanisms": "mechanism (solving runs)", "target_attention": "target attn",
                               "prev_key_fraction": "prev-key frac", "own_value_fraction": "own-value frac",
                               "induction_score": "induction score [BOS] r r"})


def outcome_grid(cell_table: pd.DataFrame) -> pd.DataFrame:
    """Per task and arm, "k/n" seeds succeeding at each trained width ("" where the search did not train)."""
    def fmt(g: pd.DataFrame) -> str:
        return outcomes_text(list(g["outcome"]))
    grid = cell_table.groupby(["task", "arm", WIDTH]).apply(fmt, include_groups=False).unstack(WIDTH).fillna("")
    return grid.reset_index()


def protocol_checks(cell_table: pd.DataFrame) -> list[str]:
    """Lines on what the protocol requires of the searched cells: every cell-seed that did not succeed tried
    >= 3 learning rates spanning >= 10× (a success needs one), and where success was not monotone in width."""
    open_ = cell_table[cell_table["outcome"] != SUCCESS]
    bad = lr_grid_violations(open_, PROTOCOL)
    lines = [f"**Protocol check:** {len(open_) - len(bad)} of {len(open_)} cell-seeds without a success tried ≥ "
             f"{PROTOCOL.min_lrs} learning rates spanning ≥ {PROTOCOL.min_lr_span:g}×"
             + (f"; not: {', '.join(f'{r.task} {r.arm} d{r[WIDTH]} seed {r.seed}' for _, r in bad.iterrows())}" if len(bad) else "")
             + "."]
    odd = monotonicity_violations(status(cell_table), FAMILY, WIDTH)
    odd = odd.merge(cell_table[[*FAMILY, "arm"]].drop_duplicates(), on=FAMILY)
    lines.append("Success was monotone in width wherever the search looked (the width scan does not assume it)." if odd.empty else
                 "**Not monotone in width** (a failing cell above a succeeding one; the frontier is the narrowest success "
                 "found): " + "; ".join(f"{r.task} {r.arm} d_model {r[WIDTH]}" for _, r in odd.iterrows()) + ".")
    return lines


def markdown(spec: dict, runs: pd.DataFrame, cell_table: pd.DataFrame, fam: pd.DataFrame, heads: pd.DataFrame,
             record: dict, paths: dict[str, Path], fragile: Optional[pd.DataFrame] = None) -> list[str]:
    """The REPORT.md section of the study: setup, protocol and search, verdicts with rules and baselines (marked
    fragile where `fragile`, a `report.robustness` table, says so), the family table, outcomes per width and the
    figure; every number comes from the tables."""
    from kvshift_lens.report.markdown import md_table
    from kvshift_lens.report.robustness import label

    flags = {} if fragile is None else dict(zip(fragile["verdict"], fragile["fragile"]))

    lrs = sorted(runs[PROTOCOL.lr].unique())
    core_min = float(runs["train_seconds"].sum()) / 60
    lines = [
        f"## The local-mixing family: which one-layer mixer learns induction and recall ({spec['name']})", "",
        f"Regenerate: `{record['command']}` (resumable; `--skip-train` rebuilds only the outputs). {spec['description']} "
        f"Search `{spec['search']}`: {len(runs)} runs trained of the {record['full_grid_runs']} in the full grid. "
        f"Training compute {core_min:.1f} core-minutes (sum of per-run train seconds, 1 thread each); "
        f"{provenance.wall_text(record)}; `{paths['provenance'].name}` has the commit, grids and timings.", "",
        "**Protocol** (`kvshift_lens/report/protocol.py`): a run *succeeds* when held-out accuracy at the scored positions "
        f"reaches {PROTOCOL.threshold:.0%} (it stops there), *fails* when it plateaued below ({plateau_text(PROTOCOL)}; "
        "`kvshift_lens/report/plateau.py`), else it is *censored* and never counted as a failure. A cell (task, "
        "mixer, layers, d_model) and seed succeeds if any learning rate "
        f"({', '.join(f'{x:g}' for x in lrs)}) does, is censored if any is, else failed; a cell succeeds when ≥ 2/3 of "
        "seeds do; the frontier is the smallest succeeding d_model (\"≤\" at the narrowest width tried). **Search** "
        "(`kvshift_lens/report/search.py`): per family the widths from the narrowest up until one succeeds (the full "
        "grid's frontier on every status pattern); per cell-seed the learning rates in the listed "
        "order until one succeeds (the protocol's outcome needs no more), so failures cost every rate, successes one. "
        "Mixers are labelled by how far back their key and value read (`models.mixer_reach`, `reach` below).", "",
        "**Mechanism** of every solving one-layer run (best lr, at the frontier and widest d_model; "
        "`circuits.target_heads` on 256 sequences of its own task): `target attn` is the attention on the key each "
        "task defines (`Task.attention_targets`): for induction and MQAR the token after the query token's earlier "
        "occurrence (the induction pattern; for MQAR the stored value of the queried key), for stacked MQAR the "
        "pair token holding the key. `prev-key frac` is the share of that key's logit margin carried by earlier "
        "tokens mixed into the key, `own-value frac` the share of the answer logit from the attended token's own "
        "value (both averaged over the runs whose head attends the target: they divide by its logit margin); "
        "*mixer-mediated* = attended (≥ 0.3) with both ≥ 0.5, *direct* = attended with prev-key < 0.5, *none* = target "
        "attention below 0.3 (docs/family.md describes one way to solve MQAR without attending the target). "
        "`induction score [BOS] r r` is the unchanged detector (TL/ARENA) on repeated random tokens.", "",
        *protocol_checks(cell_table), "",
        "### Verdicts", "",
        "A verdict marked *fragile* changes when the success threshold is 0.85 or 0.95 or the plateau gain is halved "
        "or doubled (`kvshift_lens/report/robustness.py`); it counts as inconclusive.", "",
    ]
    for claim, v in verdicts(fam, heads):
        lines.append(f"- {claim} **Verdict: {label(v, bool(flags.get(claim, False)))}.** Rule: {v.rule}. "
                     f"Baseline: {v.baseline}. "
                     + ("Evidence: " + "; ".join(v.evidence) + "." if v.evidence else ""))
    lines += ["", "### The family table", "", md_table(family_table(fam, heads), ".2f"), "",
              f"![family]({paths['png'].name})", "",
              "### Seeds reaching 90 % at their best learning rate, per trained d_model (blank: not trained by the search)",
              "", md_table(outcome_grid(cell_table)), ""]
    return lines
