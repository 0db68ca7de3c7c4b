"""Confidence intervals over seeds for tidy frames (percentile bootstrap; no scipy needed)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd


def bootstrap_ci(values: Sequence[float], level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of `values` (NaNs dropped; one value -> a point)."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return float("nan"), float("nan")
    if len(x) == 1 or np.all(x == x[0]):
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = rng.choice(x, size=(n_boot, len(x)), replace=True).mean(axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def mean_ci(df: pd.DataFrame, by: Sequence[str], value: str, level: float = 0.95) -> pd.DataFrame:
    """Per group of `by`: n, mean, lo, hi of `value` (one value per seed/run is expected in each group)."""
    rows = []
    for key, group in df.groupby(list(by), sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        lo, hi = bootstrap_ci(group[value].to_numpy(), level)
        rows.append({**dict(zip(by, key)), "n": int(group[value].notna().sum()),
                     "mean": float(group[value].mean()), "lo": lo, "hi": hi})
    return pd.DataFrame(rows)


def fmt_ci(mean: float, lo: float, hi: float, digits: int = 2) -> str:
    """`0.93 [0.91, 0.95]`; NaN -> `n/a`."""
    if np.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
