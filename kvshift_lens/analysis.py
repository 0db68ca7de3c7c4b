"""Load runs and sweeps into tidy pandas frames (one row per run × evaluation step)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import pandas as pd

PathLike = Union[str, Path]


def find_runs(path: PathLike) -> list[Path]:
    """Run directories (those holding config.json + metrics.csv) at or below `path`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no run or sweep directory at {path}")
    return sorted(p.parent for p in path.rglob("config.json") if (p.parent / "metrics.csv").exists())


def run_config_columns(run_dir: Path) -> dict:
    """The run's config flattened to `model.arch`, `task.seq_len`, `train.lr`, ... plus `seed`."""
    cfg = json.loads((run_dir / "config.json").read_text())
    flat = {f"{group}.{k}": v for group, node in cfg.items() for k, v in node.items()}
    flat["seed"] = cfg["model"]["seed"]
    return flat


def load_runs(path: PathLike) -> pd.DataFrame:
    """Metrics of one run or a whole sweep as one tidy frame: config columns + metrics per step.

    Columns: `run` (path relative to `path`), `seed`, `model.*`, `task.*`, `train.*`, then
    `step, train_loss, eval_loss, induction_acc, lr, train_seconds`.
    """
    root = Path(path)
    frames = []
    for run_dir in find_runs(root):
        metrics = pd.read_csv(run_dir / "metrics.csv")
        for k, v in run_config_columns(run_dir).items():
            metrics.insert(0, k, [v] * len(metrics))
        metrics.insert(0, "run", str(run_dir.relative_to(root)) if run_dir != root else ".")
        frames.append(metrics)
    if not frames:
        raise FileNotFoundError(f"no runs under {root} (a run directory holds config.json and metrics.csv)")
    return pd.concat(frames, ignore_index=True)


def load_summaries(path: PathLike) -> pd.DataFrame:
    """One row per finished run: config columns + summary.json scalars (final acc, steps_to_90, ...)."""
    root = Path(path)
    rows = []
    for run_dir in find_runs(root):
        summary_path = run_dir / "summary.json"
        if not summary_path.exists():
            continue
        summary = {k: v for k, v in json.loads(summary_path.read_text()).items() if not isinstance(v, dict)}
        rows.append({"run": str(run_dir.relative_to(root)) if run_dir != root else ".",
                     **run_config_columns(run_dir), **summary})
    return pd.DataFrame(rows)
