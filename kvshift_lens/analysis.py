"""Load runs and sweeps into tidy pandas frames (one row per run × evaluation step)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import pandas as pd

from kvshift_lens.errors import ConfigError
from kvshift_lens.model_config import arch_name, upgrade_legacy as upgrade_model
from kvshift_lens.tasks.base import upgrade_legacy as upgrade_task

PathLike = Union[str, Path]


def find_runs(path: PathLike) -> list[Path]:
    """Run directories (those holding config.json + metrics.csv) at or below `path`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no run or sweep directory at {path}")
    return sorted(p.parent for p in path.rglob("config.json") if (p.parent / "metrics.csv").exists())


def flatten(node: dict, prefix: str = "") -> dict:
    """Nested mapping -> one level with dotted keys: {"model": {"mixer": {"name": x}}} -> {"model.mixer.name": x}."""
    flat = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def unflatten(flat: dict) -> dict:
    """Inverse of `flatten`: dotted keys -> nested mapping."""
    nested: dict = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def run_config_columns(run_dir: Path) -> dict:
    """The run's config flattened to `model.mixer.name`, `model.mixer.window`, `task.seq_len`, `train.lr`, ...
    plus the derived `model.arch` ("vanilla" without a mixer, "kvshift" for kv_shift, else the mixer name)
    and `seed`. Configs written before the mixer/task registries are read in the current layout."""
    cfg = json.loads((run_dir / "config.json").read_text())
    cfg["model"] = upgrade_model(cfg["model"])
    try:
        cfg["task"] = upgrade_task(cfg["task"])
    except ConfigError:  # a task this installation does not register: keep its columns as written
        pass
    flat = flatten(cfg)
    flat["model.arch"] = arch_name(cfg["model"]["mixer"]["name"])
    flat["seed"] = cfg["model"]["seed"]
    return flat


def _per_run_table(root: Path, filename: str, missing: str) -> pd.DataFrame:
    """Concatenate `<run>/<filename>` over the runs under `root`, prefixed by `run` and config columns."""
    frames = []
    for run_dir in find_runs(root):
        if not (run_dir / filename).exists():
            continue
        table = pd.read_csv(run_dir / filename)
        for k, v in run_config_columns(run_dir).items():
            table.insert(0, k, [v] * len(table))
        table.insert(0, "run", str(run_dir.relative_to(root)) if run_dir != root else ".")
        frames.append(table)
    if not frames:
        raise FileNotFoundError(missing)
    return pd.concat(frames, ignore_index=True)


def load_runs(path: PathLike) -> pd.DataFrame:
    """Metrics of one run or a whole sweep as one tidy frame: config columns + metrics per step.

    Columns: `run` (path relative to `path`), `seed`, `model.*` (mixer options as `model.mixer.*`, and the
    derived `model.arch`), `task.*`, `train.*`, then
    `step, train_loss, eval_loss, induction_acc, lr, train_seconds`.
    """
    root = Path(path)
    return _per_run_table(root, "metrics.csv",
                          f"no runs under {root} (a run directory holds config.json and metrics.csv)")


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


def load_heads(path: PathLike) -> pd.DataFrame:
    """heads.csv of one run or a whole sweep as one tidy frame: `run`, config columns, then
    `step, layer, head, metric, value` (runs without heads.csv are skipped)."""
    root = Path(path)
    return _per_run_table(root, "heads.csv",
                          f"no heads.csv under {root}; run `python -m experiments.detect run_dir={root}` first")
