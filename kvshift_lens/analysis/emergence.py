"""Track induction heads over training: detectors on every checkpoint of a run -> heads.csv,
plus emergence/phase-change steps and the final induction heads in summary.json."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
from transformer_lens import TransformerBridge

from kvshift_lens.analysis.circuits import classify_heads
from kvshift_lens.analysis.head_detectors import METRICS, ablate_heads, head_scores, induction_rows, repeated_tokens
from kvshift_lens.models.checkpoints import load_model
from kvshift_lens.models.coefficients import shift_coefficients

PathLike = Union[str, Path]
PHASE_CHANGE_MIN_RISE = 0.25  # induction_acc gain over the run needed to call its steepest rise a phase change
EMERGENCE_THRESHOLD = 0.5  # induction_score of an induction head (uniform causal attention scores ~1.4/T)
CHEAP_METRICS = ("induction_score", "prefix_matching", "previous_token_score", "duplicate_token_score",
                 "copying_score")  # pattern + weight metrics: no per-head ablation forward passes
HEADS_FILE = "heads.csv"
HEADS_COLUMNS = ["step", "layer", "head", "metric", "value"]


def checkpoint_step(path: Path) -> int:
    """Training step of `checkpoints/step_XXXXXXX.safetensors`."""
    return int(path.stem.split("_")[-1])


def run_checkpoints(run_dir: PathLike) -> dict[int, Path]:
    """Every saved model checkpoint of a run, by step (ascending)."""
    paths = sorted(Path(run_dir, "checkpoints").glob("step_*.safetensors"), key=checkpoint_step)
    return {checkpoint_step(p): p for p in paths}


def shift_rows(model: TransformerBridge) -> pd.DataFrame:
    """α/β of every KV-shift (KV) head as tidy rows layer, head, metric (alpha1, ..., beta2), value;
    empty for vanilla models."""
    coefs = shift_coefficients(model)
    return coefs.melt(id_vars=["layer", "head"], var_name="metric", value_name="value")


def checkpoint_rows(model: TransformerBridge, step: int, metrics: Sequence[str] = CHEAP_METRICS,
                    batch_size: int = 16, seed: int = 0) -> pd.DataFrame:
    """Detector scores and α/β of one checkpoint as tidy rows step, layer, head, metric, value."""
    frames = [head_scores(model, metrics=metrics, batch_size=batch_size, seed=seed), shift_rows(model)]
    rows = pd.concat([f for f in frames if len(f)], ignore_index=True)
    rows.insert(0, "step", step)
    return rows.astype({"step": int, "layer": int, "head": int, "value": float})[HEADS_COLUMNS]


def read_heads(run_dir: PathLike) -> pd.DataFrame:
    """A run's heads.csv, or an empty frame with its columns."""
    path = Path(run_dir, HEADS_FILE)
    return pd.read_csv(path) if path.exists() else pd.DataFrame(columns=HEADS_COLUMNS)


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)


def detect_run(run_dir: PathLike, metrics: Sequence[str] = CHEAP_METRICS, final_metrics: Sequence[str] = METRICS,
               batch_size: int = 16, seed: int = 0,
               score: Optional[Callable[[TransformerBridge, int], pd.DataFrame]] = None) -> pd.DataFrame:
    """Score every checkpoint not yet in heads.csv (`final_metrics`, ablations included, on the last
    one; or `score(model, step)` rows when given), appending after each so an interrupted analysis
    resumes; returns the whole table."""
    run_dir = Path(run_dir)
    checkpoints = run_checkpoints(run_dir)
    if not checkpoints:
        raise FileNotFoundError(f"no checkpoints/step_*.safetensors in {run_dir}: is it a finished run directory?")
    heads = read_heads(run_dir)
    final, done = max(checkpoints), set(heads["step"])
    with torch.no_grad():
        for step, path in checkpoints.items():
            if step in done:
                continue
            rows = score(load_model(path), step) if score is not None else \
                checkpoint_rows(load_model(path), step, final_metrics if step == final else metrics, batch_size, seed)
            heads = pd.concat([heads, rows], ignore_index=True) if len(heads) else rows
            _write_csv(heads, run_dir / HEADS_FILE)  # after each checkpoint: an interrupted run resumes
    return heads.sort_values(["step", "metric", "layer", "head"], ignore_index=True)


def best_induction(heads: pd.DataFrame) -> pd.Series:
    """The strongest head's induction_score at each checkpoint, indexed by step."""
    scores = heads[heads["metric"] == "induction_score"]
    return scores.groupby("step")["value"].max().sort_index()


def emergence_step(heads: pd.DataFrame, threshold: float = EMERGENCE_THRESHOLD) -> Optional[int]:
    """First checkpoint from which the best head's induction_score stays >= threshold to the end."""
    best = best_induction(heads)
    below = best[best < threshold]
    after = best.index[best.index > below.index.max()] if len(below) else best.index
    return int(after.min()) if len(after) else None


def phase_change_step(metrics: pd.DataFrame, min_rise: float = PHASE_CHANGE_MIN_RISE) -> Optional[int]:
    """Evaluation step that ends the steepest rise of induction_acc per training step; None when accuracy
    never climbs `min_rise` above its start (a flat curve's steepest wiggle is not a phase change)."""
    m = metrics.sort_values("step")
    acc = m["induction_acc"].to_numpy()
    rate = np.diff(acc) / np.diff(m["step"].to_numpy())
    if not len(rate) or acc.max() - acc[0] < min_rise:
        return None
    return int(m["step"].iloc[int(rate.argmax()) + 1])


def head_name(layer: int, head: int) -> str:
    """"L{layer}H{head}", the name summary.json uses."""
    return f"L{layer}H{head}"


def final_induction_heads(model: TransformerBridge, threshold: float = EMERGENCE_THRESHOLD) -> pd.DataFrame:
    """classify_heads of `model`, restricted to heads with induction_score >= threshold."""
    table = classify_heads(model)
    return table[table["induction_score"] >= threshold].reset_index(drop=True)


def induction_heads_ablated(model: TransformerBridge, heads: Sequence[tuple[int, int]], batch_size: int = 32,
                            seed: int = 0) -> dict:
    """Next-token accuracy on `[BOS] r r` (length n_ctx) at the second-copy positions whose token occurs
    once in r (where induction determines the answer), intact and with all `heads` zero-ablated together,
    next to chance (1 / tokens r is drawn from)."""
    cfg = model.cfg
    tokens = repeated_tokens(batch_size, (cfg.n_ctx - 1) // 2, cfg.d_vocab, torch.Generator().manual_seed(seed))
    mask = induction_rows(tokens)
    _, acc = ablate_heads(model, tokens, mask, [])
    _, ablated = ablate_heads(model, tokens, mask, heads, "zero") if heads else (None, None)
    return {"repeated_acc": round(acc, 4), "repeated_acc_induction_heads_ablated":
            None if ablated is None else round(ablated, 4), "repeated_chance": round(1 / (cfg.d_vocab - 1), 4)}


def update_summary(run_dir: PathLike, heads: pd.DataFrame, threshold: float = EMERGENCE_THRESHOLD) -> dict:
    """Add emergence_step, phase_change_step, induction_heads and their mechanisms (and scores) to
    summary.json, keeping every existing key; returns the new summary."""
    run_dir = Path(run_dir)
    checkpoints = run_checkpoints(run_dir)
    model = load_model(checkpoints[max(checkpoints)])
    found = final_induction_heads(model, threshold)
    return merge_summary(run_dir, {
        "emergence_threshold": threshold,
        "emergence_step": emergence_step(heads, threshold),
        "phase_change_step": phase_change_step(pd.read_csv(run_dir / "metrics.csv")),
        "induction_heads": [head_name(r.layer, r.head) for r in found.itertuples()],
        "induction_mechanisms": found["mechanism"].tolist(),
        "induction_head_scores": [round(float(s), 4) for s in found["induction_score"]],
        **induction_heads_ablated(model, list(zip(found["layer"], found["head"]))),
    })


def merge_summary(run_dir: PathLike, keys: dict) -> dict:
    """Add `keys` to a run's summary.json (atomically), keeping every other key; returns the new summary."""
    path = Path(run_dir) / "summary.json"
    summary = {**(json.loads(path.read_text()) if path.exists() else {}), **keys}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, path)
    return summary
