"""The local learning coefficient (LLC) of a checkpoint, estimated with `devinterp` (Lau et al. 2023; Hoogland
et al. 2024), its SGLD calibration, and LLC stage boundaries over training (docs/detect.md).

devinterp's estimator: λ̂(w*) = nβ · (E_w[L_n(w)] − L_n(w*)), the expectation over localized SGLD draws
w_{t+1} = w_t − ε/2 · (nβ ∇L_m(w_t) + γ (w_t − w*)) + N(0, ε), with devinterp's default nβ = m / log m
(m the SGLD batch size; Lau et al.'s β* = 1/log n with n = m). L is the next-token loss on every position
(devinterp's default loss, and our trainer's `loss_on=all`).
"""

from __future__ import annotations

import gc
import math
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from kvshift_lens.analysis.emergence import PathLike
from kvshift_lens.models.checkpoints import read_checkpoint
from kvshift_lens.models.transformer import build_module

SLOPE_TOLERANCE = 0.1  # LLC slopes below this fraction of the steepest one count as flat (stage_boundaries)


@dataclass(frozen=True)
class LLCConfig:
    """SGLD hyperparameters of one LLC estimate (devinterp's names; calibrated in docs/detect.md)."""

    lr: float = 1e-3  # SGLD step size ε
    localization: float = 100.0  # γ: pull towards w*
    n_beta: Optional[float] = None  # nβ; None: devinterp's default_nbeta(batch_size) = m / log m
    batch_size: int = 32  # m, sequences per SGLD step
    num_chains: int = 2
    num_draws: int = 100
    num_burnin_steps: int = 0  # devinterp 2 averages every step, burn-in included (compute_llc)
    n_samples: int = 1024  # sequences of the run's task the chains cycle through
    seed: int = 100  # devinterp's init_seed (chain c uses seed + c)

    @property
    def nbeta(self) -> float:
        """nβ actually used: `n_beta` or m / log m."""
        return self.n_beta if self.n_beta is not None else self.batch_size / math.log(self.batch_size)


class _Logits(nn.Module):
    """The bare model behind a plain module without `cfg`, so devinterp calls it as a plain logits model
    (it treats anything with `cfg.n_heads` as a HookedTransformer and calls `.to(..., print_details=...)`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # [batch, T] -> [batch, T, vocab]
        return self.model(tokens)


def bare_checkpoint(path: PathLike) -> nn.Module:
    """The bare training module of a checkpoint (SDPA path, no bridge hooks): what SGLD and the loss measures
    run, as fast as a training step; weights checked like `load_model`."""
    cfg, tensors, _ = read_checkpoint(path)
    module = build_module(cfg)
    module.load_state_dict(tensors)
    return module.eval()


def estimate_llc(model: nn.Module, tokens: torch.Tensor, cfg: LLCConfig = LLCConfig()) -> dict:
    """devinterp's LLC estimate at `model`'s weights on `tokens` [n, T]: llc_mean, llc_std (over chains),
    init_loss and the loss trace [chain, step]. Deterministic for a fixed `cfg.seed`."""
    from datasets import Dataset  # devinterp pulls in transformers: imported only where an LLC is estimated
    from devinterp.slt.llc import llc

    data = Dataset.from_dict({"input_ids": tokens.tolist()}).with_format("torch")
    # devinterp runs a full gc.collect() twice per chain: with transformers imported each takes ~0.5 s, more than
    # a small model's whole chain. Objects alive now are frozen out of those collections (and unfrozen after).
    gc.freeze()
    try:
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # devinterp's progress and "temp directory" notices
            result = llc(model=_Logits(model), dataset=data, observables={}, lr=cfg.lr, n_beta=cfg.nbeta,
                         localization=cfg.localization, batch_size=cfg.batch_size, num_chains=cfg.num_chains,
                         num_draws=cfg.num_draws, num_burnin_steps=cfg.num_burnin_steps, init_seed=cfg.seed,
                         num_init_loss_batches=max(1, min(32, len(tokens) // cfg.batch_size)), device="cpu",
                         output_path=Path(tmp) / "samples.zarr")
            return {"llc_mean": float(result["llc_mean"]), "llc_std": float(result["llc_std"]),
                    "init_loss": float(result["init_loss"]), "loss_trace": np.asarray(result["loss_trace"])}
    finally:
        gc.unfreeze()


def calibrate(model: nn.Module, tokens: torch.Tensor, lrs: Sequence[float] = (3e-4, 1e-3, 3e-3),
              localizations: Sequence[float] = (10.0, 100.0), cfg: LLCConfig = LLCConfig()) -> pd.DataFrame:
    """The SGLD calibration sweep devinterp's documentation advises: one LLC estimate per (lr, localization),
    read through its loss trace. Columns lr, localization, nbeta, llc_mean, llc_std, finite, positive,
    converged, stable, usable.

    `finite`: no NaN/inf (the step size is not blowing up); `positive`: the sampled loss rises above the
    checkpoint's (λ̂ ≤ 0 means the chain found lower loss: not at a local minimum, or too large a step);
    `converged`: the mean loss of the last quarter of the chain-averaged trace is within 10 % of the rise above
    the initial loss of the third quarter's (levelled off, not still climbing); `stable`: λ̂ within 20 % of
    its value at the next smaller lr with the same localization (the estimate is not set by the step size; a
    λ̂ that keeps growing with lr has left the local basin). `usable`: all four.
    """
    rows = []
    for gamma in localizations:
        for lr in sorted(lrs):
            est = estimate_llc(model, tokens, replace(cfg, lr=lr, localization=gamma))
            trace, n = est["loss_trace"], est["loss_trace"].shape[1]
            rise = trace.mean() - est["init_loss"]
            mean_trace = trace.mean(0)  # [step]
            drift = abs(mean_trace[3 * n // 4:].mean() - mean_trace[n // 2: 3 * n // 4].mean())
            finite = bool(np.isfinite(trace).all())
            rows.append({"lr": lr, "localization": gamma, "nbeta": cfg.nbeta, "llc_mean": est["llc_mean"],
                         "llc_std": est["llc_std"], "finite": finite, "positive": est["llc_mean"] > 0,
                         "converged": finite and bool(drift <= 0.1 * abs(rise))})
    table = pd.DataFrame(rows)
    previous = table.groupby("localization")["llc_mean"].shift(1)  # λ̂ at the next smaller lr (lrs ascending)
    table["stable"] = ((table["llc_mean"] - previous).abs() <= 0.2 * table["llc_mean"].abs()).fillna(False)
    table["usable"] = table["finite"] & table["positive"] & table["converged"] & table["stable"]
    return table


def pick_calibration(table: pd.DataFrame) -> Optional[pd.Series]:
    """The `calibrate` row to use: the largest usable lr (fastest mixing that still converges and agrees with
    the smaller step), the larger localization on ties; None when no setting is usable."""
    usable = table[table["usable"]].sort_values(["lr", "localization"])
    return usable.iloc[-1] if len(usable) else None


def stage_boundaries(llc: pd.Series, tolerance: float = SLOPE_TOLERANCE) -> list[int]:
    """Stage boundaries of an LLC curve indexed by step (Hoogland et al. 2024: stages are separated by
    critical points of the LLC over log-step).

    Rule: slopes d λ̂ / d log10(step) between consecutive checkpoints (step ≥ 1); a slope with magnitude
    below `tolerance` × the steepest one counts as flat and is skipped. Where the next non-flat slope has
    the other sign, the boundary is the critical point between them: the checkpoint of the highest LLC (a
    rise then a fall) or the lowest (a fall then a rise) from the end of the one slope to the start of the
    other (the first on ties).
    """
    llc = llc[llc.index >= 1].sort_index()
    steps, values = llc.index.to_numpy(), llc.to_numpy(dtype=float)
    if len(values) < 3:
        return []
    slopes = np.diff(values) / np.diff(np.log10(steps))
    steep = np.abs(slopes).max()
    signs = [(i, np.sign(s)) for i, s in enumerate(slopes) if steep > 0 and abs(s) >= tolerance * steep]
    boundaries = []
    for (i, a), (j, b) in zip(signs, signs[1:]):
        if a != b:
            between = values[i + 1 : j + 1]  # checkpoints i+1 (end of slope i) .. j (start of slope j)
            boundaries.append(int(steps[i + 1 + int(between.argmax() if a > 0 else between.argmin())]))
    return boundaries
