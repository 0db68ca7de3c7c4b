"""`hop_k` — hop_k of Sanford, Hsu & Telgarsky 2024 (paper App. H): follow "the token after the
most recent earlier occurrence" k times from the last symbol of X; NO_ANSWER when a hop has none.

Example (alphabet {a, b, c} = ids 3, 4, 5; hops 2; X = a b c a b a c; `^` marks the scored position):

    tokens   BOS   a   b   c   a   b   a   c   b
    scored                                 ^
    target                                     b   (c -> token after the earlier c: a -> token after the earlier a: b)

X is a walk whose consecutive symbols differ; the answer token follows X.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from kvshift_lens.core.vocab import N_SPECIAL, NO_ANSWER
from kvshift_lens.data.tasks.base import (
    Batch, Task, TaskConfig, check, previous_occurrence, register_task, walk, with_bos,
)


@register_task
@dataclass
class HopKConfig(TaskConfig):
    """Number of hops and the alphabet X is drawn from."""

    name: Literal["hop_k"] = "hop_k"
    hops: int = 2  # k, the number of hops
    alphabet_size: int = 4  # |Σ| (Sanford et al. use 4)

    def validate(self) -> None:
        self.check_shape(self.hops + 3, f"BOS + {self.hops + 1} symbols (each hop moves back >= 1) + answer",
                         self.alphabet_size)
        check(self.hops >= 1, f"task.hops={self.hops} is invalid for hop_k: set task.hops >= 1")
        check(self.alphabet_size >= 2,
              f"task.alphabet_size={self.alphabet_size} is invalid for hop_k: consecutive symbols differ, "
              "so set task.alphabet_size >= 2")

    def build(self) -> "HopKTask":
        return HopKTask(self)


def hop_k(tokens: Tensor, hops: int) -> Tensor:
    """hop_k answer at every position (-1 where a hop has no earlier occurrence), by pointer jumps:
    `tokens` [batch, seq] int64 -> [batch, seq] int64."""
    batch, seq = tokens.shape
    prev = previous_occurrence(tokens)  # [batch, seq]
    dead = torch.full((batch, 1), seq)  # sentinel column: a chain that fell off stays there
    jump = torch.cat([torch.where(prev >= 0, prev + 1, seq), dead], dim=1)  # [batch, seq + 1]
    pos = torch.arange(seq).expand(batch, seq)  # [batch, seq]
    for _ in range(hops):
        pos = jump.gather(1, pos)
    return torch.cat([tokens, torch.full((batch, 1), -1)], dim=1).gather(1, pos)  # [batch, seq]


def hop_k_reference(x: list[int], k: int) -> list[int | None]:
    """Plain-loop hop_k (Sanford, Hsu & Telgarsky 2024): the readable spec the tests check against."""
    answers: list[int | None] = []
    for i in range(len(x)):
        p: int | None = i
        for _ in range(k):
            earlier = [j for j in range(p) if x[j] == x[p]]
            if not earlier:
                p = None
                break
            p = earlier[-1] + 1  # the position right after the most recent earlier occurrence
        answers.append(None if p is None else x[p])
    return answers


class HopKTask(Task):
    """Sanford et al.'s hop_k on X (consecutive symbols differ); X's last answer follows X."""

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """`[BOS] X answer`: the one scored position is X's last token, predicting its hop_k answer."""
        x = walk(batch_size, self.cfg.seq_len - 2, self.cfg.alphabet_size, generator)  # [batch, m]
        answer = hop_k(x, self.cfg.hops)[:, -1:]  # [batch, 1]; -1 if undefined
        answer = torch.where(answer >= 0, N_SPECIAL + answer, NO_ANSWER)
        scored = torch.zeros(batch_size, self.cfg.seq_len - 1, dtype=torch.bool)
        scored[:, -2] = True  # X's last symbol predicts the answer
        return with_bos(torch.cat([N_SPECIAL + x, answer], dim=1), scored)

    @property
    def chance_accuracy(self) -> float:
        """The answer is an alphabet symbol or NO_ANSWER."""
        return 1.0 / (self.cfg.alphabet_size + 1)
