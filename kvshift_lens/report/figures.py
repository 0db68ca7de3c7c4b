"""Figures of the report, each a pure function of a tidy table (`report.tables`, `report.phase`).

No backend is chosen here: entry points that write PNGs set one (`matplotlib.use("Agg")`), notebooks
keep their inline backend.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from kvshift_lens.report.phase import grid_table, km_table, trained_cells
from kvshift_lens.report.stats import group_mean_ci
from kvshift_lens.report.tables import QUADRANTS, final_rows


def carry_forward(group: pd.DataFrame, value: str) -> pd.DataFrame:
    """Runs of one group on a common step grid, each run's last `value` carried past its last step (a run that
    stopped early at the threshold stays there, instead of leaving the mean): columns run, step, value."""
    wide = group.pivot_table(index="step", columns="run", values=value).sort_index()
    return wide.ffill().reset_index().melt(id_vars="step", var_name="run", value_name=value)


def plot_curves(table: pd.DataFrame, title: str, value: str = "induction_acc", by: str = "label",
                ax: Optional[plt.Axes] = None) -> Figure:
    """Mean over seeds of `value` vs step per `by` group, with a 95 % t-interval band; runs that stopped early
    (train.stop_at) keep their last value."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6, 4))
    for label, g in table.groupby(by, sort=True):
        s = group_mean_ci(carry_forward(g, value), ["step"], value)
        (line,) = ax.plot(s["step"], s["mean"], label=f"{label} (n={s['n'].max()})")
        ax.fill_between(s["step"], s["lo"], s["hi"], color=line.get_color(), alpha=0.2)
    ax.set(xlabel="step", ylabel=value.replace("_", " "), title=title, ylim=(-0.02, 1.02))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_final_vs(table: pd.DataFrame, xs: Sequence[str], title: str, value: str = "induction_acc",
                  transform: Callable[[pd.Series], pd.Series] = lambda s: s, ylabel: Optional[str] = None,
                  by: str = "label") -> Figure:
    """Final `value` after `transform` (mean, 95 % t-interval over seeds) vs each column in `xs`, one line per `by`."""
    final = final_rows(table).assign(**{value: lambda d: transform(d[value])})
    fig, axes = plt.subplots(1, len(xs), figsize=(5 * len(xs), 4), squeeze=False)
    for ax, x in zip(axes[0], xs):
        for label, g in final.groupby(by, sort=True):
            s = group_mean_ci(g, [x], value)
            err = np.nan_to_num(np.array([s["mean"] - s["lo"], s["hi"] - s["mean"]], dtype=float))
            ax.errorbar(s[x], s["mean"], yerr=err, marker="o", capsize=3, label=label)
        ax.set(xlabel=x, ylabel=ylabel or f"final {value.replace('_', ' ')}", title=title)
        if x in ("n_params", "model.d_model"):
            ax.set_xscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_landscape(shifts: pd.DataFrame, label: str = "kvshift 1L", o_ts: Sequence[float] = (0.0, 10.0, 100.0)) -> Figure:
    """App. E landscape (Eq. 10) with the (α1, β1) trajectories of the `label` heads overlaid."""
    from kvshift_lens.analysis.theory import plot_theorem3_landscape

    one = shifts[shifts["label"] == label]
    return plot_theorem3_landscape(tuple(o_ts), trajectories=one[["run", "seed", "step", "layer", "head", "alpha1",
                                                                  "beta1"]], n=101)


def plot_quadrants(shifts: pd.DataFrame) -> Figure:
    """Share of heads in each Table 4 quadrant vs training progress, one panel per model label."""
    labels = sorted(shifts["label"].unique())
    fig, axes = plt.subplots(1, len(labels), figsize=(5 * len(labels), 4), squeeze=False)
    for ax, label in zip(axes[0], labels):
        g = shifts[shifts["label"] == label]
        share = g.groupby(["step", "quadrant"]).size().unstack("quadrant", fill_value=0)
        share = share.reindex(columns=QUADRANTS, fill_value=0)
        share = share.div(share.sum(axis=1), axis=0)
        for q in QUADRANTS:
            ax.plot(share.index.to_numpy() + 1, share[q], marker=".", label=q)
        ax.set(xscale="log", xlabel="checkpoint step + 1", ylabel="share of heads", ylim=(-0.02, 1.02),
               title=f"{label}: {g.groupby(['run', 'layer', 'head']).ngroups} heads")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_lr_curves(table: pd.DataFrame, title: str, by: str = "label", panel: str = "model.d_model") -> Figure:
    """Learning curves per learning rate (one line per `by` × lr, mean over seeds), one panel per `panel` value."""
    values = sorted(table[panel].unique())
    fig, axes = plt.subplots(1, len(values), figsize=(4.5 * len(values), 3.8), squeeze=False, sharey=True)
    for ax, v in zip(axes[0], values):
        sub = table[table[panel] == v].assign(curve=lambda d: d[by] + ", lr " + d["train.lr"].map("{:g}".format))
        plot_curves(sub, f"{panel} = {v}", by="curve", ax=ax)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _heatmap(ax: plt.Axes, table: pd.DataFrame, title: str, fmt: str, cmap: str, vmin: Optional[float] = None,
             vmax: Optional[float] = None, nan_text: str = "", trained: Optional[pd.DataFrame] = None) -> None:
    """One annotated heatmap; a cell that was never trained (`trained` False) is left white and unlabelled, a trained
    cell without a value is grey with `nan_text`."""
    values = table.to_numpy(dtype=float)
    seen = np.ones(values.shape, dtype=bool) if trained is None else trained.reindex_like(table).fillna(False).to_numpy(bool)
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.imshow(np.where(np.isnan(values) & seen, 0.85, np.nan), cmap="gray", vmin=0, vmax=1, aspect="auto")
    ax.set_facecolor("white")
    ax.set_xticks(range(table.shape[1]), [str(c) for c in table.columns])
    ax.set_yticks(range(table.shape[0]), [" ".join(f"{v}" for v in (i if isinstance(i, tuple) else (i,)))
                                          for i in table.index])
    ax.set_xlabel(str(table.columns.name))
    ax.set_ylabel(" / ".join(str(n) for n in table.index.names))
    ax.set_title(title, fontsize=10)
    for (r, c), v in np.ndenumerate(values):
        if not seen[r, c]:
            continue
        rgb = im.cmap(im.norm(v))[:3] if v == v else (1.0, 1.0, 1.0)
        dark = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] < 0.5
        ax.text(c, r, nan_text if v != v else format(v, fmt), ha="center", va="center", fontsize=8,
                color="white" if dark else "black")
    ax.figure.colorbar(im, ax=ax, fraction=0.046)


def plot_heatmaps(cell_table: pd.DataFrame, title: str = "") -> Figure:
    """Two heatmaps over the trained (arch, depth) × d_model cells at each seed's best learning rate: mean best
    accuracy, and the Kaplan–Meier median steps to 90 % (seeds that never reach it censored; "—": fewer than half
    reached it). Never-trained cells stay blank."""
    acc = grid_table(cell_table, "best_induction_acc")
    trained = trained_cells(cell_table).reindex(index=acc.index, columns=acc.columns)
    steps = km_table(cell_table).reindex(index=acc.index, columns=acc.columns)
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.55 * len(acc) + 2), constrained_layout=True)
    _heatmap(axes[0], acc, "best-lr accuracy (mean over seeds)", ".2f", "viridis", 0.0, 1.0, trained=trained)
    _heatmap(axes[1], steps, "steps to 90% at the best lr (Kaplan–Meier median)", ".0f", "magma_r", nan_text="—",
             trained=trained)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def plot_param_matched(table: pd.DataFrame, threshold: float = 0.9) -> Figure:
    """Best-lr accuracy (mean, min–max over seeds) against parameter count, one line per model."""
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    for key, g in table.groupby(["model", "n_heads", "seq_len"], sort=True):
        g = g.sort_values("n_params")
        err = np.clip(np.array([g["acc_mean"] - g["acc_min"], g["acc_max"] - g["acc_mean"]], dtype=float), 0, None)
        ax.errorbar(g["n_params"], g["acc_mean"], yerr=err, marker="o", capsize=3,
                    label=f"{key[0]}, {key[1]} head(s), seq {key[2]}")
        for x, y, d in zip(g["n_params"], g["acc_mean"], g["d_model"]):
            ax.annotate(f"d{d}", (x, y), textcoords="offset points", xytext=(3, 4), fontsize=7)
    ax.axhline(threshold, color="0.5", ls="--", lw=1)
    ax.set(xscale="log", xlabel="parameters (all, incl. embeddings)", ylabel="best-lr induction accuracy",
           ylim=(-0.02, 1.02))
    ax.set_title("parameter-matched comparison", fontsize=10)
    ax.legend(fontsize=7)
    return fig


def plot_frontiers(frontier_table: pd.DataFrame, along: str = "seq_len") -> Figure:
    """Frontier width vs `along` per (arch, depth, heads): found frontiers as points, upper bounds as ▽, censored
    or unreached frontiers as △ above the widest width tried."""
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    for key, g in frontier_table.groupby(["arch", "n_layers", "n_heads"], sort=True):
        if g[along].nunique() < 2:
            continue
        g = g.sort_values(along)
        label = f"{key[0]} {key[1]}L, {key[2]} head(s)"
        found = g[g.frontier_status.isin(["found", "upper bound"])]
        (line,) = ax.plot(found[along], found["frontier"], marker="o", label=label)
        bound = g[g.frontier_status == "upper bound"]
        ax.scatter(bound[along], bound["frontier"] * 0.85, marker="v", color=line.get_color())
        above = g[g.frontier_status.isin(["censored", "none"])]
        ax.scatter(above[along], above["max_width"] * 1.2, marker="^", facecolors="none", edgecolors=line.get_color(),
                   label=f"{label}: not reached / censored" if len(above) else None)
    ax.set(xscale="log", yscale="log", xlabel=along.replace("_", " "), ylabel="frontier d_model (≥ 2/3 seeds, best lr)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_title(f"width needed vs {along.replace('_', ' ')}", fontsize=10)
    ax.legend(fontsize=7)
    return fig


def plot_family(families: pd.DataFrame, order: Sequence[str], tasks: Sequence[str]) -> Figure:
    """Frontier width per mixer (x, in `order`) and task (one panel each): found frontiers as ●, upper bounds as ▽,
    no frontier as △ above the widest width (hollow: censored); the mean best accuracy at the widest width below."""
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 4.2), sharey=True, squeeze=False,
                             constrained_layout=True)
    top = float(families["max_width"].max()) if "max_width" in families else float(families["widest"].max())
    for ax, task in zip(axes[0], tasks):
        g = families[families["task"] == task].set_index("arm")
        arms = [a for a in order if a in g.index]
        for x, arm in enumerate(arms):
            r = g.loc[arm]
            if r["frontier_status"] == "found":
                ax.scatter(x, r["frontier"], marker="o", color="C0")
            elif r["frontier_status"] == "upper bound":
                ax.scatter(x, r["frontier"], marker="v", color="C1")
            else:
                ax.scatter(x, top * 1.6, marker="^", color="C3",
                           facecolors="none" if r["frontier_status"] == "censored" else "C3")
            ax.annotate(f"{r['widest_best_acc']:.2f}", (x, 2.0), ha="center", fontsize=7, color="0.3")
        ax.set_xticks(range(len(arms)), arms, rotation=60, ha="right", fontsize=8)
        ax.set_yscale("log", base=2)
        ax.set_ylim(1.5, top * 2.5)
        ax.set_title(task, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("frontier d_model (≥ 2/3 seeds ≥ 90 %, best lr)")
    fig.suptitle("one head, width needed per mixer (● found, ▽ upper bound, △ none; numbers: best acc at widest)",
                 fontsize=9)
    return fig
