"""Developmental measures over a run's checkpoints (issue 20 §3; definitions in docs/detect.md):

Olsson et al. 2022's loss by token position and per-token-loss PCA (the phase change as a turn of the
trajectory), Elhage et al. 2021's positive-eigenvalue measure on QK circuits (with our shift-aware variant
named apart), and the local learning coefficient over checkpoints (`kvshift_lens.analysis.llc`). Prefix
matching is not recomputed: heads.csv already holds Olsson's score at every checkpoint
(`head_detectors.prefix_matching`). `analyze_development` writes one tidy development.csv per run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from kvshift_lens.analysis.circuits import PREVIOUS_THRESHOLD
from kvshift_lens.analysis.emergence import (EMERGENCE_THRESHOLD, PathLike, _write_csv, merge_summary, read_heads,
                                             run_checkpoints)
from kvshift_lens.analysis.llc import LLCConfig, bare_checkpoint, estimate_llc, stage_boundaries
from kvshift_lens.data.icl import icl_from_token_losses, token_losses
from kvshift_lens.data.tasks.base import make_task
from kvshift_lens.models.layers import MixerAttention
from kvshift_lens.models.transformer import model_config

DEV_FILE = "development.csv"
DEV_COLUMNS = ["step", "metric", "layer", "head", "position", "pc", "value"]  # -1: not applicable
N_PCS = 3  # principal components of the per-token-loss trajectory kept in development.csv
TURN_MIN_BEND = 0.05  # a turn must lie this fraction of the trajectory's span off its chord (else: no turn)


# --- Olsson et al. 2022: losses ----------------------------------------------------------------

@torch.no_grad()
def per_token_losses(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """−log P(x_p | x_<p) of every token: `tokens` [batch, T] -> [batch, T] float, column 0 NaN (`token_losses`)."""
    return token_losses(model(tokens), tokens)


def loss_by_position(losses: torch.Tensor) -> torch.Tensor:
    """Olsson et al.'s loss by token index: batch mean of `losses` [batch, T] (`per_token_losses`) -> [T] (0: NaN)."""
    return losses.mean(0)


def loss_pca(losses: np.ndarray, n_components: int = N_PCS) -> tuple[np.ndarray, np.ndarray]:
    """Olsson et al.'s per-token-loss PCA: rows are checkpoints, columns the losses of one fixed set of tokens.

    losses [checkpoint, token] -> (coordinates [checkpoint, k] of each checkpoint on the top k principal
    components of the column-centred matrix, explained-variance ratio [k]); signs fixed so that the last
    checkpoint has a positive coordinate on every component.
    """
    centred = losses - losses.mean(0, keepdims=True)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    k = min(n_components, len(s))
    coords = u[:, :k] * s[:k]  # [checkpoint, k]
    coords = coords * np.where(coords[-1] < 0, -1.0, 1.0)
    total = (s ** 2).sum()
    return coords, (s[:k] ** 2 / total if total > 0 else np.zeros(k))


def trajectory_turn(coords: np.ndarray, min_bend: float = TURN_MIN_BEND) -> Optional[int]:
    """Index of the checkpoint where the PC1–PC2 trajectory turns, or None for a trajectory without a turn.

    Rule: the turn is the point farthest (Euclidean, in the PC1–PC2 plane) from the chord joining the first
    and the last checkpoint; it counts only if that distance is at least `min_bend` times the trajectory's
    span (its largest pairwise distance), so a straight or nearly straight path has none. coords [checkpoint, ≥2].
    """
    pts = coords[:, :2]
    span = np.max(np.linalg.norm(pts[:, None] - pts[None], axis=-1)) if len(pts) > 1 else 0.0
    if len(pts) < 3 or span == 0:
        return None
    chord = pts[-1] - pts[0]
    rel = pts - pts[0]
    if np.linalg.norm(chord) > 0:
        dist = np.abs(chord[0] * rel[:, 1] - chord[1] * rel[:, 0]) / np.linalg.norm(chord)
    else:  # the path returns to its start: the turn is the point farthest from it
        dist = np.linalg.norm(rel, axis=1)
    turn = int(dist.argmax())
    return turn if dist[turn] >= min_bend * span and 0 < turn < len(pts) - 1 else None


# --- Elhage et al. 2021: QK-circuit eigenvalues ------------------------------------------------

def eigenvalue_score(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Elhage et al.'s eigenvalue summary Σλ / Σ|λ| of the low-rank matrices left @ right.

    left [head, n, r], right [head, r, n] -> [head] in [−1, 1]; the nonzero eigenvalues of the [n, n]
    product are those of the [r, r] product right @ left (as TL's `FactoredMatrix.eigenvalues`).
    """
    eig = torch.linalg.eigvals((right @ left).double())  # [head, r] complex
    return (eig.sum(-1).real / eig.abs().sum(-1).clamp_min(torch.finfo(torch.float64).tiny)).float()


def _side(attn: MixerAttention, x: torch.Tensor, side: str, lag: int) -> torch.Tensor:
    """Query, key or value (`side`) that an input vector contributes `lag` tokens later, biases removed:
    x [n, d_model] -> [n, head, d_head] (KV heads repeated for GQA); `lag` must be < the side's lag count."""
    seq = torch.zeros(x.shape[0], lag + 1, x.shape[1], dtype=x.dtype, device=x.device)  # [n, lag+1, d_model]
    seq[:, 0] = x
    terms = attn.lag_terms(seq, side) - attn.lag_terms(torch.zeros_like(seq), side)  # [lags, n, lag+1, kv, d_head]
    out = terms[lag, :, lag]  # [n, kv, d_head]
    return out.repeat_interleave(attn.n_heads // out.shape[1], dim=1)


def _token_inputs(module: nn.Module, layer: int) -> torch.Tensor:
    """Each token's embedding through `layer`'s ln1, the norm's bias removed: [vocab, d_model]
    (the per-token LayerNorm fold of `head_detectors._direct_ov`)."""
    ln1, embed = module.layers[layer].ln1, module.tok_embed.weight
    return ln1(embed) - ln1(torch.zeros_like(embed[:1]))


def _linear_norm(module: nn.Module, layer: int, resid: torch.Tensor) -> torch.Tensor:
    """`layer`'s ln1 linearised as TL's `apply_ln_to_stack` (centre for LayerNorm, then the gain):
    resid [..., d_model] -> [..., d_model]."""
    if model_config(module).norm == "layernorm":
        resid = resid - resid.mean(-1, keepdim=True)
    gain = getattr(module.layers[layer].ln1, "weight", None)
    return resid * gain if gain is not None else resid


def _head_ov(module: nn.Module, layer: int, head: int, x: torch.Tensor) -> torch.Tensor:
    """What head `head` of `layer` writes to the residual stream when it attends to a token with input x (the
    value path's lag 0, then W_O): x [n, d_model] -> [n, d_model]."""
    attn = module.layers[layer].attn
    value = _side(attn, x, "v", 0)[:, head]  # [n, d_head]
    w_o = attn.o.weight[:, head * attn.d_head:(head + 1) * attn.d_head]  # [d_model, d_head]
    return value @ w_o.T


@torch.no_grad()
def qk_eigen_scores(module: nn.Module, previous_heads: Optional[dict[int, tuple[int, int]]] = None) -> pd.DataFrame:
    """QK-circuit eigenvalue scores of every head as tidy rows layer, head, metric, value.

    * `qk_eigen_score` — Elhage et al. 2021's positive-eigenvalue measure Σλ/Σ|λ| on the direct-path QK
      circuit W_Eᵀ W_QK^h W_E (query token a, key token b; LayerNorm folded per token): 1 = the head attends
      to keys holding the query's own token, −1 = it avoids them. Exact for layer 0.
    * `qk_kcomp_eigen_score` — Elhage et al.'s K-composition term W_Eᵀ W_QK^h W_OV^{h'} W_E for layers ≥ 1,
      with h' = `previous_heads[layer]`, an earlier (layer, head) (the strongest previous-token head): positive
      = the head attends to keys whose previous token matches the query (induction).
    * `qk_shift_eigen_score` — our shift-aware variant, not a literature measure: the same statistic on the
      key's lag-1 term (KV shift: α2·W_K applied to token s−1), i.e. query token a against keys whose previous
      token is b through the mixer itself; only for models whose keys carry a lag-1 term. The weight-only
      measures above see W_Q, W_K, never α: this one does.
    """
    cfg = model_config(module)
    rows = []
    for layer in range(cfg.n_layers):
        attn = module.layers[layer].attn
        x = _token_inputs(module, layer)  # [vocab, d_model]
        q = _side(attn, x, "q", 0).transpose(0, 1)  # [head, vocab, d_head]
        scores = {"qk_eigen_score": eigenvalue_score(q, _side(attn, x, "k", 0).permute(1, 2, 0))}
        if len(attn.lag_terms(x[:1, None], "k")) > 1:  # the key carries earlier tokens (a mixer on the key path)
            scores["qk_shift_eigen_score"] = eigenvalue_score(q, _side(attn, x, "k", 1).permute(1, 2, 0))
        if previous_heads and layer in previous_heads:
            src_layer, src_head = previous_heads[layer]
            moved = _linear_norm(module, layer, _head_ov(module, src_layer, src_head,
                                                          _token_inputs(module, src_layer)))
            scores["qk_kcomp_eigen_score"] = eigenvalue_score(q, _side(attn, moved, "k", 0).permute(1, 2, 0))
        rows += [(layer, h, name, float(v[h])) for name, v in scores.items() for h in range(cfg.n_heads)]
    return pd.DataFrame(rows, columns=["layer", "head", "metric", "value"])


def strongest_previous_heads(heads: pd.DataFrame, step: int, n_layers: int) -> dict[int, tuple[int, int]]:
    """For each layer ≥ 1: the earlier (layer, head) with the highest previous_token_score at `step` in
    heads.csv rows — the K-composition source of `qk_eigen_scores`."""
    prev = heads[(heads["metric"] == "previous_token_score") & (heads["step"] == step)]
    out = {}
    for layer in range(1, n_layers):
        earlier = prev[prev["layer"] < layer]
        if len(earlier):
            best = earlier.loc[earlier["value"].idxmax()]
            out[layer] = (int(best["layer"]), int(best["head"]))
    return out


# --- formation steps and the induction split --------------------------------------------------

def formation_step(best: pd.Series, threshold: float) -> Optional[int]:
    """First checkpoint from which `best` (a score indexed by step) stays ≥ threshold to the end: the rule of
    `emergence.emergence_step`, for any score."""
    best = best.sort_index()
    below = best[best < threshold]
    after = best.index[best.index > below.index.max()] if len(below) else best.index
    return int(after.min()) if len(after) else None


def induction_split(heads: pd.DataFrame, boundaries: Sequence[int], induction_threshold: float = EMERGENCE_THRESHOLD,
                    previous_threshold: float = PREVIOUS_THRESHOLD) -> dict:
    """Does the induction bump split into "previous-token heads, then the rest" (Hoogland et al. 2024)?

    Formation steps (`formation_step` of the best head's score per checkpoint): previous-token (best head
    of any layer but the last, or of the only layer) and induction. `split` is True when the previous-token
    head forms strictly before induction and an LLC stage boundary b lies in [previous step, induction step);
    False when induction forms but no previous-token head forms before it in an earlier stage; None when
    induction never forms, or when both first hold at the same checkpoint (their order is finer than the
    checkpoints resolve).
    """
    def best(metric: str, layers: Optional[int] = None) -> pd.Series:
        rows = heads[heads["metric"] == metric]
        if layers is not None:
            rows = rows[rows["layer"] < layers]
        return rows.groupby("step")["value"].max()

    n_layers = int(heads["layer"].max()) + 1 if len(heads) else 1
    previous = formation_step(best("previous_token_score", max(n_layers - 1, 1)), previous_threshold)
    induction = formation_step(best("induction_score"), induction_threshold)
    between = [b for b in boundaries if previous is not None and induction is not None and previous <= b < induction]
    unresolved = induction is None or previous == induction
    split = None if unresolved else bool(previous is not None and previous < induction and between)
    return {"previous_token_formation_step": previous, "induction_formation_step": induction,
            "split_boundaries": between, "induction_split": split}


# --- per run -----------------------------------------------------------------------------------

def _rows(step: int, metric: str, values: Sequence[float], *, layer: Sequence[int] | int = -1,
          head: Sequence[int] | int = -1, position: Sequence[int] | int = -1, pc: Sequence[int] | int = -1
          ) -> pd.DataFrame:
    """Tidy development rows (DEV_COLUMNS); -1 marks a column that does not apply."""
    return pd.DataFrame({"step": step, "metric": metric, "layer": layer, "head": head, "position": position,
                         "pc": pc, "value": np.asarray(values, dtype=float)})[DEV_COLUMNS]


def analyze_development(run_dir: PathLike, batch_size: int = 16, seed: int = 0,
                        llc: Optional[LLCConfig] = LLCConfig()) -> pd.DataFrame:
    """All developmental measures of one run: loss by position, the ICL score, the per-token-loss PCA, QK
    eigenvalue scores and (when `llc` is given) the LLC at every checkpoint, written to development.csv;
    adds the PCA turn, the LLC stage boundaries and the induction split to summary.json. Returns the table.

    The evaluation batch (`batch_size` sequences) and the SGLD dataset are drawn from the run's own task with
    fixed seeds, so every checkpoint sees the same tokens.
    """
    run_dir = Path(run_dir)
    checkpoints = run_checkpoints(run_dir)
    if not checkpoints:
        raise FileNotFoundError(f"no checkpoints/step_*.safetensors in {run_dir}: is it a finished run directory?")
    task = make_task(json.loads((run_dir / "config.json").read_text())["task"])
    tokens = task.sample(batch_size, torch.Generator().manual_seed(seed)).tokens  # [batch, T]
    sgld_tokens = task.sample(llc.n_samples, torch.Generator().manual_seed(seed + 1)).tokens if llc else None
    heads = read_heads(run_dir)
    frames, matrix = [], []
    for step, path in checkpoints.items():
        module = bare_checkpoint(path)
        losses = per_token_losses(module, tokens)  # [batch, T]
        by_pos = loss_by_position(losses)
        frames += [_rows(step, "loss", by_pos[1:].tolist(), position=list(range(1, len(by_pos)))),
                   _rows(step, "icl_score", [icl_from_token_losses(losses)])]
        matrix.append(losses[:, 1:].flatten().numpy())
        qk = qk_eigen_scores(module, strongest_previous_heads(heads, step, model_config(module).n_layers))
        frames += [_rows(step, m, g["value"], layer=g["layer"].tolist(), head=g["head"].tolist())
                   for m, g in qk.groupby("metric")]
        if llc:
            est = estimate_llc(module, sgld_tokens, llc)
            frames += [_rows(step, "llc", [est["llc_mean"]]), _rows(step, "llc_std", [est["llc_std"]])]
    steps = list(checkpoints)
    coords, explained = loss_pca(np.stack(matrix))
    frames += [_rows(s, "loss_pc", coords[i], pc=list(range(1, coords.shape[1] + 1))) for i, s in enumerate(steps)]
    table = pd.concat(frames, ignore_index=True)
    _write_csv(table, run_dir / DEV_FILE)
    turn = trajectory_turn(coords)
    keys = {"loss_pca_turn_step": None if turn is None else steps[turn],
            "loss_pca_explained": [round(float(e), 4) for e in explained]}
    if llc:
        series = table[table["metric"] == "llc"].set_index("step")["value"]
        keys["llc_stage_boundaries"] = stage_boundaries(series)
        keys.update(induction_split(heads, keys["llc_stage_boundaries"]) if len(heads) else {})
    merge_summary(run_dir, keys)
    return table


def read_development(run_dir: PathLike) -> pd.DataFrame:
    """A run's development.csv, or an empty frame with its columns."""
    path = Path(run_dir, DEV_FILE)
    return pd.read_csv(path) if path.exists() else pd.DataFrame(columns=DEV_COLUMNS)
