"""The language-model study: its tables, figures and claims, on top of the report layer.

Runs of `conf/experiment/lm*.yaml` are labelled `<arch> <n>L <variant>` (variant `llama`, `attn-only`, or
`babygpt` for the nanoGPT anchor). `curves` has one row per run × evaluation (held-out loss, bits per
byte, ICL scores), `runs` one row per run (final metrics, throughput, the induction summary of
`kvshift_lens.analysis.lm_heads`), `heads` one row per run × checkpoint × head × metric, `shifts` the α/β rows of
`heads` in the layout of `report.tables.shift_table`. Claims:

* `find_lm_gap` — KV shift reaches a lower held-out loss than vanilla at equal parameters (± α/β) and
  tokens (Figs 4–7): per model size, a paired t-interval over seeds of vanilla − KV shift;
* `find_lm_induction` — KV shift forms its induction heads in layer 0, vanilla only in layer ≥ 1, and the
  first one emerges with the ICL jump (Olsson et al.); runs where none formed are censored;
* `find_lm_table4` — the suite's Table 4 rule (`claims.find_table4`: every quadrant used at the end, and training
  moved heads between quadrants, with exact Clopper–Pearson intervals; the fit to the paper's 50/17/9/52 only where
  the expected counts allow a chi-square test, else "not testable at this scale") plus the paper's pattern: training
  moves heads onto the diagonal quadrants (paired by head against their own init).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats

from kvshift_lens.training import sweeps
from kvshift_lens.training.runs import load_heads, load_summaries, run_status
from kvshift_lens.report.adaptive import EXTEND, Adaptive, job_with, lr_decision, lr_text, override_value
from kvshift_lens.report.claims import PAPER_TABLE4, Finding, find_table4, overall
from kvshift_lens.report.stats import (
    diff_ci, discordant_test, fmt_ci, fmt_p, group_mean_ci, mean_ci, signflip_test,
)
from kvshift_lens.report.tables import QUADRANTS, at_progress, curves_table, n_params, quadrant
from kvshift_lens.report.verdicts import (
    ALPHA, CENSORED, FAILURE, NOT_REPRODUCED, SUCCESS, Verdict, effect_outcome, learns_outcome, one_sided_outcome,
)

ANCHOR_PRESET = "vanilla_babygpt"  # runs live under <sweep>/<model preset>/...
NANOGPT_BABY_VAL_LOSS = 1.88  # nanoGPT README: CPU "baby GPT" on shakespeare-char, nats per character
DIAGONAL = (QUADRANTS[0], QUADRANTS[3])  # α1>α2 with β1>β2, or α1<α2 with β1<β2: 102 of the paper's 128
KEYS = ["run", "seed", "arch", "variant", "n_layers", "label", "n_params"]
METRICS = ["eval_bpb", "icl_score", "icl_band_score"]
CONFIG = ["task.corpus", "task.tokenizer", "task.seq_len", "train.batch_size", "train.lr", "train.warmup",
          "model.d_model", "model.n_heads", "model.d_mlp", "model.norm", "model.mlp", "model.positions"]
RUN_COLUMNS = ["status", "steps", "train_tokens", "train_seconds", "tokens_per_second", "final_eval_loss",
               "final_eval_bpb", "final_icl_score", "final_icl_band_score", "first_induction_head",
               "first_induction_layer", "emergence_step", "induction_layers", "best_final_induction_score",
               "icl_jump_step", "icl_jump_with_emergence"]


# ----------------------------------------------------------------------------- tables


def _with_keys(frame: pd.DataFrame) -> pd.DataFrame:
    """Add arch, variant, n_layers and label to a frame with `run`, `model.arch`, `model.n_layers`, `model.attn_only`."""
    preset = frame["run"].str.split("/").str[0]
    variant = np.where(preset == ANCHOR_PRESET, "babygpt",
                       np.where(frame["model.attn_only"].astype(bool), "attn-only", "llama"))
    out = frame.assign(arch=frame["model.arch"], variant=variant, n_layers=frame["model.n_layers"].astype(int))
    out["label"] = out["arch"] + " " + out["n_layers"].astype(str) + "L " + out["variant"]
    return out


def lm_curves(run_dirs: Sequence[Path], root: Path) -> pd.DataFrame:
    """One row per finished run × evaluation: KEYS, step, tokens trained so far, losses and the ICL scores."""
    c = _with_keys(curves_table(run_dirs, root, extra=METRICS + ["train.batch_size"]))
    c["tokens"] = c["step"] * c["train.batch_size"] * c["task.seq_len"]
    c = c.rename(columns={"induction_acc": "next_token_acc"})  # the trainer's accuracy column is next-token accuracy on text
    return c[KEYS + ["step", "tokens", "eval_loss", "train_loss", "next_token_acc", *METRICS]]


def lm_runs(run_dirs: Sequence[Path], root: Path) -> pd.DataFrame:
    """One row per finished run: KEYS, the config columns of the setup line and RUN_COLUMNS."""
    names = {str(d.relative_to(root)) for d in run_dirs}
    s = load_summaries(root)
    s = _with_keys(s[s["run"].isin(names) & s["status"].isin(["completed", "diverged"])])
    s["n_params"] = s["run"].map(lambda r: n_params(root / r))
    s["steps"] = s["final_step"]
    s["induction_layers"] = s["induction_layers"].map(lambda v: " ".join(map(str, v)) if isinstance(v, list) else "")
    for col in RUN_COLUMNS:
        s[col] = s[col] if col in s else np.nan
    return s[KEYS + CONFIG + RUN_COLUMNS].sort_values(["label", "seed"], ignore_index=True)


LR = "train.lr"
FLAT_NATS = 0.01  # a loss curve is flat when its drop over the last quarter of the steps is below this (upper bound)
TAIL = 0.25  # the last quarter of the steps


def lr_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per label and learning rate: seeds, diverged runs and the mean final held-out loss [95 % t]; `best` marks each
    label's lowest mean among rates with all its seeds where no run diverged (each arch at its own best rate), `edge`
    names a best rate at the low or high end of the rates tried ("" when interior, "single rate" when only one was
    tried)."""
    rows = []
    for (label, lr), g in runs.groupby(["label", LR], sort=True):
        mean, lo, hi = mean_ci(g["final_eval_loss"])
        rows.append({"label": label, "lr": lr, "seeds": len(g), "diverged": int((g["status"] == "diverged").sum()),
                     "final_eval_loss": mean, "lo": lo, "hi": hi})
    table = pd.DataFrame(rows, columns=["label", "lr", "seeds", "diverged", "final_eval_loss", "lo", "hi"])
    complete = table["seeds"] == table.groupby("label")["seeds"].transform("max")  # no rate wins on fewer seeds
    usable = table[complete & (table["diverged"] == 0) & table["final_eval_loss"].notna()]
    best = usable.loc[usable.groupby("label")["final_eval_loss"].idxmin()]
    table["best"] = table.index.isin(best.index)
    rates = table.groupby("label")["lr"].agg(["min", "max", "count"])
    r = rates.loc[table["label"]].reset_index(drop=True)
    table["edge"] = np.where(~table["best"], "", np.where(r["count"] == 1, "single rate", np.where(
        table["lr"] == r["min"], "lowest rate tried", np.where(table["lr"] == r["max"], "highest rate tried", ""))))
    return table


def at_best_lr(frame: pd.DataFrame, runs: pd.DataFrame, lrs: pd.DataFrame) -> pd.DataFrame:
    """The rows of `frame` (any table with `run`) that belong to runs at their label's best learning rate."""
    best = runs.merge(lrs.loc[lrs["best"], ["label", "lr"]].rename(columns={"lr": LR}), on=["label", LR])
    return frame[frame["run"].isin(set(best["run"]))]


def size_of(label: str) -> str:
    """The size and variant a label names, without its arch ("kvshift 2L llama" -> "2L llama")."""
    return label.split(" ", 1)[1]


def next_lrs(lrs: pd.DataFrame, a: Adaptive = Adaptive(cap=1)) -> dict[str, set[float]]:
    """Per size and variant ("2L llama"): the rates to add, from an `lr_table` — for a label whose best rate sits at
    an edge, the next half-decade rate beyond it (`adaptive.lr_decision`, within `a.lr_bounds`), for every arch of
    that size and variant alike (`plan_lrs` skips an arch past a rate where it diverged)."""
    new: dict[str, set[float]] = {}
    for _, best in lrs[lrs["best"]].iterrows():
        rates = lrs[lrs["label"] == best["label"]]
        edge = {"highest rate tried": 1, "lowest rate tried": -1}.get(best["edge"], 0)
        decision, rate = lr_decision(rates["lr"], edge, rates.loc[rates["diverged"] > 0, "lr"], a)
        if decision == EXTEND:
            new.setdefault(size_of(best["label"]), set()).add(rate)
    return new


def plan_lrs(sweep_dir: Path, jobs: Sequence[Sequence[str]], a: Adaptive = Adaptive(cap=1)) -> list[list[str]]:
    """The jobs of the study's next learning-rate round, read from the runs of `jobs` under `sweep_dir`: first every
    added-rate run left unfinished (killed: rerunning resumes it), then the rates `next_lrs` adds, for every seed of
    every arch of the size and variant, each job once, never one already run to an end, and never for an arch past
    a rate where it diverged; empty when every best rate is interior or bounded (what `sweeps.train_rounds` asks for
    before each round)."""
    grid = {sweeps.base_identity(j): list(j) for j in jobs}
    grid_jobs = {sweeps.identity(j) for j in jobs}
    recorded = {d: [o for o in sweeps.job_overrides(d) if o.split("=", 1)[0] not in sweeps.VOLATILE]
                for d in sweeps.runs_of_jobs(sweep_dir, jobs, failed=True)}
    ended = [d for d in recorded if run_status(d) != "incomplete"]
    plan = [job for d, job in recorded.items() if d not in ended and sweeps.identity(job) not in grid_jobs]
    runs = lm_runs(ended, sweep_dir)
    if runs.empty:
        return plan
    table = lr_table(runs)
    new = next_lrs(table, a)
    tried = {(sweeps.base_identity(recorded[d]), float(override_value(recorded[d], LR) or "nan")) for d in ended}
    for _, r in runs.iterrows():
        base = sweeps.base_identity(recorded[sweep_dir / r["run"]])
        own = table[table["label"] == r["label"]]
        diverged = own.loc[own["diverged"] > 0, "lr"]
        for rate in sorted(new.get(size_of(r["label"]), ())):
            past = ((diverged <= rate) & (rate > own["lr"].max())) | ((diverged >= rate) & (rate < own["lr"].min()))
            job = job_with(grid[base], LR, lr_text(rate))
            if (base, rate) not in tried and not past.any() and job not in plan:
                plan.append(job)
    return plan


def tail_drop(curves: pd.DataFrame, tail: float = TAIL) -> pd.DataFrame:
    """Per run: how much the held-out loss fell over the last `tail` of its steps (from the evaluation nearest
    (1 − tail) × the last step to the last one), with `label`; positive = still falling."""
    rows = []
    for (label, run), g in curves[curves["step"] > 0].groupby(["label", "run"]):
        g = g.sort_values("step")
        last = g.iloc[-1]
        start = g.loc[(g["step"] - (1 - tail) * last["step"]).abs().idxmin()]
        drop = start["eval_loss"] - last["eval_loss"] if start["step"] < last["step"] else math.nan  # one evaluation
        rows.append({"label": label, "run": run, "from_step": int(start["step"]), "to_step": int(last["step"]),
                     "drop": drop})
    return pd.DataFrame(rows, columns=["label", "run", "from_step", "to_step", "drop"])


FALLING = "still falling"


def flatness(curves: pd.DataFrame, lrs: Optional[pd.DataFrame] = None) -> dict[str, tuple[str, str]]:
    """Per label: (state, text). The state reads the drop of its held-out loss over the last quarter and its 95 %
    interval over runs (one run: the drop itself): FALLING when the upper end reaches FLAT_NATS, "rising" when the
    lower end reaches −FLAT_NATS, else "flat". The text gives the drop, the state and its best rate (and edge)."""
    out = {}
    for label, d in tail_drop(curves).groupby("label"):
        mean, lo, hi = mean_ci(d["drop"])
        low, high = (lo, hi) if hi == hi else (mean, mean)
        state = ("no evaluation in the last quarter" if mean != mean else FALLING if high >= FLAT_NATS
                 else "rising" if low <= -FLAT_NATS else "flat")
        text = (f"loss fell {fmt_ci(mean, lo, hi, 3)} nats over steps {d['from_step'].iloc[0]}–"
                f"{d['to_step'].iloc[0]}: {state} (\"flat\" would be a drop within ±{FLAT_NATS} nats)")
        best = lrs[(lrs["label"] == label) & lrs["best"]] if lrs is not None else pd.DataFrame()
        if len(best):
            edge = best["edge"].iloc[0]
            text = f"best lr {best['lr'].iloc[0]:g}" + (f" ({edge})" if isinstance(edge, str) and edge else "") + \
                f"; {text}"  # an interior best rate read back from CSV has a NaN edge
        out[label] = (state, text)
    return out


def lm_heads(runs: pd.DataFrame, root: Path) -> pd.DataFrame:
    """Detector scores and α/β of every checkpoint of `runs` (heads.csv): KEYS, step, layer, head, metric, value."""
    h = load_heads(root)[["run", "step", "layer", "head", "metric", "value"]]
    return runs[KEYS].merge(h[h["run"].isin(set(runs["run"]))], on="run").sort_values(
        ["label", "seed", "step", "metric", "layer", "head"], ignore_index=True)


def lm_shifts(heads: pd.DataFrame) -> pd.DataFrame:
    """α/β of every KV-shift head at every checkpoint, in `report.tables.shift_table`'s layout."""
    ab = heads[heads["metric"].isin(["alpha1", "alpha2", "beta1", "beta2"])]
    wide = ab.pivot_table(index=["run", "label", "seed", "step", "layer", "head"], columns="metric",
                          values="value").reset_index()
    wide["final_step"] = wide.groupby("run")["step"].transform("max")
    wide["progress"] = wide["step"] / wide["final_step"]
    wide["quadrant"] = quadrant(wide)
    return wide[["run", "label", "seed", "step", "final_step", "progress", "layer", "head", "alpha1", "alpha2",
                 "beta1", "beta2", "quadrant"]]


def paired_gap(curves: pd.DataFrame, value: str = "eval_loss") -> pd.DataFrame:
    """Per (n_layers, variant, step): vanilla − KV shift `value`, paired by seed; n, mean, lo, hi (Student t)."""
    rows = []
    for (layers, variant, step), g in curves.groupby(["n_layers", "variant", "step"], sort=True):
        w = g.pivot_table(index="seed", columns="arch", values=value)
        if {"vanilla", "kvshift"} <= set(w):
            mean, lo, hi = diff_ci(w["vanilla"], w["kvshift"])
            rows.append({"n_layers": layers, "variant": variant, "step": step, "tokens": g["tokens"].iloc[0],
                         "n": int(w.notna().all(axis=1).sum()), "mean": mean, "lo": lo, "hi": hi})
    return pd.DataFrame(rows, columns=["n_layers", "variant", "step", "tokens", "n", "mean", "lo", "hi"])


# ----------------------------------------------------------------------------- figures


def plot_lm_curves(curves: pd.DataFrame, value: str = "eval_loss") -> Figure:
    """Per (size, variant): `value` vs tokens for vanilla and KV shift (mean over seeds, 95 % band) and below it
    the paired gap vanilla − KV shift (above 0: KV shift is ahead)."""
    groups = [(k, g) for k, g in curves[curves["step"] > 0].groupby(["n_layers", "variant"]) if k[1] != "babygpt"]
    n = max(len(groups), 1)
    fig, axes = plt.subplots(2, n, figsize=(5 * n, 6.5), squeeze=False, sharex="col", height_ratios=(3, 2))
    gaps = paired_gap(curves[curves["step"] > 0], value)
    for col, ((layers, variant), g) in enumerate(groups):
        ax, gap_ax = axes[0][col], axes[1][col]
        for arch, a in g.groupby("arch", sort=True):
            s = group_mean_ci(a, ["tokens"], value)
            (line,) = ax.plot(s["tokens"], s["mean"], label=f"{arch} (n={int(s['n'].max())})")
            ax.fill_between(s["tokens"], s["lo"], s["hi"], color=line.get_color(), alpha=0.2)
        ax.set(xscale="log", ylabel=value.replace("_", " "), title=f"{layers}L {variant}")
        ax.legend(fontsize=8)
        d = gaps[(gaps["n_layers"] == layers) & (gaps["variant"] == variant)]
        gap_ax.plot(d["tokens"], d["mean"], color="k")
        gap_ax.fill_between(d["tokens"], d["lo"], d["hi"], color="k", alpha=0.15)
        gap_ax.axhline(0, color="grey", lw=0.8)
        gap_ax.set(xscale="log", xlabel="training tokens", ylabel="gap: vanilla − KV shift")
    fig.tight_layout()
    return fig


def plot_lm_heads(heads: pd.DataFrame, curves: pd.DataFrame, threshold: float,
                  metrics: Sequence[str] = ("induction_score", "text_induction_score", "prefix_matching")) -> Figure:
    """Per label, mean over seeds: the strongest head's score of each detector vs checkpoint step, and the ICL
    band score at the same steps."""
    fig, axes = plt.subplots(1, len(metrics) + 1, figsize=(4.2 * (len(metrics) + 1), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        best = heads[heads["metric"] == metric].groupby(["label", "seed", "step"], as_index=False)["value"].max()
        for label, g in best.groupby("label"):
            m = g.groupby("step")["value"].mean()
            ax.plot(m.index + 1, m.values, marker=".", label=label)
        ax.axhline(threshold, color="grey", lw=0.8, ls="--")
        ax.set(xscale="log", xlabel="step + 1", ylabel=f"best head {metric}", ylim=(-0.02, 1.02))
    ax = axes[0][-1]
    at_checkpoints = curves[curves["label"].isin(set(heads["label"])) & curves["step"].isin(set(heads["step"]))]
    for label, g in at_checkpoints.groupby("label"):
        m = g.groupby("step")["icl_band_score"].mean()
        ax.plot(m.index + 1, m.values, marker=".", label=label)
    ax.set(xscale="log", xlabel="step + 1", ylabel="ICL band score (nats)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_table4(shifts: pd.DataFrame) -> Figure:
    """Share of KV-shift heads per Table 4 quadrant at init and at the end, per label, beside the paper's 2.9B."""
    labels = sorted(shifts["label"].unique())
    fig, axes = plt.subplots(1, max(len(labels), 1), figsize=(5 * max(len(labels), 1), 3.8), squeeze=False)
    x, paper = np.arange(len(QUADRANTS)), np.array([PAPER_TABLE4[q] for q in QUADRANTS], dtype=float)
    for ax, label in zip(axes[0], labels):
        g = shifts[shifts["label"] == label]
        for i, at in enumerate(("init", "final")):
            rows = at_progress(g, at)
            share = rows["quadrant"].value_counts(normalize=True).reindex(QUADRANTS, fill_value=0)
            ax.bar(x + (i - 1) * 0.27, share.to_numpy(), width=0.27, label=f"{at} (n={len(rows)})")
        ax.bar(x + 0.27, paper / paper.sum(), width=0.27, label="paper 2.9B (n=128)", color="grey")
        ax.set_xticks(x, QUADRANTS, rotation=20, fontsize=7)
        ax.set(ylabel="share of heads", title=label, ylim=(0, 1))
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- claims

GAP_CLAIM = ("KV shifting attention reaches a lower language-modelling loss than vanilla attention at equal "
             "parameters and training tokens (Figs 4–7, 1.5B–19B parameters).")
INDUCTION_CLAIM = ("In a language model KV shift forms its induction heads in the first layer, where a vanilla model "
                   "needs a second layer; and (Olsson et al. 2022) induction heads appear together with the jump in "
                   "in-context learning.")
MEANS = "Intervals: 95 % Student t over seeds, paired by seed for gaps (vanilla and KV shift share data and weights)."


def setup_line(runs: pd.DataFrame) -> str:
    """What the study's runs (the anchor aside) trained, read from their configs."""
    main = runs[runs["variant"] != "babygpt"]
    one = lambda col: "/".join(str(v) for v in sorted(main[col].dropna().unique()))  # noqa: E731
    return (f"{one('task.corpus')} ({one('task.tokenizer')} tokens; held out by document), sequences of "
            f"{one('task.seq_len')}, batch {one('train.batch_size')}, {one('steps')} steps; AdamW, each architecture "
            f"at its best learning rate of those tried (results/lm_lrs.csv; named per model below), "
            f"{one('train.warmup')} warmup steps, cosine to 10 %, β 0.9/0.95, weight decay "
            f"0.1 on matrices, clip 1.0; d_model {one('model.d_model')}, {one('model.n_heads')} heads; `llama` = "
            f"{one('model.norm')} + {one('model.mlp')} (d_mlp {one('model.d_mlp')}) + {one('model.positions')} "
            f"positions, `attn-only` without MLPs. {MEANS}")


def find_lm_gap(curves: pd.DataFrame, runs: pd.DataFrame, lrs: Optional[pd.DataFrame] = None) -> Finding:
    """Per (layers, variant): the paired gap vanilla − KV shift at the last step (part: its interval lies above
    0), in nats and bits per byte, and its change from half the steps to the end ("closes" / "widens"). `curves` and
    `runs` hold each arch at one rate (its best, from `lrs` = `lr_table` of every rate, named in the evidence with
    any edge); the evidence says whether each loss curve is flat at the end or still falling."""
    numbers, parts = [], []
    flat = flatness(curves[curves["variant"] != "babygpt"], lrs)
    for (layers, variant), g in curves[curves["variant"] != "babygpt"].groupby(["n_layers", "variant"]):
        gaps = paired_gap(g)
        if gaps.empty:
            continue
        last = gaps.iloc[-1]
        half = gaps.loc[(gaps["step"] - last["step"] / 2).abs().idxmin()]
        end_w, half_w = (g[g["step"] == s].pivot_table(index="seed", columns="arch", values="eval_loss")
                         for s in (last["step"], half["step"]))
        change = mean_ci((end_w["vanilla"] - end_w["kvshift"]) - (half_w["vanilla"] - half_w["kvshift"]))
        trend = "n/a" if change[1] != change[1] else "closes" if change[2] < 0 else "widens" if change[1] > 0 \
            else "no detectable change"
        bpb = paired_gap(g[g["step"] == last["step"]], "eval_bpb").iloc[0]
        final = g[g["step"] == last["step"]]
        loss = {a: fmt_ci(*mean_ci(final.loc[final["arch"] == a, "eval_loss"]), 3) for a in ("vanilla", "kvshift")}
        params = final.groupby("arch")["n_params"].first()
        name = f"{layers}L {variant}"
        numbers.append(
            f"**{name}** ({params.get('vanilla', 0):,} / {params.get('kvshift', 0):,} parameters, "
            f"{last['tokens'] / 1e6:.2f}M tokens, {int(last['n'])} paired seeds) — held-out loss vanilla {loss['vanilla']}, "
            f"KV shift {loss['kvshift']} nats/token; gap {fmt_ci(last['mean'], last['lo'], last['hi'], 3)} nats = "
            f"{fmt_ci(bpb['mean'], bpb['lo'], bpb['hi'], 3)} bits/byte; at step {int(half['step'])} "
            f"{fmt_ci(half['mean'], half['lo'], half['hi'], 3)}; change to the end {fmt_ci(*change, 3)} ({trend})")
        gap = (end_w["vanilla"] - end_w["kvshift"]).dropna()
        outcome = effect_outcome(last["lo"], last["hi"])  # identical gaps have no interval: inconclusive
        p_claim, p_rev = (stats.ttest_1samp(gap, 0, alternative=a).pvalue if len(gap) > 1 and np.ptp(gap) > 0
                          else np.nan for a in ("greater", "less"))
        arch_lines = [f"{arch}: {flat[lab][1]}" for arch, lab in final.groupby("arch")["label"].first().items()
                      if lab in flat]
        numbers[-1] += ("; " + "; ".join(arch_lines)) if arch_lines else ""
        parts.append((name, Verdict(outcome, "paired t-interval (by seed) of vanilla − KV shift final held-out loss "
                                    "(unbounded) above 0, each arch at its best learning rate; not reproduced if below 0",
                                    "vanilla with the same seed and data order, at its own best learning rate",
                                    [f"gap {fmt_ci(last['mean'], last['lo'], last['hi'], 3)} nats, n={int(last['n'])}",
                                     f"exact sign-flip test {fmt_p(signflip_test(gap))} (distribution-free; the "
                                     f"smallest p it can give at n={len(gap)} is {0.5 ** len(gap):.3g})",
                                     *arch_lines],
                                    p=float(p_claim), p_reverse=float(p_rev) if outcome == NOT_REPRODUCED else np.nan)))
    notes = []
    if any(state == FALLING for state, _ in flat.values()):
        notes.append("At least one loss curve is still falling at the end: the gap is measured at a fixed budget of "
                     "tokens, not at convergence.")
    if lrs is not None and (lrs["best"] & lrs["edge"].isin(["lowest rate tried", "highest rate tried"])).any():
        notes.append("A best learning rate sits at an edge of the rates tried (named in the numbers).")
    return Finding(GAP_CLAIM, setup_line(runs), numbers, overall(parts, "every model size: the paired gap lies above 0",
                                                                 "vanilla at equal parameters and tokens"), parts, notes)


def layer_outcome(layers: object, in_first: bool) -> str:
    """A run's outcome for "has an induction head in layer 0" (`in_first`) or "has none there", from its
    `induction_layers` (space-separated; empty when none formed: censored)."""
    found = [int(x) for x in str(layers).split()] if isinstance(layers, str) and layers.strip() else []
    return CENSORED if not found else SUCCESS if (0 in found) == in_first else FAILURE


def co_outcome(value: object) -> str:
    """A run's outcome for "the first induction head emerges with the ICL jump" (None/NaN: censored)."""
    missing = value is None or (isinstance(value, float) and value != value) or value == ""
    return CENSORED if missing else SUCCESS if str(value) == "True" else FAILURE


def find_lm_induction(runs: pd.DataFrame, threshold: float) -> Finding:
    """Parts (each over runs, ≥ 2/3 succeed; runs without an induction head or ICL jump censored): KV shift has
    an induction head in layer 0; vanilla has none there; the first head emerges with the ICL jump."""
    main = runs[runs["variant"] != "babygpt"]
    numbers = []
    for label, g in main.groupby("label"):
        formed = g["induction_layers"].fillna("").astype(str).str.strip() != ""
        numbers.append(
            f"**{label}** — runs with an induction head (induction_score ≥ {threshold}) at the end: {int(formed.sum())}/"
            f"{len(g)}; best final induction score {fmt_ci(*mean_ci(g['best_final_induction_score']), 3)}; first heads "
            f"{', '.join(g.loc[formed, 'first_induction_head'].astype(str)) or 'none'}; ICL-jump steps "
            f"{', '.join('—' if s != s else str(int(s)) for s in g['icl_jump_step'])}; final ICL band score "
            f"{fmt_ci(*mean_ci(g['final_icl_band_score']), 3)} nats, Olsson's ICL score "
            f"{fmt_ci(*mean_ci(g['final_icl_score']), 3)} nats")
    kv, va = main[main["arch"] == "kvshift"], main[main["arch"] != "kvshift"]
    outcomes = {"kv": [layer_outcome(x, True) for x in kv["induction_layers"]],
                "va": [layer_outcome(x, False) for x in va["induction_layers"]],
                "co": [co_outcome(x) for x in main["icl_jump_with_emergence"]]}
    count = {k: f"{o.count(SUCCESS)} yes, {o.count(FAILURE)} no, {o.count(CENSORED)} censored" for k, o in outcomes.items()}
    parts = [
        ("KV shift forms induction heads in layer 0", Verdict(
            learns_outcome(outcomes["kv"]), "≥ 2/3 of KV-shift runs have an induction head in layer 0 (runs without "
            "one censored)", "the paper's one-layer mechanism", [count["kv"]])),
        ("vanilla forms them only in layer ≥ 1", Verdict(
            learns_outcome(outcomes["va"]), "≥ 2/3 of vanilla runs have none in layer 0 (runs without one censored)",
            "K-composition needs a previous-token head below", [count["va"]])),
        ("the first induction head emerges with the ICL jump", Verdict(
            learns_outcome(outcomes["co"]), "in ≥ 2/3 of runs the ICL-band-score jump lies between the checkpoints "
            "around the first head's emergence (runs without a head or a jump censored)",
            "Olsson et al.'s co-occurrence", [count["co"]])),
    ]
    setup = (f"Every log-spaced checkpoint, scored on `[EOT] r r` with r drawn from the ids of the training text "
             f"(induction_score; threshold {threshold}), on repeated held-out text (text_induction_score, "
             f"text_prefix_matching) and `[EOT] r r r r` (prefix_matching); the ICL band score is evaluated at the same "
             f"steps (`kvshift_lens.analysis.lm_heads`, docs/lm.md).")
    return Finding(INDUCTION_CLAIM, setup, numbers, overall(parts, "the three parts", "see the parts"), parts)


def find_lm_table4(shifts: pd.DataFrame) -> Finding:
    """The suite's Table 4 rule (`report.claims.find_table4`: every quadrant used, heads moved) plus, per label, the
    paper's pattern (most heads on the diagonal quadrants) against these heads' own init: the exact test on
    discordant heads (moved onto the diagonal vs off it)."""
    base = find_table4(shifts)
    numbers, parts = list(base.numbers), list(base.parts)
    head = ["run", "layer", "head"]
    for label, g in shifts.groupby("label"):
        ends = at_progress(g, "final")
        on = at_progress(g, "init").merge(ends, on=head, suffixes=("_init", "_end"))  # one row per head, paired
        on_end, on_init = on["quadrant_end"].isin(DIAGONAL), on["quadrant_init"].isin(DIAGONAL)
        test, reverse = (discordant_test(on_end, on_init, alternative=a) for a in ("greater", "less"))
        end = ends["quadrant"].value_counts().reindex(QUADRANTS, fill_value=0)
        n, k = int(end.sum()), int(end[list(DIAGONAL)].sum())
        numbers.append(f"**{label}** — heads on the diagonal quadrants: {int(on_init.sum())}/{len(on)} at init, "
                       f"{k}/{n} at the end (paper 102/128 = 0.80)")
        outcome = one_sided_outcome(test.p, reverse.p)
        parts.append((f"{label}: training moves heads onto the diagonal quadrants, as in the paper", Verdict(
            outcome, f"exact binomial test on the heads that changed side (onto vs off the diagonal), one-sided at "
            f"{ALPHA}; not reproduced if significantly more left it (heads as units)",
            "the same heads at initialisation",
            [f"moved onto the diagonal {test.a_only}, off it {test.b_only}; onto more: {fmt_p(test.p)}; "
             f"off more: {fmt_p(reverse.p)}"], p=test.p, p_reverse=reverse.p)))
    setup = ("Every head of every KV-shift run of the LM study, at init and at the end; quadrants from the first "
             "two taps (α1 on K_t, α2 on K_(t−1); β likewise for V). Shares carry exact Clopper–Pearson intervals.")
    return Finding(base.claim, setup, numbers, overall(parts, "each part", "the same heads at initialisation"), parts,
                   ["Heads of one run are not independent draws; the Clopper–Pearson intervals and the diagonal tests treat heads as "
                    "units, so they are narrower than intervals over runs would be."])


def anchor_lines(runs: pd.DataFrame) -> list[str]:
    """The nanoGPT anchor: our vanilla baby GPT's held-out loss beside nanoGPT's reported 1.88."""
    a = runs[runs["variant"] == "babygpt"]
    if a.empty:
        return ["The anchor (grid `anchor`) has not been run."]
    return [f"Our vanilla model in nanoGPT's CPU baby-GPT configuration ({int(a['n_params'].iloc[0]):,} parameters, "
            f"{int(a['steps'].iloc[0]):,} steps of {int(a['train.batch_size'].iloc[0])} × {int(a['task.seq_len'].iloc[0])} "
            f"characters, {len(a)} seed(s)): held-out loss "
            f"{fmt_ci(*mean_ci(a['final_eval_loss']), 3)} nats/char ({fmt_ci(*mean_ci(a['final_eval_bpb']), 3)} bits/"
            f"byte) beside nanoGPT's reported ≈ {NANOGPT_BABY_VAL_LOSS}; {a['tokens_per_second'].mean():,.0f} training "
            f"tokens/s, {a['train_seconds'].sum():.0f} s of training."]
