"""`mqar` — multi-query associative recall, Zoology's `multiquery_ar` (Arora, Eyuboglu et al. 2023,
"Zoology: Measuring and Improving Recall in Efficient Language Models", arXiv 2312.04927;
HazyResearch/zoology `zoology/data/multiquery_ar.py`).

Example (d_vocab 16, seq_len 12, num_kv_pairs 2, random_non_queries false; `^` marks a scored position,
whose NEXT token is the target):

    tokens    3 12  5  9  0  0  5  9  0  0  3 12
    scored                      ^           ^
    target                         9          12   (the value stored with that key)

Keys are drawn without replacement from [1, d_vocab/2), values without replacement from
[d_vocab/2, d_vocab); the first 2N positions hold k1 v1 ... kN vN. Each key is asked again in
the rest of the sequence at offset 2N + 2·gap, the gaps drawn without replacement with
P(gap = i) ∝ power_a·(i+1)^(power_a-1), i < (seq_len - 2N) / 2 (Zoology's power law, power_a 0.01).
Every other position holds a uniform random token from [0, d_vocab) (`random_non_queries`; 0 otherwise).
Parameters map to Zoology's as vocab_size -> d_vocab, input_seq_len -> seq_len, num_kv_pairs,
power_a, random_non_queries (num_passes = 1).

Our variant of Zoology's encoding, two differences, neither visible to a causal model at a query:
- Zoology labels the query position with the value while its *input* there is followed by a random
  token; our batches score next tokens in-sequence (`mask[:, t]` scores `tokens[:, t + 1]`), so the
  value itself is placed right after its query (a position Zoology fills at random).
- No BOS and no special tokens: ids follow Zoology exactly (0 is an ordinary filler token, keys
  start at 1), not the BOS/PAD/NO_ANSWER layout of the other tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from kvshift_lens.data.tasks.base import Batch, Task, TaskConfig, check, random_subsets, register_task, target_keys


@register_task
@dataclass
class MQARConfig(TaskConfig):
    """Zoology's MQAR knobs at CPU scale (Zoology's paper: vocab 8,192, seq 64-512, 4-64 pairs)."""

    name: Literal["mqar"] = "mqar"
    d_vocab: int = 128  # Zoology's vocab_size: keys [1, d_vocab/2), values [d_vocab/2, d_vocab)
    seq_len: int = 64  # Zoology's input_seq_len
    num_kv_pairs: int = 8  # N key-value pairs, each queried once
    power_a: float = 0.01  # power-law exponent of the query gap distribution (1 = uniform)
    random_non_queries: bool = True  # fill the other positions with random tokens (else 0)

    def validate(self) -> None:
        n = self.num_kv_pairs
        check(n >= 1, f"task.num_kv_pairs={n} must be >= 1")
        check(self.seq_len >= 4 * n, f"task.seq_len={self.seq_len} is too short for mqar with task.num_kv_pairs={n}: "
              f"the 2N context tokens plus N queries at even offsets need seq_len >= 4N = {4 * n}; "
              f"raise task.seq_len or lower task.num_kv_pairs")
        check(self.d_vocab // 2 - 1 >= n and self.d_vocab - self.d_vocab // 2 >= n,
              f"task.d_vocab={self.d_vocab} is too small for mqar with task.num_kv_pairs={n}: keys are distinct "
              f"ids in [1, d_vocab/2); set task.d_vocab >= {2 * n + 2}")
        check(self.power_a > 0, f"task.power_a={self.power_a} must be > 0 (Zoology: 0.01; 1 = uniform gaps)")

    def build(self) -> "MQARTask":
        return MQARTask(self)


def power_law_gaps(batch: int, n: int, space: int, power_a: float, generator: torch.Generator) -> Tensor:
    """n distinct gaps per row from [0, space), P(i) ∝ power_a·(i+1)^(power_a-1), drawn one after another
    without replacement (numpy's `choice(replace=False, p=...)`, as Zoology): [batch, n]."""
    p = power_a * torch.arange(1, space + 1, dtype=torch.float64) ** (power_a - 1)
    return torch.multinomial((p / p.sum()).expand(batch, space), n, replacement=False, generator=generator)


def recall_batch(context: Tensor, keys: Tensor, values: Tensor, seq_len: int, power_a: float,
                 filler: int, generator: torch.Generator) -> Batch:
    """`context` [batch, C] then keys queried at C + 2·gap, each followed by its value (scored at the
    query); other positions uniform from [0, filler) (filler 0: all zeros). Shared with stacked_mqar.

    `keys`, `values` [batch, n] int64 -> Batch(tokens [batch, seq_len] int64, mask [batch, seq_len] bool).
    """
    batch, n = keys.shape
    width = context.shape[1]
    gaps = power_law_gaps(batch, n, (seq_len - width) // 2, power_a, generator)  # [batch, n]
    query = width + 2 * gaps  # [batch, n] positions of the repeated keys
    if filler:
        tokens = torch.randint(filler, (batch, seq_len), generator=generator)
    else:
        tokens = torch.zeros(batch, seq_len, dtype=torch.long)
    tokens[:, :width] = context
    tokens.scatter_(1, query, keys)
    tokens.scatter_(1, query + 1, values)
    mask = torch.zeros(batch, seq_len, dtype=torch.bool).scatter_(1, query, True)
    return Batch(tokens, mask)


class MQARTask(Task):
    """Zoology's multi-query associative recall; see the module docstring for the layout."""

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        cfg, n = self.cfg, self.cfg.num_kv_pairs
        half = cfg.d_vocab // 2
        keys = 1 + random_subsets(batch_size, n, half - 1, generator)  # [batch, n] distinct in [1, V/2)
        values = half + random_subsets(batch_size, n, cfg.d_vocab - half, generator)  # distinct in [V/2, V)
        context = torch.stack([keys, values], dim=2).flatten(1)  # [batch, 2n]: k1 v1 k2 v2 ...
        filler = cfg.d_vocab if cfg.random_non_queries else 0
        return recall_batch(context, keys, values, cfg.seq_len, cfg.power_a, filler, generator)

    def attention_targets(self, batch: Batch) -> Tensor:
        """The context position of each queried key's value, 2i + 1 for key k_i: the token after the query
        token's earlier occurrence in the context, i.e. the induction pattern restricted to MQAR's queries."""
        context = batch.tokens[:, : 2 * self.cfg.num_kv_pairs : 2]  # [batch, N] keys at 0, 2, 4, ...
        match = batch.tokens[:, :, None] == context[:, None, :]  # [batch, T, N]
        return target_keys(torch.where(batch.mask, 2 * match.long().argmax(-1) + 1, -1))

    @property
    def chance_accuracy(self) -> float:
        """A target is one of the d_vocab - d_vocab/2 value ids."""
        return 1.0 / (self.cfg.d_vocab - self.cfg.d_vocab // 2)
