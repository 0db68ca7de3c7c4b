"""`ngram` — the paper's 3-gram task (Xu et al. 2024, Fig. 3): concatenated triples `x1 x2 x3` drawn
from a fixed table of `n_pairs` distinct (x1, x2) pairs, each with one x3; x3 is scored.

Example (table rows (4, 7, 5) and (6, 4, 9); `^` marks a scored position, whose NEXT token is the target):

    tokens   BOS   4   7   5   6   4   9   4
    scored             ^           ^
    target                 5           9   (the table's x3 of the preceding pair)

The table is fixed by `task.seed`; batches draw rows uniformly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

import torch

from kvshift_lens.core.vocab import N_SPECIAL
from kvshift_lens.data.tasks.base import Batch, Task, TaskConfig, check, register_task, with_bos


@register_task
@dataclass
class NGramConfig(TaskConfig):
    """3-gram table size."""

    name: Literal["ngram"] = "ngram"
    n_pairs: int = 200  # number of distinct (x1, x2) pairs, each with a fixed x3

    def validate(self) -> None:
        self.check_shape(4, "BOS x1 x2 x3", 1)
        n_possible = (self.d_vocab - N_SPECIAL) ** 2
        check(1 <= self.n_pairs <= n_possible,
              f"task.n_pairs={self.n_pairs} is impossible for ngram with task.d_vocab={self.d_vocab}: "
              f"need 1 <= n_pairs <= {n_possible} distinct (x1, x2) pairs; lower task.n_pairs or raise task.d_vocab")

    def build(self) -> "NGramTask":
        return NGramTask(self)


class NGramTask(Task):
    """The paper's 3-gram task: concatenated triples `x1 x2 x3` from a fixed table; x3 is scored."""

    def __init__(self, cfg: NGramConfig) -> None:
        super().__init__(cfg)
        rng = random.Random(cfg.seed)
        codes = torch.tensor(rng.sample(range(self.n_content**2), cfg.n_pairs))  # distinct (x1, x2)
        x3 = torch.tensor([rng.randrange(self.n_content) for _ in range(cfg.n_pairs)])
        self.table = N_SPECIAL + torch.stack(
            [codes // self.n_content, codes % self.n_content, x3], dim=1
        )  # [n_pairs, 3] token ids (x1, x2, x3)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """Uniformly chosen table rows back to back after BOS; score each x2 whose x3 fits."""
        length = self.cfg.seq_len - 1
        n_triples = -(-length // 3)
        rows = torch.randint(self.cfg.n_pairs, (batch_size, n_triples), generator=generator)
        body = self.table[rows].reshape(batch_size, 3 * n_triples)[:, :length]  # [batch, seq - 1]
        scored = torch.zeros(batch_size, length, dtype=torch.bool)
        scored[:, 1 : length - 1 : 3] = True  # body[3j + 1] = x2 predicts x3
        return with_bos(body, scored)

    @property
    def chance_accuracy(self) -> float:
        """Targets are the table's x3 values."""
        return 1.0 / len(self.table[:, 2].unique())
