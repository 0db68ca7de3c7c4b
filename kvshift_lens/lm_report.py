"""Tables and figures of the language-model study (issue 14): runs of `conf/experiment/lm*.yaml` -> tidy frames.

Every run is labelled `<arch> <n>L <variant>` (variant `llama`, `attn-only`, or `babygpt` for the nanoGPT
anchor). `curves` has one row per run × evaluation, `runs` one row per run (final metrics, throughput and
the induction summary of `kvshift_lens.lm`), `heads` one row per run × checkpoint × head × metric.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

from kvshift_lens.analysis import load_heads, load_runs, load_summaries
from kvshift_lens.emergence import EMERGENCE_THRESHOLD
from kvshift_lens.figures import n_params
from kvshift_lens.stats import mean_ci

KEYS = ["run", "seed", "arch", "variant", "n_layers", "label", "n_params"]
CURVE_METRICS = ["eval_loss", "eval_bpb", "icl_score", "icl_band_score", "induction_acc", "train_loss"]
CONFIG_COLUMNS = ["task.corpus", "task.tokenizer", "task.seq_len", "train.batch_size", "train.lr", "train.warmup",
                  "train.schedule", "model.d_model", "model.n_heads", "model.d_mlp", "model.norm", "model.mlp",
                  "model.positions"]
RUN_COLUMNS = ["steps", "train_tokens", "train_seconds", "tokens_per_second", "final_eval_loss", "final_eval_bpb",
               "final_icl_score", "final_icl_band_score", "first_induction_head", "first_induction_layer",
               "emergence_step", "induction_layers", "best_final_induction_score", "icl_jump_step",
               "icl_jump_with_emergence"]
ANCHOR_PRESET = "vanilla_babygpt"


def _keys(frame: pd.DataFrame, root: Path) -> pd.DataFrame:
    """Add the study's key columns to a frame from `kvshift_lens.analysis` (run paths start with the model preset)."""
    preset = frame["run"].str.split("/").str[0]
    variant = np.where(preset == ANCHOR_PRESET, "babygpt",
                       np.where(frame["model.attn_only"].astype(bool), "attn-only", "llama"))
    out = frame.assign(arch=frame["model.arch"], variant=variant, n_layers=frame["model.n_layers"].astype(int))
    out["label"] = out["arch"] + " " + out["n_layers"].astype(str) + "L " + out["variant"]
    out["n_params"] = out["run"].map({run: n_params(root / run) for run in out["run"].unique()})
    return out


def curves_table(sweep_dir: Path) -> pd.DataFrame:
    """One row per finished run × evaluation: KEYS, step, tokens (trained so far) and CURVE_METRICS."""
    runs = load_runs(sweep_dir)
    finished = set(load_summaries(sweep_dir)["run"])
    runs = _keys(runs[runs["run"].isin(finished)], Path(sweep_dir))
    runs["tokens"] = runs["step"] * runs["train.batch_size"] * runs["task.seq_len"]
    return runs[KEYS + ["step", "tokens"] + CURVE_METRICS].sort_values(["label", "seed", "step"], ignore_index=True)


def runs_table(sweep_dir: Path) -> pd.DataFrame:
    """One row per finished run: KEYS and RUN_COLUMNS (`induction_layers` as a space-separated string)."""
    s = _keys(load_summaries(sweep_dir), Path(sweep_dir))
    s["steps"] = s["final_step"]
    s["induction_layers"] = s["induction_layers"].map(lambda v: " ".join(map(str, v)) if isinstance(v, list) else "")
    for col in RUN_COLUMNS:
        if col not in s:
            s[col] = np.nan
    return s[KEYS + CONFIG_COLUMNS + RUN_COLUMNS].sort_values(["label", "seed"], ignore_index=True)


def heads_table(sweep_dir: Path) -> pd.DataFrame:
    """One row per run × checkpoint × head × metric (detectors and α/β) of the finished runs."""
    h = load_heads(sweep_dir)
    return _keys(h, Path(sweep_dir))[KEYS + ["step", "layer", "head", "metric", "value"]].sort_values(
        ["label", "seed", "step", "metric", "layer", "head"], ignore_index=True)


# ----------------------------------------------------------------------------- figures


def paired_gap(curves: pd.DataFrame, value: str = "eval_loss") -> pd.DataFrame:
    """Per (n_layers, variant, step): vanilla − KV shift `value` paired by seed; n, mean and a Student-t 95 % interval."""
    rows = []
    for (layers, variant, step), g in curves.groupby(["n_layers", "variant", "step"], sort=True):
        w = g.pivot_table(index="seed", columns="arch", values=value)
        if not {"vanilla", "kvshift"} <= set(w):
            continue
        d = (w["vanilla"] - w["kvshift"]).dropna().to_numpy()
        lo, hi = (stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d)) if len(d) > 1 and np.ptp(d) > 0
                  else (np.nan, np.nan))
        rows.append({"n_layers": layers, "variant": variant, "step": step, "tokens": g["tokens"].iloc[0], "n": len(d),
                     "mean": d.mean() if len(d) else np.nan, "lo": lo, "hi": hi})
    return pd.DataFrame(rows)


def plot_curves(curves: pd.DataFrame, value: str = "eval_loss") -> Figure:
    """Per (size, variant): `value` vs tokens for vanilla and KV shift (mean over seeds, 95 % band), and below it
    the paired gap vanilla − KV shift with its Student-t band (above 0: KV shift is ahead)."""
    groups = [g for g in curves.groupby(["n_layers", "variant"], sort=True) if g[0][1] != "babygpt"]
    n = max(len(groups), 1)
    fig, axes = plt.subplots(2, n, figsize=(5 * n, 6.5), squeeze=False, sharex="col", height_ratios=(3, 2))
    gaps = paired_gap(curves[curves["step"] > 0], value)
    for col, ((layers, variant), g) in enumerate(groups):
        ax, gap_ax = axes[0][col], axes[1][col]
        for arch, a in g[g["step"] > 0].groupby("arch", sort=True):
            s = mean_ci(a, ["tokens"], value)
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


def plot_heads(heads: pd.DataFrame, curves: pd.DataFrame,
               metrics: Sequence[str] = ("induction_score", "text_induction_score", "prefix_matching")) -> Figure:
    """Per label: the strongest head's score of each detector vs checkpoint step (mean over seeds), and the
    ICL band score at the same steps, with the emergence threshold."""
    labels = sorted(heads["label"].unique())
    fig, axes = plt.subplots(1, len(metrics) + 1, figsize=(4.2 * (len(metrics) + 1), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        best = heads[heads["metric"] == metric].groupby(["label", "seed", "step"], as_index=False)["value"].max()
        for label, g in best.groupby("label"):
            m = g.groupby("step")["value"].mean()
            ax.plot(m.index + 1, m.values, marker=".", label=label)
        ax.axhline(EMERGENCE_THRESHOLD, color="grey", lw=0.8, ls="--")
        ax.set(xscale="log", xlabel="step + 1", ylabel=f"best head {metric}", ylim=(-0.02, 1.02))
    ax = axes[0][-1]
    steps = set(heads["step"])
    for label, g in curves[curves["label"].isin(labels) & curves["step"].isin(steps)].groupby("label"):
        m = g.groupby("step")["icl_band_score"].mean()
        ax.plot(m.index + 1, m.values, marker=".", label=label)
    ax.set(xscale="log", xlabel="step + 1", ylabel="ICL band score (nats)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def shift_table(heads: pd.DataFrame) -> pd.DataFrame:
    """α/β of every KV-shift head at every checkpoint: one row per run × step × layer × head with alpha1, alpha2,
    beta1, beta2, progress = step / final step and the Table 4 quadrant."""
    ab = heads[heads["metric"].isin(["alpha1", "alpha2", "beta1", "beta2"])]
    wide = ab.pivot_table(index=KEYS + ["step", "layer", "head"], columns="metric", values="value").reset_index()
    wide["progress"] = wide["step"] / wide.groupby("run")["step"].transform("max")
    a, b = wide["alpha1"] > wide["alpha2"], wide["beta1"] > wide["beta2"]
    wide["quadrant"] = np.select([a & b, a & ~b, ~a & b], QUADRANTS[:3], QUADRANTS[3])
    return wide


QUADRANTS = ("α1>α2, β1>β2", "α1>α2, β1<β2", "α1<α2, β1>β2", "α1<α2, β1<β2")
PAPER_TABLE4 = dict(zip(QUADRANTS, (50, 17, 9, 52)))  # Xu et al., Table 4: 128 KV pairs of the 2.9B model


def plot_quadrants(shifts: pd.DataFrame) -> Figure:
    """Share of KV-shift heads in each Table 4 quadrant at init and at the end, per label, beside the paper's 2.9B."""
    labels = sorted(shifts["label"].unique())
    fig, axes = plt.subplots(1, max(len(labels), 1), figsize=(5 * max(len(labels), 1), 3.8), squeeze=False)
    x = np.arange(len(QUADRANTS))
    paper = np.array([PAPER_TABLE4[q] for q in QUADRANTS], dtype=float)
    for ax, label in zip(axes[0], labels):
        g = shifts[shifts["label"] == label]
        for i, (name, p) in enumerate((("init", 0.0), ("end", 1.0))):
            share = g[g["progress"] == p]["quadrant"].value_counts(normalize=True).reindex(QUADRANTS, fill_value=0)
            ax.bar(x + (i - 1) * 0.27, share.to_numpy(), width=0.27, label=f"{name} (n={int((g['progress'] == p).sum())})")
        ax.bar(x + 0.27, paper / paper.sum(), width=0.27, label="paper 2.9B (n=128)", color="grey")
        ax.set_xticks(x, QUADRANTS, rotation=20, fontsize=7)
        ax.set(ylabel="share of heads", title=label, ylim=(0, 1))
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def provenance_keys(sweep_dir: Path) -> dict:
    """Seeds, run count and summed train seconds of the finished runs (for the study's provenance record)."""
    s = load_summaries(sweep_dir)
    return {"n_runs": len(s), "seeds": sorted(int(x) for x in s["seed"].unique()),
            "train_seconds_sum": round(float(s["train_seconds"].sum()), 1),
            "configs": {r: json.loads(Path(sweep_dir, r, "config.json").read_text()) for r in s["run"]}}
