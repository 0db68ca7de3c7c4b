"""`induction` — the induction data of Appendix D of Xu et al. 2024 (arXiv 2411.19574).

Example (d_vocab 16, seq_len 8; `^` marks a scored position, whose NEXT token is the target):

    tokens   BOS   7   4   9   7   4   5   9
    scored                     ^
    target                         4   (the token after the previous 7)

A random walk over a per-sequence subset of content tokens; a revisited token A is emitted with a
copy of the token that followed its most recent occurrence, and A's position is scored.

Deviations from the paper's script
----------------------------------
The script walks over a random subset of `length` tokens (uniform draws, never the token just
emitted); a first occurrence is emitted alone, a revisited token A is emitted together with a
copy of its stored successor, and A's position is scored. Kept: the per-sequence candidate
subset (size = content length), uniform draws, no immediate repeats, revisit -> (A, copy), score
at A. Fixed defects and deviations:

1. The copy is the token that followed A's most recent occurrence. The script's table stores
   -1 for a token whose next draw was a revisit and never refreshes it, so it emitted -1 tokens
   and scored targets that disagree with the context.
2. A revisit is emitted with its copy only when that is safe to decide in parallel: within
   windows of 2n draws (n = candidates; one window when n ~ seq_len, the script's regime), a
   revisit pairs only if the copied token is not drawn again later in the window nor as the
   next window's first draw; otherwise A is emitted alone, unscored, like a fresh token. The
   script's exact rule is sequential (each copy rewrites the successor table later copies
   read); this one keeps every scored target equal to the token after the most recent previous
   occurrence. Cost: ~15% fewer scored positions than the fixed script when n ~ seq_len, ~45%
   fewer when d_vocab << seq_len (docs/tasks.md).
3. Consecutive draws differ (the script only forbade the last emitted token, which after a pair
   is the copy); a copy is never followed by its own token either.
4. Output is exactly `seq_len` tokens: the unit crossing the end is cut, its score dropped
   (the script overshot to length + 1 and padded to a hard-coded 512). No regeneration when a
   row has no scored position (the script recursed).
5. BOS is prepended and ids follow the shared special-token layout (the script used 0 as pad
   and content ids 11..7999).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from kvshift_lens.core.vocab import N_SPECIAL
from kvshift_lens.data.tasks.base import (
    Batch, Task, TaskConfig, _group_by_token, previous_occurrence, random_subsets, register_task, target_keys, walk, with_bos,
)


@register_task
@dataclass
class InductionConfig(TaskConfig):
    """Appendix-D induction: no knobs beyond the vocabulary and length."""

    name: Literal["induction"] = "induction"

    def validate(self) -> None:
        self.check_shape(5, "BOS A B A B", 3)

    def build(self) -> "InductionTask":
        return InductionTask(self)


def _induction_layout(draws: Tensor, n: int, length: int) -> tuple[Tensor, Tensor]:
    """Appendix-D units for a walk over n candidates -> (candidate ids, scored), both [batch, length].

    Pairing is decided in windows of 2n draws. Draw k revisits v when v was drawn earlier in k's
    window. It is emitted as (v, copy) and scored iff some revisit of v at or before k in the
    window is "safe": the token w that followed v's previous draw is not drawn again later in the
    window nor as the next window's first draw, among the draws that reach the sequence. Those
    depend on the pairing, so it runs twice: first counting every draw, then only the draws that
    pass placed (pairing more places fewer draws, so the second pass stays safe). Tables are
    built in sorted-by-(window, candidate, step) order: every segment op is a gather, a plain
    scatter or a cumsum.
    """
    batch, n_draws = draws.shape
    span = 2 * n  # draws per pairing window
    step = torch.arange(n_draws).expand(batch, n_draws)  # [batch, draws]
    window = step // span
    key = window * n + draws  # [batch, draws]; (window, candidate)
    n_keys = (n_draws - 1) // span * n + n  # key n_keys is scratch
    keys, order, prev_sorted = _group_by_token(key)  # [batch, draws] each, sorted order
    prev = torch.empty_like(order).scatter_(1, order, prev_sorted)  # [batch, draws]; in-window
    revisit = prev >= 0
    follower = draws.gather(1, (prev + 1).clamp(max=n_draws - 1))  # [batch, draws]; after the previous draw
    follower_key = window * n + follower
    next_start = (window + 1) * span  # [batch, draws]; first step of the next window
    opens_next = draws.gather(1, next_start.clamp(max=n_draws - 1)) == follower  # [batch, draws]
    group_start = prev_sorted < 0  # [batch, draws] sorted order
    group_end = torch.cat([group_start[:, 1:], torch.ones(batch, 1, dtype=torch.bool)], dim=1)

    def slot(hit: Tensor) -> Tensor:
        """Table column of each sorted entry where `hit`, else the scratch column."""
        return torch.where(hit, keys, n_keys)

    start_slot = slot(group_start)

    def pair(placed: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(paired, first paired step of each draw's key, unit starts) given draws placed [batch, 1]."""
        counted = order < placed  # [batch, draws] sorted order
        last_counted = counted & (group_end | ~torch.roll(counted, -1, dims=1))
        last_draw = torch.full((batch, n_keys + 1), -1).scatter_(1, slot(last_counted), order)
        later_in_window = last_draw.gather(1, follower_key) > step
        safe = revisit & ~later_in_window & ~(opens_next & (next_start < placed))  # [batch, draws]
        safe_sorted = safe.gather(1, order).long()
        before = safe_sorted.cumsum(dim=1) - safe_sorted  # [batch, draws]; safe draws earlier in sorted order
        base = torch.zeros(batch, n_keys + 1, dtype=torch.long).scatter_(1, start_slot, before)
        first_safe = (safe_sorted == 1) & (before == base.gather(1, keys))  # first safe of its key
        pair_from = torch.full((batch, n_keys + 1), n_draws).scatter_(1, slot(first_safe), order)
        pair_from = pair_from.gather(1, key)  # [batch, draws]; every revisit from here on pairs
        paired = revisit & (step >= pair_from)
        width = 1 + paired.long()  # tokens each draw emits
        return paired, pair_from, width.cumsum(dim=1) - width

    _, _, start = pair(torch.full((batch, 1), n_draws))
    paired, pair_from, start = pair((start < length).sum(dim=1, keepdim=True))
    copy = follower.gather(1, pair_from.clamp(max=n_draws - 1))  # [batch, draws]; anchor's follower
    spill = 2 * n_draws  # scratch column for writes that have no slot
    ids = torch.zeros(batch, spill + 1, dtype=torch.long).scatter_(1, start, draws)
    ids.scatter_(1, torch.where(paired, start + 1, spill), copy)
    scored_at = torch.where(paired & (start + 1 < length), start, spill)  # [batch, draws]
    scored = torch.zeros(batch, spill + 1, dtype=torch.bool).scatter_(1, scored_at, True)
    return ids[:, :length], scored[:, :length]


class InductionTask(Task):
    """Appendix D of Xu et al.: random walk over a token subset, revisits followed by their copy."""

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """Random candidates per row, a uniform walk over them, laid out as (A) or (A, copy) units."""
        length = self.cfg.seq_len - 1  # after BOS
        n = min(length, self.n_content)  # the script's `lis[:length]`
        candidates = N_SPECIAL + random_subsets(batch_size, n, self.n_content, generator)  # [batch, n]
        ids, scored = _induction_layout(walk(batch_size, length, n, generator), n, length)
        return with_bos(candidates.gather(1, ids), scored)

    def attention_targets(self, batch: Batch) -> Tensor:
        """The token after the most recent earlier occurrence of each scored query (the induction pattern)."""
        return target_keys(torch.where(batch.mask, previous_occurrence(batch.tokens) + 1, -1))

    @property
    def chance_accuracy(self) -> float:
        """Any content token can be a copy target."""
        return 1.0 / self.n_content
