"""Phase diagram of induction learning (issue 5 §2): who learns induction at which width and depth.

Input is `analysis.load_summaries(sweep_dir)` (one row per finished run); everything here is a
function of that frame or of tables derived from it, so the CSVs, figures and verdicts in
`results/phase_diagram*` regenerate from the run directories alone.

Vocabulary: a run *succeeds* when its final induction accuracy is >= `THRESHOLD` (0.9). The
*frontier* of a configuration family (arch × depth × head count × sequence length) for one seed
is the smallest width at which that seed succeeds; over seeds we report its median, range, and the
smallest width at which every seed succeeds. A frontier is *censored* (`> max width`) when a seed
succeeds at no width tried.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from typing import Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from kvshift_lens.analysis import unflatten
from kvshift_lens.models import ModelConfig, build_module

THRESHOLD = 0.9
EMBEDDING_MODULES = ("tok_embed", "pos", "head")  # top-level modules of `build_module` counted as embeddings
FAMILY = ["arch", "n_layers", "n_heads", "seq_len"]  # a frontier is taken within one family
TIDY_COLUMNS = ["arch", "n_layers", "d_model", "n_heads", "d_head", "seq_len", "seed", "induction_acc",
                "best_induction_acc", "steps_to_90", "seconds_to_90", "final_step", "train_seconds",
                "n_params", "n_params_non_embedding", "run"]
_RENAME = {"model.arch": "arch", "model.n_layers": "n_layers", "model.d_model": "d_model",
           "model.n_heads": "n_heads", "model.d_head": "d_head", "task.seq_len": "seq_len",
           "final_induction_acc": "induction_acc"}


@lru_cache(maxsize=None)
def _param_counts(config_json: str) -> tuple[int, int]:
    module = build_module(ModelConfig.from_dict(json.loads(config_json)))
    total = sum(p.numel() for p in module.parameters())
    embed = sum(p.numel() for n, p in module.named_parameters() if n.split(".")[0] in EMBEDDING_MODULES)
    return total, total - embed


def param_counts(model: dict) -> tuple[int, int]:
    """(all parameters, parameters outside token/position embeddings and the unembedding) of a model config."""
    return _param_counts(json.dumps(model, sort_keys=True))


def _model_from_columns(row: dict) -> dict:
    """The nested model config of a `load_summaries` row's `model.*` columns: the derived `model.arch` and
    options a run's mixer lacks (NaN in a mixed sweep) dropped, integral floats back to int."""
    values = {k[len("model."):]: v for k, v in row.items() if k.startswith("model.") and k != "model.arch"}
    clean = {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in values.items()
             if not (isinstance(v, float) and math.isnan(v))}
    return unflatten(clean)


def tidy(summaries: pd.DataFrame) -> pd.DataFrame:
    """One row per run with the phase-diagram columns (`TIDY_COLUMNS`), sorted by configuration.

    `summaries` is `analysis.load_summaries(...)`; parameter counts come from building each model.
    """
    if summaries.empty:
        return pd.DataFrame(columns=TIDY_COLUMNS)
    df = summaries.rename(columns=_RENAME).copy()
    model_cols = [c for c in summaries.columns if c.startswith("model.")]
    counts = [param_counts(_model_from_columns(row)) for row in summaries[model_cols].to_dict("records")]
    df["n_params"] = [c[0] for c in counts]
    df["n_params_non_embedding"] = [c[1] for c in counts]
    df["steps_to_90"] = pd.to_numeric(df["steps_to_90"], errors="coerce").astype("Int64")
    df["seconds_to_90"] = pd.to_numeric(df["seconds_to_90"], errors="coerce")
    keys = ["arch", "n_layers", "n_heads", "seq_len", "d_model", "d_head", "seed"]
    return df[TIDY_COLUMNS].sort_values(keys, ignore_index=True)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (95% by default) for a success proportion k/n; (nan, nan) when n = 0."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def seed_frontiers(df: pd.DataFrame, by: Sequence[str] = FAMILY, width: str = "d_model",
                   threshold: float = THRESHOLD) -> pd.DataFrame:
    """Per family and seed: the smallest `width` whose run succeeds (NaN if none) and the widest tried."""
    rows = []
    for key, g in df.groupby([*by, "seed"], sort=True):
        ok = g.loc[g["induction_acc"] >= threshold, width]
        rows.append({**dict(zip([*by, "seed"], key)), "frontier": float(ok.min()) if len(ok) else math.nan,
                     "max_width": float(g[width].max())})
    return pd.DataFrame(rows, columns=[*by, "seed", "frontier", "max_width"])


def _fmt(x: float) -> str:
    return "nan" if x != x else (f"{x:.0f}" if float(x).is_integer() else f"{x:.3g}")


def frontier(df: pd.DataFrame, by: Sequence[str] = FAMILY, width: str = "d_model",
             threshold: float = THRESHOLD) -> pd.DataFrame:
    """Minimum-width frontier per family with its spread over seeds.

    Columns: `by`, n_seeds, n_reached (seeds that succeed at some width), `median` of the per-seed
    frontier over all seeds (a seed that never succeeds counts as +inf; NaN when that median is
    censored), min/max over the seeds that reached, `all_seeds` (smallest width at which every seed
    succeeds; NaN if none), max_width, and `frontier` — a display string "median [min, max]",
    with "> max_width" when some seeds never succeed.
    """
    per_seed = seed_frontiers(df, by, width, threshold)
    rows = []
    for key, g in per_seed.groupby(list(by), sort=True):
        sub = df[np.logical_and.reduce([df[c] == v for c, v in zip(by, key)])]
        all_ok = sub.groupby(width)["induction_acc"].apply(lambda a: bool((a >= threshold).all()))
        reached = g["frontier"].dropna()
        max_w = float(g["max_width"].max())
        censored_med = float(np.median(g["frontier"].fillna(math.inf)))  # seeds that never succeed count as +inf
        med = censored_med if math.isfinite(censored_med) else math.nan
        lo, hi = (float(reached.min()), float(reached.max())) if len(reached) else (math.nan, math.nan)
        if len(reached) == 0:
            text = f"> {_fmt(max_w)} (0/{len(g)})"
        elif len(reached) < len(g):
            shown = _fmt(med) if med == med else f"> {_fmt(max_w)}"
            text = f"{shown} [{_fmt(lo)}, > {_fmt(max_w)}] ({len(reached)}/{len(g)})"
        else:
            text = f"{_fmt(med)} [{_fmt(lo)}, {_fmt(hi)}]"
        rows.append({**dict(zip(by, key)), "n_seeds": len(g), "n_reached": len(reached), "median": med,
                     "min": lo, "max": hi,
                     "all_seeds": float(all_ok[all_ok].index.min()) if all_ok.any() else math.nan,
                     "max_width": max_w, "frontier": text})
    return pd.DataFrame(rows, columns=[*by, "n_seeds", "n_reached", "median", "min", "max", "all_seeds",
                                       "max_width", "frontier"])


def grid_table(df: pd.DataFrame, value: str, rows: Sequence[str] = ("arch", "n_layers"),
               cols: str = "d_model", agg: str = "mean") -> pd.DataFrame:
    """Pivot of `value` aggregated over seeds: index `rows`, columns `cols` (NaN where never observed)."""
    data = df.assign(**{value: pd.to_numeric(df[value], errors="coerce").astype(float)})
    return data.pivot_table(index=list(rows), columns=cols, values=value, aggfunc=agg, dropna=False)


def success_table(df: pd.DataFrame, rows: Sequence[str] = ("arch", "n_layers"), cols: str = "d_model",
                  threshold: float = THRESHOLD) -> pd.DataFrame:
    """Pivot of "k/n" seeds succeeding per cell."""
    data = df.assign(ok=df["induction_acc"] >= threshold)
    k = data.pivot_table(index=list(rows), columns=cols, values="ok", aggfunc="sum")
    n = data.pivot_table(index=list(rows), columns=cols, values="ok", aggfunc="count")
    return k.astype("Int64").astype(str) + "/" + n.astype("Int64").astype(str)


def _heatmap(ax: plt.Axes, table: pd.DataFrame, title: str, fmt: str, cmap: str,
             vmin: Optional[float] = None, vmax: Optional[float] = None, nan_text: str = "") -> None:
    values = table.to_numpy(dtype=float)
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_facecolor("0.85")
    ax.set_xticks(range(table.shape[1]), [str(c) for c in table.columns])
    ax.set_yticks(range(table.shape[0]), [" ".join(f"{v}" for v in (i if isinstance(i, tuple) else (i,)))
                                          for i in table.index])
    ax.set_xlabel(str(table.columns.name))
    ax.set_ylabel(" / ".join(str(n) for n in table.index.names))
    ax.set_title(title, fontsize=10)
    for (r, c), v in np.ndenumerate(values):
        rgb = im.cmap(im.norm(v))[:3] if v == v else (1.0, 1.0, 1.0)
        dark = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] < 0.5
        ax.text(c, r, nan_text if v != v else format(v, fmt), ha="center", va="center", fontsize=8,
                color="white" if dark else "black")
    ax.figure.colorbar(im, ax=ax, fraction=0.046)


def plot_heatmaps(df: pd.DataFrame, title: str = "") -> Figure:
    """Two heatmaps over (arch, depth) × d_model: mean final induction accuracy and median steps to 90%.

    Steps-to-90 is the median over the seeds that reached 90%; grey cells: no seed reached it.
    """
    acc = grid_table(df, "induction_acc")
    steps = grid_table(df, "steps_to_90", agg="median")
    steps = steps.reindex(index=acc.index, columns=acc.columns)
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.55 * len(acc) + 2), constrained_layout=True)
    _heatmap(axes[0], acc, "final induction accuracy (mean over seeds)", ".2f", "viridis", 0.0, 1.0)
    _heatmap(axes[1], steps, "steps to 90% (median over seeds reaching it)", ".0f", "magma_r",
             nan_text="—")
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def param_matched(df: pd.DataFrame, a: tuple[str, int] = ("kvshift", 1), b: tuple[str, int] = ("vanilla", 2),
                  threshold: float = THRESHOLD) -> pd.DataFrame:
    """Accuracy against parameter count for two (arch, depth) models, per width, seeds pooled.

    Columns: model ("kvshift 1L"), n_heads, seq_len, d_model, n_params, n_params_non_embedding,
    acc_mean, acc_min, acc_max, n_reached, n_seeds.
    """
    pick = df[[(r.arch, r.n_layers) in (a, b) for r in df.itertuples()]]
    out = (pick.groupby(["arch", "n_layers", "n_heads", "seq_len", "d_model"], sort=True)
           .agg(n_params=("n_params", "first"), n_params_non_embedding=("n_params_non_embedding", "first"),
                acc_mean=("induction_acc", "mean"), acc_min=("induction_acc", "min"),
                acc_max=("induction_acc", "max"),
                n_reached=("induction_acc", lambda s: int((s >= threshold).sum())),
                n_seeds=("induction_acc", "size"))
           .reset_index())
    out.insert(0, "model", out["arch"] + " " + out["n_layers"].astype(str) + "L")
    return out.drop(columns=["arch", "n_layers"]).sort_values(["n_heads", "seq_len", "n_params"], ignore_index=True)


def param_frontier(table: pd.DataFrame) -> pd.DataFrame:
    """From `param_matched`: per model, the smallest parameter count at which all / any seeds succeed."""
    rows = []
    for key, g in table.groupby(["model", "n_heads", "seq_len"], sort=True):
        all_ok, any_ok = g[g["n_reached"] == g["n_seeds"]], g[g["n_reached"] > 0]
        rows.append({"model": key[0], "n_heads": key[1], "seq_len": key[2],
                     "params_all_seeds": all_ok["n_params"].min() if len(all_ok) else math.nan,
                     "d_model_all_seeds": all_ok["d_model"].min() if len(all_ok) else math.nan,
                     "params_any_seed": any_ok["n_params"].min() if len(any_ok) else math.nan,
                     "max_params_tried": g["n_params"].max()})
    return pd.DataFrame(rows)


def plot_param_matched(table: pd.DataFrame) -> Figure:
    """Final accuracy (mean, min–max over seeds) against parameter count, one line per model."""
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    for key, g in table.groupby(["model", "n_heads", "seq_len"], sort=True):
        g = g.sort_values("n_params")
        err = np.clip(np.array([g["acc_mean"] - g["acc_min"], g["acc_max"] - g["acc_mean"]], dtype=float), 0, None)
        ax.errorbar(g["n_params"], g["acc_mean"], yerr=err, marker="o", capsize=3,
                    label=f"{key[0]}, {key[1]} head(s), seq {key[2]}")
        for x, y, d in zip(g["n_params"], g["acc_mean"], g["d_model"]):
            ax.annotate(f"d{d}", (x, y), textcoords="offset points", xytext=(3, 4), fontsize=7)
    ax.axhline(THRESHOLD, color="0.5", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("parameters (all, incl. embeddings)")
    ax.set_ylabel("final induction accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("parameter-matched comparison", fontsize=10)
    ax.legend(fontsize=7)
    return fig


def length_scaling(df: pd.DataFrame, threshold: float = THRESHOLD) -> pd.DataFrame:
    """Frontier (d_model) against sequence length, for families swept over >= 2 lengths.

    Adds `slope`: least-squares slope of log2(median frontier) on log2(seq_len) over the lengths
    where every seed reached (NaN with fewer than two such lengths) — 1 would mean width ∝ length.
    """
    fr = frontier(df, threshold=threshold)
    keys = ["arch", "n_layers", "n_heads"]
    lengths = fr.groupby(keys)["seq_len"].transform("nunique")
    fr = fr[lengths >= 2].copy()
    slopes = {}
    for key, g in fr.groupby(keys):
        ok = g[g["n_reached"] == g["n_seeds"]]
        slope = np.polyfit(np.log2(ok["seq_len"]), np.log2(ok["median"]), 1)[0] if len(ok) >= 2 else math.nan
        slopes[key] = round(float(slope), 6) + 0.0  # a flat frontier reads 0, not -1e-16 or -0
    fr["slope"] = [slopes[tuple(k)] for k in fr[keys].itertuples(index=False)]
    return fr.reset_index(drop=True)


def width_trend(length: pd.DataFrame) -> dict[tuple, str]:
    """Per (arch, n_layers, n_heads) of a `length_scaling` table: "grows" if the frontier never falls and rises
    somewhere as the sequence gets longer, "shrinks" if it falls somewhere, else "flat". A censored frontier
    (some seed never succeeds) counts as above the widest width tried."""
    out = {}
    for key, g in length.groupby(["arch", "n_layers", "n_heads"]):
        g = g.sort_values("seq_len")
        level = np.where(g["n_reached"] == g["n_seeds"], g["all_seeds"], 2 * g["max_width"]).astype(float)
        steps = np.diff(level)
        out[tuple(key)] = "shrinks" if (steps < 0).any() else "grows" if (steps > 0).any() else "flat"
    return out


def non_monotone_seeds(df: pd.DataFrame, threshold: float = THRESHOLD) -> pd.DataFrame:
    """Runs (arch, n_layers, n_heads, seq_len, seed) that fail at a width above one where the same seed succeeds:
    columns arch, n_layers, seed, fails_at (the smallest such width)."""
    rows = []
    for (arch, layers, heads, seq, seed), g in df.groupby(["arch", "n_layers", "n_heads", "seq_len", "seed"]):
        g = g.sort_values("d_model")
        ok = (g["induction_acc"] >= threshold).to_numpy()
        if ok.any():
            after = g["d_model"].to_numpy()[int(ok.argmax()):][~ok[int(ok.argmax()):]]
            if len(after):
                rows.append({"arch": arch, "n_layers": int(layers), "seed": int(seed), "fails_at": int(after.min())})
    return pd.DataFrame(rows, columns=["arch", "n_layers", "seed", "fails_at"])


def plot_length_scaling(table: pd.DataFrame) -> Figure:
    """Median frontier width (bars: seed range; open marker: censored at the widest width) vs length."""
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    for key, g in table.groupby(["arch", "n_layers", "n_heads"], sort=True):
        g = g.sort_values("seq_len")
        label = f"{key[0]} {key[1]}L, {key[2]} head(s)"
        full = g[g["n_reached"] == g["n_seeds"]]
        err = np.clip(np.array([full["median"] - full["min"], full["max"] - full["median"]], dtype=float), 0, None)
        line = ax.errorbar(full["seq_len"].to_numpy(float), full["median"].to_numpy(float), yerr=err, marker="o",
                           capsize=3, label=label)
        cens = g[g["n_reached"] < g["n_seeds"]]
        if len(cens):
            ax.scatter(cens["seq_len"], cens["max_width"] * 1.15, marker="^", facecolors="none",
                       edgecolors=line[0].get_color(), label=f"{label}: not all seeds reach (> widest)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("sequence length")
    ax.set_ylabel(f"min d_model reaching {THRESHOLD:.0%}")
    ax.set_title("width needed vs sequence length", fontsize=10)
    ax.legend(fontsize=7)
    return fig


def success_rate(df: pd.DataFrame, threshold: float = THRESHOLD) -> tuple[int, int, float, float]:
    """(successes, runs, Wilson 95% low, high) of a set of runs."""
    k, n = int((df["induction_acc"] >= threshold).sum()), len(df)
    return (k, n, *wilson(k, n))


def paired_sign_test(df: pd.DataFrame, a: tuple[str, int], b: tuple[str, int],
                     on: Sequence[str] = ("n_heads", "seq_len", "d_model", "seed")) -> tuple[int, int, float]:
    """Runs of (arch, depth) `a` and `b` paired on `on`: (pairs where a's final accuracy is higher, pairs,
    one-sided sign-test p-value P(X >= k) under Binomial(n, 1/2)); ties count as losses for `a`."""
    pick = lambda m: df[(df.arch == m[0]) & (df.n_layers == m[1])].set_index(list(on))["induction_acc"]  # noqa: E731
    pairs = pd.concat([pick(a).rename("a"), pick(b).rename("b")], axis=1, join="inner")
    k, n = int((pairs["a"] > pairs["b"]).sum()), len(pairs)
    return k, n, float(sum(math.comb(n, i) for i in range(k, n + 1)) / 2 ** n) if n else math.nan


def in_grid(raw: pd.DataFrame, grids: Sequence[dict]) -> pd.Series:
    """Rows of a `load_summaries` frame inside at least one sweeper grid ({"model/mixer": "none,kv_shift", ...});
    a config-group key such as `model/mixer` matches the chosen option's name column (`model.mixer.name`)."""
    keep = pd.Series(False, index=raw.index)
    for grid in grids:
        ok = pd.Series(True, index=raw.index)
        for key, values in grid.items():
            allowed = {str(v).strip() for v in str(values).split(",")}
            column = key.replace("/", ".") + ".name" if "/" in key else key
            ok &= raw[column].astype(str).isin(allowed)
        keep |= ok
    return keep

