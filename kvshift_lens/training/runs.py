"""Load runs and sweeps into tidy pandas frames (one row per run × evaluation step)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Union

import pandas as pd

from kvshift_lens.training.cli import ERROR_FILE, SUMMARY_FILE, read_failure
from kvshift_lens.core.errors import ConfigError
from kvshift_lens.models.config import arch_name, upgrade_legacy as upgrade_model
from kvshift_lens.data.tasks.base import upgrade_legacy as upgrade_task

PathLike = Union[str, Path]


def is_run_dir(path: Path) -> bool:
    """A run directory: the trainer (or a job that failed validation) wrote its config.json there."""
    return Path(path, "config.json").is_file()


def interrupted_stubs(path: PathLike) -> list[Path]:
    """Directories at or below `path` that a command interrupted before training began left behind: hydra's
    `.hydra/` and no run in them. Every loader skips them; a rerun of the same command trains there."""
    return sorted(p.parent for p in Path(path).rglob(".hydra") if not is_run_dir(p.parent))


def no_runs_error(path: PathLike) -> FileNotFoundError:
    """What every loader raises for a directory without runs (naming interrupted stubs, if that is all it holds)."""
    stubs = interrupted_stubs(path)
    note = (f"; {len(stubs)} run(s) were interrupted before training began (only .hydra/, e.g. {stubs[0]}): "
            f"rerun their commands") if stubs else ""
    return FileNotFoundError(f"no runs under {path} (a run directory holds config.json and metrics.csv){note}")


def find_runs(path: PathLike, *, failed: bool = False) -> list[Path]:
    """Run directories (config.json + metrics.csv) at or below `path`; with `failed`, also the runs that
    failed before their first evaluation (config.json + error.txt). A run directory is read as that run
    only, even in the layout before runs stopped nesting (where other runs lived inside the default run)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no run or sweep directory at {path}")
    marks = ("metrics.csv", ERROR_FILE) if failed else ("metrics.csv",)
    candidates = [path] if is_run_dir(path) else sorted(p.parent for p in path.rglob("config.json"))
    return [d for d in candidates if any((d / m).exists() for m in marks)]


def run_status(run_dir: Path) -> str:
    """"completed", "diverged" or "failed" (summary.json's status; error.txt), else "incomplete" (running or killed)."""
    summary = Path(run_dir, SUMMARY_FILE)
    if summary.exists():
        return json.loads(summary.read_text()).get("status", "completed")  # summaries predating `status` finished
    return "failed" if Path(run_dir, ERROR_FILE).exists() else "incomplete"


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
    mixer = cfg["model"].get("mixer")  # the config as given, for a job that failed validation
    if isinstance(mixer, dict) and isinstance(mixer.get("name"), str):
        flat["model.arch"] = arch_name(mixer["name"])
    flat["seed"] = cfg["model"].get("seed")
    return flat


def _per_run_table(root: Path, filename: str, missing: str = "") -> pd.DataFrame:
    """Concatenate `<run>/<filename>` over the runs under `root`, prefixed by `run` and config columns;
    `missing` is the error when runs exist but none has the file."""
    runs = find_runs(root)
    if not runs:
        raise no_runs_error(root)
    frames = []
    for run_dir in runs:
        if not (run_dir / filename).exists():
            continue
        table = pd.read_csv(run_dir / filename)
        for k, v in run_config_columns(run_dir).items():
            table.insert(0, k, [v] * len(table))
        table.insert(0, "status", run_status(run_dir))
        table.insert(0, "run", str(run_dir.relative_to(root)) if run_dir != root else ".")
        frames.append(table)
    if not frames:
        raise FileNotFoundError(missing)
    return pd.concat(frames, ignore_index=True)


def load_runs(path: PathLike) -> pd.DataFrame:
    """Metrics of one run or a whole sweep as one tidy frame: config columns + metrics per step.

    Columns: `run` (path relative to `path`), `status` (see `run_status`: diverged runs keep the rows
    they logged), `seed`, `model.*` (mixer options as `model.mixer.*`, and the derived `model.arch`),
    `task.*`, `train.*`, then `step, train_loss, eval_loss, induction_acc, lr, train_seconds`. Runs that
    failed before their first evaluation have no rows: a warning names them (`load_summaries` lists them
    with their error).
    """
    root = Path(path)
    early = [d for d in find_runs(root, failed=True) if not (d / "metrics.csv").exists()]
    if early:
        warnings.warn(f"{len(early)} run(s) failed before their first evaluation and have no metrics: "
                      + "; ".join(f"{d}: {read_failure(d)}" for d in early), stacklevel=2)
    return _per_run_table(root, "metrics.csv")


def load_summaries(path: PathLike, *, incomplete: bool = False) -> pd.DataFrame:
    """One row per finished or failed run: `run`, `status` ("completed", "diverged", "failed"), config
    columns, then summary.json scalars (final acc, steps_to_90, ..., `error` for runs that did not
    complete). Runs still in progress or killed (no summary.json) are left out unless `incomplete`; a
    directory without any run raises `FileNotFoundError` like the other loaders."""
    root = Path(path)
    runs = find_runs(root, failed=True)
    if not runs:
        raise no_runs_error(root)
    rows = []
    for run_dir in runs:
        status = run_status(run_dir)
        if status == "incomplete" and not incomplete:
            continue
        summary = json.loads((run_dir / SUMMARY_FILE).read_text()) if (run_dir / SUMMARY_FILE).exists() else {}
        summary = {k: v for k, v in summary.items() if not isinstance(v, dict)}
        if status == "failed":
            summary.setdefault("error", read_failure(run_dir))
        rows.append({"run": str(run_dir.relative_to(root)) if run_dir != root else ".", "status": status,
                     **run_config_columns(run_dir), **summary})
    return pd.DataFrame(rows)


def load_heads(path: PathLike) -> pd.DataFrame:
    """heads.csv of one run or a whole sweep as one tidy frame: `run`, config columns, then
    `step, layer, head, metric, value` (runs without heads.csv are skipped)."""
    root = Path(path)
    return _per_run_table(root, "heads.csv",
                          f"no heads.csv under {root}; run `python -m experiments.detect run_dir={root}` first")
