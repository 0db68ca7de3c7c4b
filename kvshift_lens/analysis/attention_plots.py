"""Matplotlib views of the head tables (heads.csv, head_scores) and of a model's attention."""

from __future__ import annotations

from typing import Optional, Sequence

import matplotlib.pyplot as plt
import pandas as pd
import torch
from matplotlib.figure import Figure
from transformer_lens import TransformerBridge

from kvshift_lens.analysis.head_detectors import attention_patterns, repeated_tokens
from kvshift_lens.models.transformer import model_config

SHIFT_METRICS = ("alpha1", "alpha2", "beta1", "beta2")
ABLATION_METRICS = ("induction_score", "previous_token_score", "copying_score", "zero_ablation_acc_drop",
                    "mean_ablation_acc_drop", "mean_ablation_loss_increase")


def _facets(n: int, width: float = 3.6, height: float = 3.0) -> tuple[Figure, list[plt.Axes]]:
    """One row of n axes."""
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False, constrained_layout=True)
    return fig, list(axes[0])


def emergence_curves(heads: pd.DataFrame, metrics: Sequence[str] = ("induction_score", "previous_token_score"),
                     best_per_run: bool = False) -> Figure:
    """Score vs training step (symlog x, so step 0 shows), one panel per metric, one line per head
    (`L{l}H{h}`, prefixed by `run` for a sweep); best_per_run plots each run's max over heads."""
    fig, axes = _facets(len(metrics))
    run_key = ["run"] if "run" in heads.columns else []
    prefix = heads["run"].astype(str) + " " if run_key and heads["run"].nunique() > 1 else ""
    named = heads.assign(line=prefix + "L" + heads["layer"].astype(str) + "H" + heads["head"].astype(str))
    for ax, metric in zip(axes, metrics):
        rows = named[(named["metric"] == metric) & (named["layer"] >= 0)]
        if best_per_run:
            rows = rows.groupby(run_key + ["step"], as_index=False)["value"].max()
            rows["line"] = rows["run"].astype(str) if run_key else "best head"
        for label, line in rows.groupby("line"):
            line = line.sort_values("step")
            ax.plot(line["step"], line["value"], marker=".", label=label)
        ax.set(xscale="symlog", xlabel="step", title=metric)
    axes[0].legend(fontsize="small")
    return fig


def shift_trajectories(heads: pd.DataFrame) -> Figure:
    """α1, α2, β1, β2 of every KV-shift head over training (one panel per coefficient)."""
    fig = emergence_curves(heads, metrics=SHIFT_METRICS)
    fig.suptitle("KV-shift coefficients")
    return fig


@torch.no_grad()
def attention_pattern(model: TransformerBridge, layer: int, head: int, seq_len: Optional[int] = None,
                      seed: int = 0) -> Figure:
    """Heatmap of one head's attention on a `[BOS] r r` sequence; an induction head lights the
    diagonal at offset 1 - L in the second copy."""
    cfg = model_config(model)
    period = ((seq_len or cfg.n_ctx) - 1) // 2
    tokens = repeated_tokens(1, period, cfg.d_vocab, torch.Generator().manual_seed(seed))  # [1, 1 + 2L]
    pattern = attention_patterns(model, tokens)[0, layer, head].cpu()  # [q, k]
    fig, (ax,) = _facets(1, width=4.2, height=3.8)
    image = ax.imshow(pattern, cmap="viridis", vmin=0, vmax=1)
    ax.set(xlabel="key position", ylabel="query position", title=f"L{layer}H{head} on [BOS] r r (L={period})")
    fig.colorbar(image, ax=ax)
    return fig


def ablation_matrix(scores: pd.DataFrame, metrics: Sequence[str] = ABLATION_METRICS) -> Figure:
    """Heads × metric heatmap of a tidy (layer, head, metric, value) table, e.g. head_scores or
    heads.csv at one step; colours are scaled per column, cells show the raw values."""
    rows = scores[scores["metric"].isin(metrics) & (scores["layer"] >= 0)]
    grid = rows.pivot_table(index=["layer", "head"], columns="metric", values="value")
    grid = grid[[m for m in metrics if m in grid.columns]]
    values = grid.to_numpy()  # [head, metric]
    scale = abs(values).max(axis=0, keepdims=True)
    fig, (ax,) = _facets(1, width=1.2 * len(grid.columns) + 2, height=0.45 * len(grid) + 2)
    ax.imshow(values / scale.clip(min=1e-12), cmap="coolwarm", vmin=-1, vmax=1, aspect="auto")  # colour per column
    ax.set_xticks(range(len(grid.columns)), grid.columns, rotation=40, ha="right")
    ax.set_yticks(range(len(grid)), [f"L{layer}H{head}" for layer, head in grid.index])
    for (i, j), v in pd.DataFrame(values).stack().items():
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize="small")
    ax.set_title("per-head scores and ablation effects")
    return fig
