"""Olsson et al.'s in-context-learning score from per-token losses (torch only: tasks and the trainer use it
without the analysis stack).

The score is the loss of the 500th token of a 512-token context minus the loss of its 50th, averaged
over examples, rescaled here to any context length T (`icl_positions`). `icl_band_score` is our
named variant for small evaluation sets (docs/detect.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ICL_TOKENS, ICL_CONTEXT = (50, 500), 512  # Olsson et al.: the 50th and 500th token of a 512-token context
ICL_BAND_FRACTION = 16  # icl_band_score averages T/16 indices ending at each ICL index


def icl_positions(seq_len: int) -> tuple[int, int]:
    """0-based indices of Olsson et al.'s 50th and 500th tokens rescaled from 512 to T tokens:
    round(n·T/512) − 1 within [1, T−1] ((49, 499) at T = 512, (24, 249) at T = 256)."""
    return tuple(min(max(round(n * seq_len / ICL_CONTEXT) - 1, 1), seq_len - 1) for n in ICL_TOKENS)


def token_losses(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Loss of every token given the ones before it: column p = −log P(x_p | x_<p), column 0 NaN.

    `logits` [batch, T, vocab] (position t predicts t + 1), `tokens` [batch, T] int64 -> [batch, T] float32.
    """
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), tokens[:, 1:], reduction="none")  # [batch, T-1]
    return F.pad(nll, (1, 0), value=float("nan"))


def icl_from_token_losses(losses: torch.Tensor) -> float:
    """Olsson et al.'s in-context-learning score, `losses` [batch, T] (`token_losses`) -> float: mean loss of
    the late token minus mean loss of the early one (`icl_positions`); negative when later context helps."""
    early, late = icl_positions(losses.shape[1])
    return (losses[:, late].mean() - losses[:, early].mean()).item()


def icl_band_from_token_losses(losses: torch.Tensor) -> float:
    """`icl_band_score`, our variant of the ICL score for small evaluation sets: each of Olsson's two token
    indices is replaced by the mean over the round(T/16) indices ending at it (at T = 256: tokens 9-24
    and 234-249), which averages out most of the single-token noise; `losses` [batch, T] -> float."""
    early, late = icl_positions(losses.shape[1])
    width = min(max(round(losses.shape[1] / ICL_BAND_FRACTION), 1), early)
    return (losses[:, late - width + 1 : late + 1].mean() - losses[:, early - width + 1 : early + 1].mean()).item()
