"""`repeated_tokens` — `[BOS] r r`, r uniform over content tokens (the TransformerLens / ARENA
induction probe), padded with PAD to `seq_len`.

Example (seq_len 8, period 3; `^` marks a scored position, whose NEXT token is the target):

    tokens   BOS   5   9   4   5   9   4 PAD
    scored                     ^   ^
    target                         9   4   (the token after the previous occurrence)

Predicting r[0] after the first copy is impossible, so the second copy is scored from r[1] on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from kvshift_lens.core.vocab import N_SPECIAL, PAD
from kvshift_lens.data.tasks.base import Batch, Task, TaskConfig, register_task, target_keys, with_bos


@register_task
@dataclass
class RepeatedTokensConfig(TaskConfig):
    """`[BOS] r r`: no knobs beyond the vocabulary and length."""

    name: Literal["repeated_tokens"] = "repeated_tokens"

    def validate(self) -> None:
        self.check_shape(5, "BOS r0 r1 r0 r1", 2)

    def build(self) -> "RepeatedTokensTask":
        return RepeatedTokensTask(self)


class RepeatedTokensTask(Task):
    """`[BOS] r r` with r uniform over content tokens (TransformerLens / ARENA), padded with PAD."""

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """Score the second copy from r[1] on: predicting r[0] after the first copy is impossible."""
        half = (self.cfg.seq_len - 1) // 2
        r = N_SPECIAL + torch.randint(self.n_content, (batch_size, half), generator=generator)
        pad = torch.full((batch_size, self.cfg.seq_len - 1 - 2 * half), PAD)  # [batch, 0 or 1]
        scored = torch.zeros(batch_size, self.cfg.seq_len - 1, dtype=torch.bool)  # [batch, seq - 1]
        scored[:, half : 2 * half - 1] = True  # body[half + i - 1] = r[i - 1] predicts r[i], i >= 1
        return with_bos(torch.cat([r, r, pad], dim=1), scored)

    def attention_targets(self, batch: Batch) -> Tensor:
        """Key t - half + 1 of each scored query t: the first copy's token after the query's own."""
        half = (self.cfg.seq_len - 1) // 2
        t = torch.arange(batch.tokens.shape[1])
        return target_keys(torch.where(batch.mask, t - half + 1, -1))

    @property
    def chance_accuracy(self) -> float:
        """r is uniform over content tokens."""
        return 1.0 / self.n_content
