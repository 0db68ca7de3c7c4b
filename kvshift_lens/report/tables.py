"""The data layer of the report: run directories -> tidy frames (learning curves, shift coefficients).

Every table has one row per run × evaluated step (or run × checkpoint × head) with `run` and `seed`,
so the plots (`report.plots`) and the verdicts (`report.claims`) are functions of a CSV.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from kvshift_lens.training.runs import load_runs, run_status
from kvshift_lens.models.checkpoints import load_model
from kvshift_lens.models.config import ModelConfig
from kvshift_lens.models.transformer import build_module
from kvshift_lens.models.coefficients import shift_coefficients
from kvshift_lens.data.tasks.base import make_task
from kvshift_lens.data.tasks.base import upgrade_legacy

CURVE_COLUMNS = ["run", "seed", "label", "step", "induction_acc", "eval_loss", "train_loss", "train_seconds"]
QUADRANTS = ("α1>α2, β1>β2", "α1>α2, β1<β2", "α1<α2, β1>β2", "α1<α2, β1<β2")
INDUCTION_CORNER = QUADRANTS[2]  # key from the previous token (α2), value from the attended one (β1)


def model_label(row: pd.Series) -> str:
    """`vanilla 2L`, `kvshift 1L`, ..."""
    return f"{row['model.arch']} {int(row['model.n_layers'])}L"


@lru_cache(maxsize=None)
def _n_params(model_json: str) -> int:
    return sum(p.numel() for p in build_module(ModelConfig.from_dict(json.loads(model_json))).parameters())


def n_params(run_dir: Path) -> int:
    """Trainable parameter count of the model a run directory trained."""
    return _n_params(json.dumps(json.loads((run_dir / "config.json").read_text())["model"], sort_keys=True))


def _relative(run_dirs: Sequence[Path], root: Path) -> dict[str, Path]:
    return {str(d.relative_to(root)) if d != root else ".": d for d in run_dirs}


def curves_table(run_dirs: Sequence[Path], root: Path, label: Callable[[pd.Series], str] = model_label,
                 extra: Sequence[str] = ()) -> pd.DataFrame:
    """Tidy learning curves of the finished runs among `run_dirs` (all under `root`; diverged runs keep the rows
    they logged, failed and unfinished ones are left out): CURVE_COLUMNS plus `status`, every `model.*` /
    `task.*` column, `train.steps`, `train.lr`, `train.eval_size` (the plateau rule's noise floor), n_params and the
    `extra` columns (a task's own metrics, say)."""
    finished = {k: d for k, d in _relative(run_dirs, root).items() if run_status(d) in ("completed", "diverged")}
    if not finished:
        raise FileNotFoundError(f"no finished runs of this study under {root}")
    runs = load_runs(root)
    runs = runs[runs["run"].isin(finished)].copy()
    runs["label"] = runs.apply(label, axis=1)
    runs["n_params"] = runs["run"].map({k: n_params(d) for k, d in finished.items()})
    config_cols = ["status"] + [c for c in runs.columns if c.startswith(("model.", "task."))] + [
        "train.steps", "train.lr", *(["train.eval_size"] if "train.eval_size" in runs else []), "n_params", *extra]
    return runs[CURVE_COLUMNS + config_cols].sort_values(["label", "seed", "run", "step"]).reset_index(drop=True)


def final_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The last evaluated step of each run."""
    return table.sort_values("step").groupby("run", as_index=False).tail(1)


def shift_table(run_dirs: Sequence[Path], root: Path, labels: dict[str, str]) -> pd.DataFrame:
    """Shift coefficients at every checkpoint of the finished KV-shift runs among `run_dirs`.

    One row per run × step × layer × head: alpha1, alpha2, beta1, beta2 (first two taps), label (from
    `labels`, run -> label), seed, final_step, progress = step / final_step and the Table 4 quadrant.
    """
    frames = []
    for run, run_dir in _relative(run_dirs, root).items():
        ckpts = sorted((run_dir / "checkpoints").glob("step_*.safetensors"))
        if not (run_dir / "summary.json").exists() or not ckpts:
            continue
        seed = json.loads((run_dir / "config.json").read_text())["model"]["seed"]
        final = max(int(p.stem.split("_")[1]) for p in ckpts)
        for path in ckpts:
            coef = shift_coefficients(load_model(path))
            if coef.empty:  # a vanilla model has no shift coefficients
                break
            coef.insert(0, "step", int(path.stem.split("_")[1]))
            coef.insert(0, "seed", seed)
            coef.insert(0, "label", labels.get(run, run))
            coef.insert(0, "run", run)
            coef["final_step"] = final
            frames.append(coef)
    if not frames:
        raise FileNotFoundError(f"no KV-shift checkpoints among the runs of this study under {root}")
    df = pd.concat(frames, ignore_index=True)
    df["progress"] = df["step"] / df["final_step"]
    df["quadrant"] = quadrant(df)
    keep = ["run", "label", "seed", "step", "final_step", "progress", "layer", "head",
            "alpha1", "alpha2", "beta1", "beta2", "quadrant"]
    return df[keep].sort_values(["run", "step", "layer", "head"]).reset_index(drop=True)


def quadrant(df: pd.DataFrame) -> pd.Series:
    """Table 4 cell of each head: α1 vs α2 × β1 vs β2 (ties count as `<`)."""
    a, b = df["alpha1"] > df["alpha2"], df["beta1"] > df["beta2"]
    return pd.Series(np.select([a & b, a & ~b, ~a & b], QUADRANTS[:3], QUADRANTS[3]), index=df.index)


def at_progress(shifts: pd.DataFrame, at: str) -> pd.DataFrame:
    """Rows of the first (`at="init"`) or last (`at="final"`) checkpoint of each run."""
    if at not in ("init", "final"):
        raise ValueError(f"at={at!r} must be 'init' or 'final'")
    return shifts[shifts["progress"] == (1.0 if at == "final" else 0.0)]


def quadrant_counts(shifts: pd.DataFrame, at: str = "final") -> pd.DataFrame:
    """Head counts per quadrant (rows) and model label (columns) at the final checkpoint or at init."""
    counts = at_progress(shifts, at).groupby(["quadrant", "label"]).size().unstack("label", fill_value=0)
    return counts.reindex(QUADRANTS, fill_value=0)


def context_free_accuracy(task: dict, n: int = 20_000, seed: int = 0) -> float:
    """Accuracy of the best predictor that sees only the token at each scored position (not the context before
    it): per scored token, always answer its most frequent target. A model that beats it used the context.

    `task` is a task config mapping (e.g. the `task.*` columns of a run, prefix stripped); NaN entries are
    ignored, integral floats read as ints, and a pre-registry flat layout is accepted."""
    values = {k: (v.item() if hasattr(v, "item") else v) for k, v in task.items()}
    clean = {k: int(v) if isinstance(v, float) and v.is_integer() else v  # a CSV column with NaN reads ints as floats
             for k, v in values.items() if not (isinstance(v, float) and v != v)}
    built = make_task(upgrade_legacy(clean))
    batch = built.sample(n, torch.Generator().manual_seed(seed))
    vocab = int(clean["d_vocab"])
    mask = batch.mask[:, :-1]  # [n, seq - 1]: position t predicts t + 1
    last, target = batch.tokens[:, :-1][mask], batch.tokens[:, 1:][mask]  # [scored]
    counts = torch.zeros(vocab, vocab).index_put_((last, target), torch.ones(len(last)), accumulate=True)
    return float(counts.max(dim=1).values.sum() / len(last))
