"""The paper's language-modelling claims at CPU scale, each judged by a rule that can fail (issue 14).

* `find_lm_gap`: KV shift reaches a lower held-out loss than vanilla at equal parameters (± α/β) and tokens
  (Xu et al., Figs 4–7); per model size, a paired t-interval over seeds of vanilla − KV shift.
* `find_lm_induction`: induction heads in a real LM — KV shift forms its first one in layer 0 and vanilla only in
  layer ≥ 1 (the paper's mechanism), and the first one emerges with the ICL-score jump (Olsson et al.).
* `find_lm_table4`: the α/β quadrants of the trained KV-shift heads against init and the paper's 2.9B counts.

Outcomes use the suite's vocabulary (reproduced / partly reproduced / not reproduced / inconclusive); runs in
which nothing formed within the budget are censored, never counted as failures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from kvshift_lens.lm_report import PAPER_TABLE4, QUADRANTS

REPRODUCED, PARTLY, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "partly reproduced", "not reproduced", "inconclusive"
SUCCESS, FAILURE, CENSORED = "success", "failure", "censored"
ALPHA = 0.05
NANOGPT_BABY_VAL_LOSS = 1.88  # nanoGPT README, CPU "baby GPT" on shakespeare-char (nats per character)


@dataclass
class Verdict:
    """A rule applied to data: outcome, the rule and its baseline in one line each, and what it read."""

    outcome: str
    rule: str
    baseline: str
    evidence: list[str] = field(default_factory=list)


@dataclass
class Finding:
    """One REPORT.md section: claim, setup, numbers, overall verdict and its parts."""

    claim: str
    setup: str
    numbers: list[str]
    verdict: Verdict
    parts: list[tuple[str, Verdict]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi): Student-t interval of the mean (NaN interval below 2 values)."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    if len(x) == 1:
        return float(x[0]), math.nan, math.nan
    if np.ptp(x) == 0:
        return float(x[0]), float(x[0]), float(x[0])
    lo, hi = stats.t.interval(level, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    return float(x.mean()), float(lo), float(hi)


def fmt(mean: float, lo: float, hi: float, digits: int = 3) -> str:
    """`0.071 [0.052, 0.090]`; without an interval `0.071 (no interval)`; NaN `n/a`."""
    if mean != mean:
        return "n/a"
    return f"{mean:.{digits}f} (no interval)" if lo != lo else f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def effect_outcome(lo: float, hi: float, margin: float = 0.0) -> str:
    """An effect oriented so that > 0 supports the claim: reproduced if its interval lies above 0, not reproduced if
    below `margin`, inconclusive otherwise (or without an interval)."""
    if lo != lo or hi != hi:
        return INCONCLUSIVE
    return REPRODUCED if lo > 0 else NOT_REPRODUCED if hi < margin else INCONCLUSIVE


def quorum_outcome(outcomes: Sequence[str], quorum: float = 2 / 3) -> str:
    """Per-run outcomes -> reproduced when >= `quorum` succeed, not reproduced when that is impossible even if every
    censored run succeeded, else inconclusive."""
    n = len(outcomes)
    wins, open_ = sum(o == SUCCESS for o in outcomes), sum(o == CENSORED for o in outcomes)
    if n == 0 or open_ == n:
        return INCONCLUSIVE
    if wins >= quorum * n:
        return REPRODUCED
    return NOT_REPRODUCED if wins + open_ < quorum * n else INCONCLUSIVE


def combine(parts: Sequence[str]) -> str:
    """All reproduced -> reproduced; all inconclusive -> inconclusive; some reproduced -> partly; else not."""
    if not parts or all(p == INCONCLUSIVE for p in parts):
        return INCONCLUSIVE
    if all(p == REPRODUCED for p in parts):
        return REPRODUCED
    return PARTLY if any(p in (REPRODUCED, PARTLY) for p in parts) else NOT_REPRODUCED


def overall(parts: list[tuple[str, Verdict]], rule: str, baseline: str) -> Verdict:
    return Verdict(combine([v.outcome for _, v in parts]), rule, baseline, [f"{n}: {v.outcome}" for n, v in parts])


# ----------------------------------------------------------------------------- Figs 4-7: the loss gap

GAP_CLAIM = ("KV shifting attention reaches a lower language-modelling loss than vanilla attention at equal "
             "parameters and training tokens (Figs 4–7, 1.5B–19B parameters).")


def _paired(frame: pd.DataFrame, value: str) -> pd.DataFrame:
    """vanilla and kvshift `value` side by side per seed (seeds present in both)."""
    wide = frame.pivot_table(index="seed", columns="arch", values=value)
    return wide.dropna(subset=[c for c in ("vanilla", "kvshift") if c in wide]) if {"vanilla", "kvshift"} <= set(wide) \
        else pd.DataFrame(columns=["vanilla", "kvshift"])


def gap_at(curves: pd.DataFrame, step: int) -> pd.Series:
    """Per seed: vanilla − KV shift eval_loss at evaluation `step` (one model size and variant)."""
    w = _paired(curves[curves["step"] == step], "eval_loss")
    return w["vanilla"] - w["kvshift"]


def setup_line(runs: pd.DataFrame) -> str:
    """What the main (non-anchor) runs trained, read from their configs."""
    main = runs[runs["variant"] != "babygpt"]
    if not len(main):
        return "no runs"
    one = lambda col: "/".join(str(v) for v in sorted(main[col].dropna().unique()))  # noqa: E731
    return (f"{one('task.corpus')} ({one('task.tokenizer')} tokens, held-out split by document), sequences of "
            f"{one('task.seq_len')}, batch {one('train.batch_size')}, {one('steps')} steps, AdamW lr {one('train.lr')} "
            f"({one('train.warmup')} warmup steps, {one('train.schedule')} to 10 %), β 0.9/0.95, weight decay 0.1 on "
            f"matrices, clip 1.0; d_model {one('model.d_model')}, {one('model.n_heads')} heads; `llama` = "
            f"{one('model.norm')} + {one('model.mlp')} (d_mlp {one('model.d_mlp')}) + {one('model.positions')} "
            f"positions, `attn-only` drops the MLPs. The same lr for both architectures (docs/lm.md: lr pilot). Vanilla "
            f"and KV shift with one seed share data order and every weight but α/β. Intervals: Student t over seeds "
            f"(paired by seed for gaps).")


def find_lm_gap(curves: pd.DataFrame, runs: pd.DataFrame) -> Finding:
    """Per (layers, variant): the paired gap at the last step (part: its t-interval lies above 0), its size in bits
    per byte, and whether it closes (gap at the end minus gap at half the steps, paired)."""
    numbers, parts = [], []
    main = curves[curves["variant"] != "babygpt"]
    for (layers, variant), g in main.groupby(["n_layers", "variant"], sort=True):
        last = int(g["step"].max())
        half = int(g.loc[(g["step"] - last / 2).abs().idxmin(), "step"])
        d_end, d_half = gap_at(g, last), gap_at(g, half)
        end, mid, change = t_interval(d_end), t_interval(d_half), t_interval((d_end - d_half).dropna())
        final = g[g["step"] == last]
        loss = {a: t_interval(final.loc[final["arch"] == a, "eval_loss"]) for a in ("vanilla", "kvshift")}
        w_bpb = _paired(final, "eval_bpb")
        bpb = t_interval(w_bpb["vanilla"] - w_bpb["kvshift"]) if len(w_bpb) else (math.nan,) * 3
        trend = ("closes" if change[2] < 0 else "widens" if change[1] > 0 else "no detectable change") \
            if change[1] == change[1] else "n/a"
        tokens = int(final["tokens"].max())
        params = final.groupby("arch")["n_params"].first().to_dict()
        name = f"{layers}L {variant}"
        numbers.append(
            f"**{name}** ({params.get('vanilla', 0):,} / {params.get('kvshift', 0):,} parameters vanilla / KV shift, "
            f"{tokens / 1e6:.2f}M tokens, {len(d_end)} paired seeds) — held-out loss vanilla {fmt(*loss['vanilla'])}, "
            f"KV shift {fmt(*loss['kvshift'])} nats/token; gap (vanilla − KV shift) {fmt(*end)} nats = {fmt(*bpb)} "
            f"bits/byte; at step {half} the gap was {fmt(*mid)}; change to the end {fmt(*change)} ({trend})")
        parts.append((name, Verdict(effect_outcome(end[1], end[2]),
                                    "paired t-interval (by seed) of vanilla − KV shift final held-out loss above 0; "
                                    "not reproduced if it lies below 0", "vanilla with the same seed, data order and "
                                    "weights (all but α/β)", [f"gap {fmt(*end)} nats, n={len(d_end)}"])))
    return Finding(GAP_CLAIM, setup_line(runs), numbers, overall(parts, "every size: the paired gap is above 0", "vanilla"), parts)


# ----------------------------------------------------------------------------- induction heads in an LM

INDUCTION_CLAIM = ("In a language model KV shift forms its induction heads in the first layer, where a vanilla model "
                   "needs a second layer; and (Olsson et al. 2022) induction heads appear together with the jump in "
                   "in-context learning.")


def _layer_outcome(layers: str, want_first: bool) -> str:
    """Per run: success / failure / censored for "induction heads sit in layer 0" (or, `want_first` False, "none
    in layer 0") from `induction_layers` (space-separated, empty when none formed)."""
    found = [int(x) for x in str(layers).split()] if isinstance(layers, str) and layers.strip() else []
    if not found:
        return CENSORED
    return SUCCESS if (0 in found) == want_first else FAILURE


def _co_outcome(value: object) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return CENSORED
    return SUCCESS if bool(value) else FAILURE


def find_lm_induction(runs: pd.DataFrame, threshold: float) -> Finding:
    """Parts: KV-shift runs have an induction head in layer 0; vanilla runs have none there; the first head's
    emergence falls in the checkpoint bracket of the ICL jump. Runs without an induction head are censored."""
    main = runs[runs["variant"] != "babygpt"]
    numbers = []
    for label, g in main.groupby("label", sort=True):
        formed = g["first_induction_head"].notna() & (g["first_induction_head"].astype(str) != "None")
        numbers.append(
            f"**{label}** — runs with an induction head (induction_score ≥ {threshold}) at the end: {int(formed.sum())}"
            f"/{len(g)}; best final induction score {fmt(*t_interval(g['best_final_induction_score']))}; first heads "
            f"{', '.join(g.loc[formed, 'first_induction_head'].astype(str)) or 'none'} (emergence steps "
            f"{', '.join(str(int(s)) for s in g.loc[formed, 'emergence_step']) or '—'}); ICL-jump steps "
            f"{', '.join('—' if s != s else str(int(s)) for s in g['icl_jump_step'])}; final ICL band score "
            f"{fmt(*t_interval(g['final_icl_band_score']))} nats, Olsson ICL score {fmt(*t_interval(g['final_icl_score']))}")
    kv, va = main[main["arch"] == "kvshift"], main[main["arch"] != "kvshift"]
    outs = {"kv": [_layer_outcome(x, True) for x in kv["induction_layers"]],
            "va": [_layer_outcome(x, False) for x in va["induction_layers"]],
            "co": [_co_outcome(x) for x in main["icl_jump_with_emergence"]]}
    count = lambda o: f"{o.count(SUCCESS)} yes, {o.count(FAILURE)} no, {o.count(CENSORED)} censored"  # noqa: E731
    parts = [
        ("KV shift forms induction heads in layer 0", Verdict(
            quorum_outcome(outs["kv"]), "≥ 2/3 of KV-shift runs have an induction head in layer 0 (runs without one "
            "censored)", "the paper's one-layer mechanism", [count(outs["kv"])])),
        ("vanilla forms them only in layer ≥ 1", Verdict(
            quorum_outcome(outs["va"]), "≥ 2/3 of vanilla runs have no induction head in layer 0 (runs without one "
            "censored)", "K-composition needs a previous-token head below", [count(outs["va"])])),
        ("first induction head emerges with the ICL jump", Verdict(
            quorum_outcome(outs["co"]), "in ≥ 2/3 of runs the ICL-band-score jump lies between the checkpoints around "
            "the first head's emergence (runs without a head or a jump censored)", "Olsson et al.'s co-occurrence",
            [count(outs["co"])])),
    ]
    setup = (f"Every log-spaced checkpoint of the runs above, scored on `[EOT] r r` with r drawn from the ids of the "
             f"training text (induction_score, threshold {threshold}), on repeated held-out text (text_induction_score, "
             f"text_prefix_matching) and `[EOT] r r r r` (prefix_matching); the ICL band score is evaluated at the same "
             f"steps (`kvshift_lens.lm`, docs/lm.md).")
    return Finding(INDUCTION_CLAIM, setup, numbers, overall(parts, "all three parts", "see parts"), parts)


# ----------------------------------------------------------------------------- Table 4

TABLE4_CLAIM = ("The trained KV-shift heads of a language model spread over all four α/β quadrants, most of them on "
                "the diagonal ones (Table 4, 2.9B model: 50 / 17 / 9 / 52 of 128 KV pairs).")


def find_lm_table4(shifts: pd.DataFrame) -> Finding:
    """Quadrant counts of every KV-shift head at init and at the end; parts: the end distribution differs from init
    (chi-square test of homogeneity), and more heads than at init lie on the diagonal quadrants, as in the paper
    (one-sided binomial tests of the end share against 1/2, the init expectation)."""
    numbers, parts = [], []
    diagonal = (QUADRANTS[0], QUADRANTS[3])
    paper = np.array([PAPER_TABLE4[q] for q in QUADRANTS], dtype=float)
    for label, g in shifts.groupby("label", sort=True):
        counts = {at: g[g["progress"] == p]["quadrant"].value_counts().reindex(QUADRANTS, fill_value=0)
                  for at, p in (("init", 0.0), ("end", 1.0))}
        table = np.array([counts["init"].to_numpy(), counts["end"].to_numpy()])
        keep = table.sum(axis=0) > 0
        moved = stats.chi2_contingency(table[:, keep]).pvalue if keep.sum() > 1 else math.nan
        n_end, k_diag = int(counts["end"].sum()), int(counts["end"][list(diagonal)].sum())
        p_more = stats.binomtest(k_diag, n_end, 0.5, alternative="greater").pvalue if n_end else math.nan
        p_less = stats.binomtest(k_diag, n_end, 0.5, alternative="less").pvalue if n_end else math.nan
        gof = stats.chisquare(counts["end"].to_numpy(), paper / paper.sum() * n_end).pvalue if n_end else math.nan
        numbers.append(f"**{label}** — end: " + ", ".join(f"{q}: {counts['end'][q]}" for q in QUADRANTS)
                       + " (init: " + ", ".join(str(counts["init"][q]) for q in QUADRANTS) + f"); diagonal share "
                       f"{k_diag}/{n_end} (paper 102/128 = 0.80); chi-square init vs end p = {moved:.3g}; "
                       f"goodness of fit to the paper's proportions p = {gof:.3g}")
        parts.append((f"{label}: the quadrants move away from init", Verdict(
            REPRODUCED if moved < ALPHA else INCONCLUSIVE, f"chi-square test of homogeneity, init vs end counts, at "
            f"{ALPHA} (heads as units)", "init (α1, β1 ~ U(0, 1): uniform over the quadrants)", [f"p = {moved:.3g}"])))
        parts.append((f"{label}: most heads on the diagonal quadrants", Verdict(
            REPRODUCED if p_more < ALPHA else NOT_REPRODUCED if p_less < ALPHA else INCONCLUSIVE,
            f"one-sided binomial tests of the end diagonal share against 1/2 at {ALPHA}", "init expectation 1/2",
            [f"{k_diag}/{n_end}, greater p = {p_more:.3g}, less p = {p_less:.3g}"])))
    setup = ("Every head of every KV-shift run of the study, at step 0 and at the last step; quadrants from the first "
             "two taps (α1 on K_t, α2 on K_(t−1); β likewise for V).")
    notes = ["Heads of one run are not independent draws; the tests treat heads as units and are indicative."]
    return Finding(TABLE4_CLAIM, setup, numbers, overall(parts, "all parts", "init"), parts, notes)


def anchor_lines(runs: pd.DataFrame, curves: pd.DataFrame) -> list[str]:
    """The nanoGPT anchor: our vanilla baby GPT's held-out loss beside nanoGPT's reported 1.88."""
    a = runs[runs["variant"] == "babygpt"]
    if not len(a):
        return ["The anchor run (grid `anchor`) has not been run."]
    loss = t_interval(a["final_eval_loss"])
    return [f"Our vanilla model in nanoGPT's CPU baby-GPT configuration ({int(a['n_params'].iloc[0]):,} parameters, "
            f"{int(a['steps'].iloc[0])} steps of 12 × 64 characters, {len(a)} seed(s)): held-out loss "
            f"{fmt(*loss)} nats/char ({fmt(*t_interval(a['final_eval_bpb']))} bits/byte), beside nanoGPT's reported "
            f"≈ {NANOGPT_BABY_VAL_LOSS}; {a['tokens_per_second'].mean():,.0f} training tokens/s here."]
