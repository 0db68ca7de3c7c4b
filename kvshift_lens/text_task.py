"""Language modelling on a real-text corpus: random training windows, fixed held-out windows, LM metrics.

A training batch is `batch` windows of `seq_len` consecutive tokens starting at uniform random offsets
of the train stream (documents separated by EOT, id 0); every next token is scored. The held-out
set is `n` windows at evenly spaced offsets of the validation stream (no randomness: every run and
seed is evaluated on the same text; see `eval_windows`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from kvshift_lens.detect import icl_band_from_token_losses, icl_from_token_losses, icl_positions, token_losses

EVAL_CHAIN = 8  # held-out windows per chain (see eval_windows)


def random_windows(stream: Tensor, batch: int, seq_len: int, generator: torch.Generator) -> Tensor:
    """`batch` windows of `seq_len` tokens at uniform offsets of `stream` [n] (one randint, one gather): [batch, seq_len]."""
    starts = torch.randint(len(stream) - seq_len + 1, (batch, 1), generator=generator)  # [batch, 1]
    return stream[starts + torch.arange(seq_len)]


def eval_windows(stream: Tensor, n: int, seq_len: int, chain: int = EVAL_CHAIN) -> Tensor:
    """`n` held-out windows [n, seq_len]: chains of `chain` windows, spread evenly over `stream` [n_tokens].

    Within a chain the stride is late - early of `icl_positions(seq_len)`, so the tokens at (and just
    before) the late ICL index of one window are the tokens at (and before) the early index of the
    next: the ICL score's two means then mostly average the same text tokens, seen with a long vs a
    short context, which keeps the statistic and its expectation but removes most of its
    token-to-token variance (measured: about half the standard error of evenly spaced windows).
    """
    early, late = icl_positions(seq_len)
    stride = late - early
    n_chains = -(-n // chain)
    span = (chain - 1) * stride + seq_len  # tokens one chain covers
    if len(stream) < span:
        raise ValueError(f"the held-out stream has {len(stream)} tokens, fewer than one chain of evaluation "
                         f"windows needs ({span}); lower task.seq_len")
    firsts = np.linspace(0, len(stream) - span, n_chains).round().astype(np.int64)  # [n_chains]
    starts = (firsts[:, None] + stride * np.arange(chain)).reshape(-1)[:n]  # [n]
    return stream[torch.from_numpy(starts)[:, None] + torch.arange(seq_len)]


@torch.no_grad()
def lm_metrics(losses: Tensor, tokens: Tensor, token_bytes: Tensor) -> dict[str, float]:
    """Held-out LM metrics from `token_losses` [batch, T] of `tokens` [batch, T]:

    eval_loss (nats per token), eval_bpb (bits per UTF-8 byte of the predicted text: total nats /
    ln 2 / bytes, so it compares across tokenizers; EOT's loss counts, its 0 bytes do not), icl_score
    (Olsson et al., `icl_from_token_losses`) and icl_band_score (`icl_band_from_token_losses`).
    """
    predicted = losses[:, 1:]  # [batch, T-1]; column 0 has no prediction
    n_bytes = token_bytes[tokens[:, 1:]].sum().item()
    return {"eval_loss": predicted.mean().item(),
            "eval_bpb": predicted.sum().item() / math.log(2) / max(n_bytes, 1),
            "icl_score": icl_from_token_losses(losses),
            "icl_band_score": icl_band_from_token_losses(losses)}


