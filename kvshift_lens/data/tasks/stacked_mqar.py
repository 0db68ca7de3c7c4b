"""`stacked_mqar` — MQAR with each key and its value stacked into ONE token: our token-level variant of
Zoology's continuous `stacked_mqar` (which concatenates key and value embeddings at one position).

Example (d_vocab 16: n = 3 keys 1 2 3, values 4 5 6, pair (key i, value j) = 7 + 3·(i-1) + (j-4), so
9 = (1, 6) and 11 = (2, 5); seq_len 9, num_kv_pairs 2, random_non_queries false; `^` marks a scored
position, whose NEXT token is the target):

    tokens    9 11  0  0  2  5  1  6  0
    scored                ^     ^
    target                   5     6   (the value stacked with that key)

A query is answered by attending to the pair token that holds its key and copying the value that
token carries: one attention layer suffices without any previous-token path, whereas plain
`mqar` needs the value's position to know its key (a previous-token path: KV shift, a mixer, or a
second layer). Comparing the two tells "needs a previous-token path" from "needs recall".

Encoding: with n = isqrt(d_vocab) - 1 keys and n values, ids are 0 (filler), keys [1, n+1),
values [n+1, 2n+1) and pair tokens [2n+1, (n+1)^2): pair(key i, value j) = 2n + 1 + i·n + j
(i, j 0-based); ids from (n+1)^2 up are unused. The first N positions hold the pairs (keys and
values each drawn without replacement); each key is queried at offset N + 2·gap with Zoology's
power-law gaps and followed by its value token; fillers are uniform over [0, 2n+1), never pair
tokens (a random pair token would plant a conflicting binding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from kvshift_lens.data.tasks.base import Batch, Task, TaskConfig, check, random_subsets, register_task, target_keys
from kvshift_lens.data.tasks.mqar import recall_batch


@register_task
@dataclass
class StackedMQARConfig(TaskConfig):
    """MQAR knobs; the key and value alphabets both have n = isqrt(d_vocab) - 1 ids."""

    name: Literal["stacked_mqar"] = "stacked_mqar"
    d_vocab: int = 81  # (n+1)^2 with n = 8 keys and 8 values: every id is used
    seq_len: int = 64
    num_kv_pairs: int = 8  # N pairs, each queried once (N <= n)
    power_a: float = 0.01  # power-law exponent of the query gap distribution (Zoology: 0.01)
    random_non_queries: bool = True  # fill the other positions with random key/value/filler ids (else 0)

    @property
    def n_symbols(self) -> int:
        """n: the number of key ids and of value ids."""
        return math.isqrt(self.d_vocab) - 1

    def validate(self) -> None:
        n, pairs = self.n_symbols, self.num_kv_pairs
        check(pairs >= 1, f"task.num_kv_pairs={pairs} must be >= 1")
        check(n >= pairs, f"task.d_vocab={self.d_vocab} gives n = isqrt(d_vocab) - 1 = {n} keys, fewer than "
              f"task.num_kv_pairs={pairs}; set task.d_vocab >= {(pairs + 1) ** 2}")
        check(self.seq_len >= 3 * pairs, f"task.seq_len={self.seq_len} is too short for stacked_mqar with "
              f"task.num_kv_pairs={pairs}: N pair tokens plus N queries at even offsets need seq_len >= 3N = "
              f"{3 * pairs}; raise task.seq_len or lower task.num_kv_pairs")
        check(self.power_a > 0, f"task.power_a={self.power_a} must be > 0 (Zoology: 0.01; 1 = uniform gaps)")

    def build(self) -> "StackedMQARTask":
        return StackedMQARTask(self)


class StackedMQARTask(Task):
    """Recall from pair tokens; see the module docstring for the encoding."""

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        cfg, n, pairs = self.cfg, self.cfg.n_symbols, self.cfg.num_kv_pairs
        key = random_subsets(batch_size, pairs, n, generator)  # [batch, N] 0-based, distinct
        value = random_subsets(batch_size, pairs, n, generator)
        context = 2 * n + 1 + key * n + value  # [batch, N] pair tokens
        filler = 2 * n + 1 if cfg.random_non_queries else 0
        return recall_batch(context, 1 + key, n + 1 + value, cfg.seq_len, cfg.power_a, filler, generator)

    def attention_targets(self, batch: Batch) -> Tensor:
        """The context position of the pair token that holds each queried key (the key's own earlier
        occurrence, stacked with its value: no previous-token step)."""
        n = self.cfg.n_symbols
        pairs = batch.tokens[:, : self.cfg.num_kv_pairs]  # [batch, N] pair tokens
        keys = 1 + (pairs - 2 * n - 1) // n  # [batch, N] the key id each pair holds
        match = batch.tokens[:, :, None] == keys[:, None, :]  # [batch, T, N]
        return target_keys(torch.where(batch.mask, match.long().argmax(-1), -1))

    @property
    def chance_accuracy(self) -> float:
        """A target is one of the n value ids."""
        return 1.0 / self.cfg.n_symbols
