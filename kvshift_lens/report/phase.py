"""Phase diagram of induction learning: who learns induction at which width, depth and length.

Built on the capacity protocol (`report.protocol`): every (arch, depth, width, heads, length) cell
is trained per seed at >= 3 learning rates, judged at its best one, and a run that is still
improving when its budget ends is censored, never a failure. Tables here are functions of the
per-run frame `tidy_runs(curves)`; the verdicts (`depth_verdict`, `width_verdict`) state their rule
and baseline and are unit-tested on synthetic frames for every outcome. `judge(curves, protocol)` recomputes
every verdict from the learning curves under another protocol (`report.robustness`); tables and heatmaps
hold only the configurations that were trained.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from kvshift_lens.models.config import ModelConfig
from kvshift_lens.models.transformer import build_module
from kvshift_lens.report.protocol import (
    FOUND, GROWS, SHRINKS, UNDETERMINED, FLAT, Protocol, cell_results, cell_status, frontier, frontier_trend,
    run_outcomes,
)
from kvshift_lens.report.multiplicity import combined
from kvshift_lens.report.search import monotonicity_violations
from kvshift_lens.report.stats import (
    discordant_test, fmt_p, km_median, logrank_test, proportion_ci, sooner_in_pairs,
)
from kvshift_lens.report.verdicts import (
    ALPHA, CENSORED, INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, SUCCESS, Verdict, one_sided_outcome,
)

PROTOCOL = Protocol(lr="lr", metric="acc")  # curves' induction_acc is read as `acc`; cells' lr column is `lr`
CELL = ["arch", "n_layers", "n_heads", "seq_len", "d_model"]  # one configuration
FAMILY = ["arch", "n_layers", "n_heads", "seq_len"]  # a frontier is taken over d_model within one family
EMBEDDING_MODULES = ("tok_embed", "pos", "head")  # top-level modules of `build_module` counted as embeddings
RUN_COLUMNS = [*CELL, "d_head", "lr", "seed", "outcome", "censored", "induction_acc", "best_induction_acc",
               "steps_to_90", "gain_last", "projected_gain", "final_step", "budget", "batch_size", "train_seconds",
               "n_params", "n_params_non_embedding", "run"]
RENAME = {"model.arch": "arch", "model.n_layers": "n_layers", "model.d_model": "d_model", "model.n_heads": "n_heads",
          "model.d_head": "d_head", "task.seq_len": "seq_len", "train.lr": "lr", "train.steps": "budget",
          "train.batch_size": "batch_size"}


@lru_cache(maxsize=None)
def _param_counts(model_json: str) -> tuple[int, int]:
    module = build_module(ModelConfig.from_dict(json.loads(model_json)))
    total = sum(p.numel() for p in module.parameters())
    embed = sum(p.numel() for n, p in module.named_parameters() if n.split(".")[0] in EMBEDDING_MODULES)
    return total, total - embed


def param_counts(model: dict) -> tuple[int, int]:
    """(all parameters, parameters outside token/position embeddings and the unembedding) of a model config
    (the `model` entry of a run's config.json)."""
    return _param_counts(json.dumps(model, sort_keys=True))


def run_table(curves: pd.DataFrame, protocol: Protocol = PROTOCOL) -> pd.DataFrame:
    """One row per run of `analysis.load_runs` learning curves: the cell keys (renamed as in RENAME), protocol
    outcome, final and best accuracy, steps to the threshold (`steps_to_90`) and the plateau rule's numbers."""
    keys = [*[c for c in RENAME if c in curves.columns], "seed"]
    runs = run_outcomes(curves.rename(columns={"induction_acc": "acc"}), keys, protocol)
    return runs.rename(columns={**RENAME, "final": "induction_acc", "best": "best_induction_acc",
                                "steps_to_threshold": "steps_to_90"})


def tidy_runs(curves: pd.DataFrame, root: Path, protocol: Protocol = PROTOCOL) -> pd.DataFrame:
    """One row per run (RUN_COLUMNS) from `analysis.load_runs(root)` learning curves: `run_table`, training
    seconds, and parameter counts from each run's config.json."""
    runs = run_table(curves, protocol)
    seconds = curves.sort_values("step").groupby("run")["train_seconds"].last()
    counts = [param_counts(json.loads((root / run / "config.json").read_text())["model"]) for run in runs["run"]]
    out = runs.assign(
        train_seconds=lambda d: d["run"].map(seconds), n_params=[c[0] for c in counts],
        n_params_non_embedding=[c[1] for c in counts])
    return out[RUN_COLUMNS].sort_values([*CELL, "seed", "lr"], ignore_index=True)


def cells(runs: pd.DataFrame, protocol: Protocol = PROTOCOL) -> pd.DataFrame:
    """Per cell and seed, the best learning rate's run (`protocol.cell_results`) plus parameter counts (when
    `runs` has them)."""
    best = cell_results(runs.rename(columns={"best_induction_acc": "best", "induction_acc": "final",
                                             "steps_to_90": "steps_to_threshold"}), CELL, protocol)
    sizes = [c for c in ("n_params", "n_params_non_embedding") if c in runs]
    if sizes:
        best = best.join(runs.groupby(CELL)[sizes].first(), on=CELL)
    return best.rename(columns={"best": "best_induction_acc", "final": "induction_acc",
                                "steps_to_threshold": "steps_to_90"})


def status(cell_table: pd.DataFrame, protocol: Protocol = PROTOCOL) -> pd.DataFrame:
    """Per cell: seeds succeeding / failing / censored at their best learning rate, and the cell's status."""
    return cell_status(cell_table, CELL, protocol)


def frontiers(status_table: pd.DataFrame) -> pd.DataFrame:
    """Frontier width per family (`protocol.frontier` over d_model)."""
    return frontier(status_table, FAMILY, "d_model")


def monotone_line(status_table: pd.DataFrame) -> str:
    """Where success was not shown monotone in width: cells above a family's narrowest success that did not succeed
    (failed: evidence against monotonicity; censored: not yet decided), with their seed counts."""
    if not (status_table["status"] == SUCCESS).any():
        return "No cell succeeded: monotonicity in width has nothing to compare."
    odd = monotonicity_violations(status_table, FAMILY, "d_model", ("failure", CENSORED))
    if odd.empty:
        return "Every trained width above a family's narrowest success also succeeds (success monotone in width)."
    return ("**Not shown monotone in width** (cells above a family's narrowest success that did not succeed; the "
            "frontier is the narrowest success): " + "; ".join(
                f"{r.arch} {r.n_layers}L {r.n_heads}h seq {r.seq_len} d_model {r.d_model}: {r.status} "
                f"({r.n_success}/{r.n_seeds} succeed, {r.n_failure} failed, {r.n_censored} censored)"
                for r in odd.itertuples()) + ".")


def length_trends(frontier_table: pd.DataFrame) -> pd.DataFrame:
    """How each (arch, depth, heads) frontier moves with sequence length, for families swept at >= 2 lengths."""
    return frontier_trend(frontier_table, ["arch", "n_layers", "n_heads"], "seq_len")


def grid_table(table: pd.DataFrame, value: str, rows: Sequence[str] = ("arch", "n_layers"), cols: str = "d_model",
               agg: str = "mean") -> pd.DataFrame:
    """Pivot of `value` aggregated over seeds: index `rows`, columns `cols`; only (rows) combinations that were
    trained get a row (NaN in a cell: that width was not trained for that row, or the value is missing)."""
    data = table.assign(**{value: pd.to_numeric(table[value], errors="coerce").astype(float)})
    return data.groupby([*rows, cols], sort=True)[value].agg(agg).unstack(cols)


def trained_cells(table: pd.DataFrame, rows: Sequence[str] = ("arch", "n_layers"), cols: str = "d_model") -> pd.DataFrame:
    """Boolean pivot in `grid_table`'s layout: True where the configuration was trained."""
    return table.groupby([*rows, cols], sort=True).size().unstack(cols).notna()


def km_table(cell_table: pd.DataFrame, rows: Sequence[str] = ("arch", "n_layers"), cols: str = "d_model") -> pd.DataFrame:
    """Kaplan–Meier median steps to the threshold per cell over its seeds at their best lr (`stats.km_median`: seeds
    that never reach it censored at their budget; NaN when fewer than half reach it), in `grid_table`'s layout."""
    km = cell_table.groupby([*rows, cols], sort=True).apply(lambda g: km_median(g["time"], g["event"]),
                                                             include_groups=False)
    return km.unstack(cols)


def outcome_table(cell_table: pd.DataFrame, rows: Sequence[str] = ("arch", "n_layers"),
                  cols: str = "d_model") -> pd.DataFrame:
    """Pivot of "k/n (c censored)" seeds succeeding at their best lr per cell."""
    def fmt(g: pd.DataFrame) -> str:
        k, c = int((g.outcome == SUCCESS).sum()), int((g.outcome == CENSORED).sum())
        return f"{k}/{len(g)}" + (f" ({c} cens.)" if c else "")
    return cell_table.groupby([*rows, cols]).apply(fmt, include_groups=False).unstack(cols).fillna("")


def param_matched(cell_table: pd.DataFrame, models: Sequence[tuple[str, int]] = (("kvshift", 1), ("vanilla", 2))
                  ) -> pd.DataFrame:
    """Best-lr accuracy against parameter count for two (arch, depth) models, per width, seeds pooled."""
    pick = cell_table[[(a, n) in models for a, n in zip(cell_table.arch, cell_table.n_layers)]]
    out = (pick.groupby(["arch", "n_layers", "n_heads", "seq_len", "d_model"], sort=True)
           .agg(n_params=("n_params", "first"), n_params_non_embedding=("n_params_non_embedding", "first"),
                acc_mean=("best_induction_acc", "mean"), acc_min=("best_induction_acc", "min"),
                acc_max=("best_induction_acc", "max"), n_success=("outcome", lambda s: int((s == SUCCESS).sum())),
                n_censored=("outcome", lambda s: int((s == CENSORED).sum())), n_seeds=("outcome", "size"))
           .reset_index())
    out.insert(0, "model", out["arch"] + " " + out["n_layers"].astype(str) + "L")
    return out.drop(columns=["arch", "n_layers"]).sort_values(["n_heads", "seq_len", "n_params"], ignore_index=True)


# ----------------------------------------------------------------------------- verdicts

DEPTH_CLAIM = "One KV-shift layer learns induction where vanilla attention needs two layers."
WIDTH_CLAIM = ("The width a one-layer model needs grows with the sequence length (Sanford, Hsu & Telgarsky 2024's "
               "lower bound for one-layer transformers).")


def _pairs(cell_table: pd.DataFrame, a: tuple[str, int], b: tuple[str, int]) -> pd.DataFrame:
    """Cells of models a and b paired on (n_heads, seq_len, d_model, seed), with a_/b_ outcome, time, event."""
    on = ["n_heads", "seq_len", "d_model", "seed"]
    pick = lambda m: cell_table[(cell_table.arch == m[0]) & (cell_table.n_layers == m[1])].set_index(on)  # noqa: E731
    cols = ["outcome", "time", "event"]
    return pick(a)[cols].add_prefix("a_").join(pick(b)[cols].add_prefix("b_"), how="inner")


def compare_models(cell_table: pd.DataFrame, a: tuple[str, int], b: tuple[str, int]) -> list[tuple[str, Verdict]]:
    """Model a learns more often (exact test on discordant pairs, censored pairs left out) and sooner (log-rank
    on time to 90 % at the best lr, failures and censored runs censored at their budget) than model b."""
    name_a, name_b = f"{a[0]} {a[1]}L", f"{b[0]} {b[1]}L"
    pairs = _pairs(cell_table, a, b)
    decided = pairs[(pairs.a_outcome != CENSORED) & (pairs.b_outcome != CENSORED)]
    more = discordant_test(decided.a_outcome == SUCCESS, decided.b_outcome == SUCCESS, "greater")
    less = discordant_test(decided.a_outcome == SUCCESS, decided.b_outcome == SUCCESS, "less")
    sooner = logrank_test(pairs.a_time, pairs.a_event, pairs.b_time, pairs.b_event, "a_sooner")
    later = logrank_test(pairs.a_time, pairs.a_event, pairs.b_time, pairs.b_event, "a_later")
    order = discordant_test(*sooner_in_pairs(pairs.a_time, pairs.a_event, pairs.b_time, pairs.b_event), "greater")
    baseline = f"{name_b}, paired by width, heads, length and seed"
    return [
        (f"{name_a} succeeds more often than {name_b}", Verdict(
            one_sided_outcome(more.p, less.p), f"exact binomial test on discordant pairs (one succeeds, the other fails "
            f"at its best lr), one-sided at {ALPHA}; pairs with a censored side left out", baseline,
            [f"{len(pairs)} pairs: both succeed {more.both}, neither {more.neither}, only {name_a} {more.a_only}, "
             f"only {name_b} {more.b_only}, censored {len(pairs) - len(decided)}; {name_a} more: {fmt_p(more.p)}, "
             f"{name_b} more: {fmt_p(less.p)}"], p=more.p, p_reverse=less.p)),
        (f"{name_a} reaches 90 % sooner than {name_b}", Verdict(
            one_sided_outcome(sooner.p, later.p), f"log-rank test of steps to 90 % at the best lr (runs that never reach it "
            f"censored at their budget), one-sided at {ALPHA}; the matched runs pooled, not stratified by pair",
            baseline,
            [f"events {sooner.events_a}/{sooner.n_a} vs {sooner.events_b}/{sooner.n_b}; {name_a} sooner: "
             f"{fmt_p(sooner.p)}, later: {fmt_p(later.p)}",
             f"paired ordering (evidence only, not the declared test): {name_a} first in {order.a_only} pairs, "
             f"{name_b} first in {order.b_only}, undecided {len(pairs) - order.a_only - order.b_only} (ties, or "
             f"censoring before the other's event); exact sign test {name_a} first: {fmt_p(order.p)}"],
            p=sooner.p, p_reverse=later.p)),
    ]


def depth_verdict(cell_table: pd.DataFrame) -> tuple[Verdict, list[tuple[str, Verdict]]]:
    """Depth claim: 1L KV shift succeeds more often than 1L vanilla, and more often and sooner than 2L vanilla."""
    parts = compare_models(cell_table, ("kvshift", 1), ("vanilla", 1))[:1]
    parts += compare_models(cell_table, ("kvshift", 1), ("vanilla", 2))
    verdict = combined(parts, "all parts (one family of tests, Holm-adjusted), each seed at its best of ≥ 3 learning "
                       "rates", "vanilla 1L and vanilla 2L at the same width, heads, length and seed")
    return verdict, parts


def width_verdict(trends: pd.DataFrame, arch: str = "kvshift") -> Verdict:
    """Width claim on the one-layer `arch` model: its frontier must grow with sequence length."""
    rule = ("frontier width (smallest d_model where ≥ 2/3 seeds succeed at their best lr) along the swept lengths: "
            "reproduced if it grows, not reproduced if it shrinks or stays flat, inconclusive if censored or bounded "
            "frontiers overlap")
    baseline = "the same model at the shortest swept length"
    row = trends[(trends.arch == arch) & (trends.n_layers == 1)]
    if row.empty:
        return Verdict(INCONCLUSIVE, rule, baseline, reason="no one-layer length sweep")
    evidence = [f"{r.arch} {r.n_layers}L, {r.n_heads} head(s): " + ", ".join(
        f"seq {s}: {t}" for s, t in zip(r.seq_len, r.frontiers)) + f" → {r.trend}" for r in trends.itertuples()]
    trend = row.trend.iloc[0]
    outcome = {GROWS: REPRODUCED, SHRINKS: NOT_REPRODUCED, FLAT: NOT_REPRODUCED, UNDETERMINED: INCONCLUSIVE}[trend]
    return Verdict(outcome, rule, baseline, evidence, reason="censored frontiers" if trend == UNDETERMINED else "")


def judge(curves: pd.DataFrame, protocol: Protocol = PROTOCOL) -> dict[str, Verdict]:
    """Every verdict of the study (the depth claim, its parts, the width claim) from `analysis.load_runs` learning
    curves under `protocol`: what `report.robustness` recomputes under other thresholds."""
    cell_table = cells(run_table(curves, protocol), protocol)
    depth, parts = depth_verdict(cell_table)
    trends = length_trends(frontiers(status(cell_table, protocol)))
    return {"depth claim": depth, **{f"depth: {n}": v for n, v in parts}, "width claim": width_verdict(trends)}


def success_rate_line(cell_table: pd.DataFrame, arch: str, layers: int) -> str:
    """`k/n seed-cells succeed (95 % Wilson CI lo–hi), c censored` for one (arch, depth) at its best lr."""
    g = cell_table[(cell_table.arch == arch) & (cell_table.n_layers == layers)]
    k, c = int((g.outcome == SUCCESS).sum()), int((g.outcome == CENSORED).sum())
    lo, hi = proportion_ci(k, len(g))
    return f"{arch} {layers}L: {k}/{len(g)} (95 % Wilson CI {lo:.2f}–{hi:.2f}), {c} censored" if len(g) else \
        f"{arch} {layers}L: no runs"


def found_only(frontier_table: pd.DataFrame) -> pd.DataFrame:
    """Families whose frontier is exactly located (every smaller width failed)."""
    return frontier_table[frontier_table.frontier_status == FOUND]


def seconds(runs: pd.DataFrame) -> float:
    """Summed train seconds of the runs (core-seconds at one thread per run)."""
    return float(np.nansum(runs["train_seconds"]))
