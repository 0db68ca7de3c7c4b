"""Developmental measures side by side (e.g. KV shift vs vanilla), drawn from the tidy development.csv tables of
`kvshift_lens.analysis.development` (and optionally heads.csv), plus the SGLD calibration table of
`kvshift_lens.analysis.llc.calibrate`. No backend is chosen here (as `report.figures`)."""

from __future__ import annotations

from typing import Mapping, Optional

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

HEAD_METRICS = ("previous_token_score", "prefix_matching", "induction_score")  # heads.csv rows drawn per arch


def _steps_axis(ax: plt.Axes, label: str) -> None:
    """Symmetric-log step axis (linear below 1, so step 0 is drawn) from 0, with a y label."""
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(left=0)
    ax.set_xlabel("step")
    ax.set_ylabel(label)


def plot_development(tables: Mapping[str, pd.DataFrame], heads: Optional[Mapping[str, pd.DataFrame]] = None
                     ) -> Figure:
    """One column per run label (e.g. "kv_shift", "vanilla"), rows: loss by token position (one line per
    checkpoint, darker = later), the per-token-loss trajectory on PC1–PC2 (steps annotated), the best head's QK
    eigenvalue scores per step, the LLC ± its chain std per step, and (with `heads`) the best head's
    previous-token, prefix-matching and induction scores per step."""
    labels = list(tables)
    n_rows = 4 + (heads is not None)
    fig, axes = plt.subplots(n_rows, len(labels), figsize=(4.5 * len(labels), 3.2 * n_rows), squeeze=False)
    for col, label in enumerate(labels):
        t = tables[label]
        ax = axes[0, col]
        loss = t[t["metric"] == "loss"]
        steps = sorted(loss["step"].unique())
        for i, (step, g) in enumerate(loss.groupby("step")):
            ax.plot(g["position"], g["value"], color=plt.cm.viridis(i / max(len(steps) - 1, 1)), lw=1)
        ax.set_xlabel("token position")
        ax.set_ylabel("loss")
        ax.set_title(label)

        ax = axes[1, col]
        pcs = t[t["metric"] == "loss_pc"].pivot(index="step", columns="pc", values="value").sort_index()
        if pcs.shape[1] >= 2:
            ax.plot(pcs[1], pcs[2], "-o", ms=3)
            for step, row in pcs.iterrows():
                ax.annotate(str(step), (row[1], row[2]), fontsize=6)
        ax.set_xlabel("loss PC1")
        ax.set_ylabel("loss PC2")

        ax = axes[2, col]
        for metric in sorted(m for m in t["metric"].unique() if m.startswith("qk_")):
            best = t[t["metric"] == metric].groupby("step")["value"].max()
            ax.plot(best.index, best.values, "-o", ms=3, label=metric)
        ax.axhline(0, color="grey", lw=0.5)
        ax.legend(fontsize=6)
        _steps_axis(ax, "best head Σλ/Σ|λ|")

        ax = axes[3, col]
        llc = t[t["metric"] == "llc"].set_index("step")["value"].sort_index()
        std = t[t["metric"] == "llc_std"].set_index("step")["value"].reindex(llc.index)
        ax.errorbar(llc.index, llc.values, yerr=np.nan_to_num(std.values), fmt="-o", ms=3)
        _steps_axis(ax, "LLC")

        if heads is not None:
            ax = axes[4, col]
            h = heads[label]
            for metric in HEAD_METRICS:
                best = h[h["metric"] == metric].groupby("step")["value"].max()
                ax.plot(best.index, best.values, "-o", ms=3, label=metric)
            ax.legend(fontsize=6)
            _steps_axis(ax, "best head score")
    fig.tight_layout()
    return fig


def plot_calibration(table: pd.DataFrame) -> Figure:
    """LLC estimate ± chain std against the SGLD step size, one line per localization γ; usable settings
    (`calibrate`: finite, positive, levelled-off trace) filled, the others hollow."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for gamma, g in table.groupby("localization"):
        g = g.sort_values("lr")
        line = ax.errorbar(g["lr"], g["llc_mean"], yerr=g["llc_std"], fmt="-", label=f"γ = {gamma:g}")
        color = line[0].get_color()
        ax.scatter(g["lr"], g["llc_mean"], c=[color if u else "white" for u in g["usable"]], edgecolors=color, zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel("SGLD step size ε")
    ax.set_ylabel("LLC estimate")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
