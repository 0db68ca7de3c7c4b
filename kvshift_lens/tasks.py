"""Seeded, vectorised synthetic next-token tasks: induction, repeated tokens, 3-gram and hop-k.

Every task emits `Batch(tokens, mask)`: `tokens` is `[batch, seq_len]` int64 and `mask[:, t]`
marks the positions whose NEXT token `tokens[:, t + 1]` is scored (a model's logits at t predict
t + 1), so `mask[:, -1]` is always False. Randomness comes only from the `torch.Generator` passed
to `sample`; fixed structure (the n-gram table) comes from `TaskConfig.seed`.

Token ids shared by every task: BOS = 0 (first token of every sequence), PAD = 1 (only
`repeated_tokens` pads), NO_ANSWER = 2 (only `hop_k` emits it); content tokens are
`[3, d_vocab)`. See docs/tasks.md for each task's distribution and scored positions.

Deviations from the paper's Appendix D induction script (Xu et al., arXiv 2411.19574)
---------------------------------------------------------------------------------------
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
5. BOS is prepended and ids follow the shared special-token layout above (the script used 0 as
   pad and content ids 11..7999).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
import random
from typing import NamedTuple

import torch
from torch import Tensor

from kvshift_lens.schema import ConfigError

BOS, PAD, NO_ANSWER = 0, 1, 2
N_SPECIAL = 3  # content tokens are [N_SPECIAL, d_vocab)
TASK_NAMES = ("induction", "repeated_tokens", "ngram", "hop_k")


@dataclass
class TaskConfig:
    """Which synthetic task to generate and its knobs (also the hydra `task` group schema)."""

    name: str = "induction"  # "induction" | "repeated_tokens" | "ngram" | "hop_k"
    d_vocab: int = 64  # vocabulary size including the N_SPECIAL special tokens
    seq_len: int = 64  # width of every emitted tokens tensor
    seed: int = 0  # seeds fixed task structure (the n-gram table); batches use the passed generator
    n_pairs: int = 200  # (ngram) number of distinct (x1, x2) pairs, each with a fixed x3
    hops: int = 2  # (hop_k) k, the number of hops
    alphabet_size: int = 4  # (hop_k) |Σ|, the alphabet X is drawn from (Sanford et al. use 4)

    def validate(self) -> None:
        """Raise `ConfigError` naming the first field that cannot work and how to fix it."""
        check_task(self)


class Batch(NamedTuple):
    """One batch: model input and the positions whose next token is scored."""

    tokens: Tensor  # [batch, seq] int64
    mask: Tensor  # [batch, seq] bool; True at t when tokens[:, t + 1] is scored


class Task(ABC):
    """A synthetic next-token task; `sample` is a pure function of the generator state."""

    def __init__(self, cfg: TaskConfig) -> None:
        self.cfg = cfg
        self.n_content = cfg.d_vocab - N_SPECIAL

    @abstractmethod
    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """Draw `batch_size` sequences using only `generator` (CPU tensors out)."""

    @property
    @abstractmethod
    def chance_accuracy(self) -> float:
        """Accuracy of a uniform guess over the ids a scored target can take, for reports."""


def _group_by_token(tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Sort rows by (token, position) -> (sorted tokens, positions, previous occurrence in sorted order)."""
    batch, seq = tokens.shape
    low, high = tokens.min(), tokens.max()
    row = torch.arange(batch).unsqueeze(1)  # [batch, 1]
    keys = ((tokens - low) * seq + torch.arange(seq) + row * ((high - low + 1) * seq)).flatten()
    order = torch.sort(keys).indices.view(batch, seq) - row * seq  # [batch, seq]; one 1-D sort is cheapest
    values = tokens.gather(1, order)  # [batch, seq]
    prev_sorted = torch.full_like(order, -1)  # [batch, seq]
    prev_sorted[:, 1:] = torch.where(values[:, 1:] == values[:, :-1], order[:, :-1], -1)
    return values, order, prev_sorted


def previous_occurrence(tokens: Tensor) -> Tensor:
    """Index of the most recent earlier occurrence of each token (-1 if none): what induction reads."""
    _, order, prev_sorted = _group_by_token(tokens)
    return torch.empty_like(order).scatter_(1, order, prev_sorted)  # [batch, seq]


def hop_k(tokens: Tensor, hops: int) -> Tensor:
    """hop_k answer at every position (-1 where a hop has no earlier occurrence), by pointer jumps."""
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


def _walk(batch: int, length: int, n: int, generator: torch.Generator) -> Tensor:
    """Uniform walk over n symbols where each step differs from the previous one."""
    first = torch.randint(n, (batch, 1), generator=generator)  # [batch, 1]
    steps = 1 + torch.randint(n - 1, (batch, length - 1), generator=generator)  # [batch, length - 1]
    return torch.cat([first, steps], dim=1).cumsum(dim=1) % n  # [batch, length]


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


def _random_subsets(batch: int, n: int, size: int, generator: torch.Generator) -> Tensor:
    """A uniformly random n-subset of [0, size) per row, in random order -> [batch, n]."""
    if size <= 2 * n:  # dense: a random permutation prefix
        return torch.rand(batch, size, generator=generator).argsort(dim=1)[:, :n]
    drawn = torch.randint(size, (batch, 2 * n), generator=generator)  # ~1.4n draws hold n distinct
    while (fresh := previous_occurrence(drawn) < 0).sum(dim=1).min() < n:
        drawn = torch.cat([drawn, torch.randint(size, (batch, n), generator=generator)], dim=1)
    rank = fresh.long().cumsum(dim=1) - 1  # [batch, drawn]; order of first appearance
    keep = torch.where(fresh & (rank < n), rank, n)
    return torch.zeros(batch, n + 1, dtype=torch.long).scatter_(1, keep, drawn)[:, :n]


class InductionTask(Task):
    """Appendix D of Xu et al.: random walk over a token subset, revisits followed by their copy."""

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """Random candidates per row, a uniform walk over them, laid out as (A) or (A, copy) units."""
        length = self.cfg.seq_len - 1  # after BOS
        n = min(length, self.n_content)  # the script's `lis[:length]`
        candidates = N_SPECIAL + _random_subsets(batch_size, n, self.n_content, generator)  # [batch, n]
        ids, scored = _induction_layout(_walk(batch_size, length, n, generator), n, length)
        return _with_bos(candidates.gather(1, ids), scored)

    @property
    def chance_accuracy(self) -> float:
        """Any content token can be a copy target."""
        return 1.0 / self.n_content


class RepeatedTokensTask(Task):
    """`[BOS] r r` with r uniform over content tokens (TransformerLens / ARENA), padded with PAD."""

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """Score the second copy from r[1] on: predicting r[0] after the first copy is impossible."""
        half = (self.cfg.seq_len - 1) // 2
        r = N_SPECIAL + torch.randint(self.n_content, (batch_size, half), generator=generator)
        pad = torch.full((batch_size, self.cfg.seq_len - 1 - 2 * half), PAD)  # [batch, 0 or 1]
        scored = torch.zeros(batch_size, self.cfg.seq_len - 1, dtype=torch.bool)  # [batch, seq - 1]
        scored[:, half : 2 * half - 1] = True  # body[half + i - 1] = r[i - 1] predicts r[i], i >= 1
        return _with_bos(torch.cat([r, r, pad], dim=1), scored)

    @property
    def chance_accuracy(self) -> float:
        """r is uniform over content tokens."""
        return 1.0 / self.n_content


class NGramTask(Task):
    """The paper's 3-gram task: concatenated triples `x1 x2 x3` from a fixed table; x3 is scored."""

    def __init__(self, cfg: TaskConfig) -> None:
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
        return _with_bos(body, scored)

    @property
    def chance_accuracy(self) -> float:
        """Targets are the table's x3 values."""
        return 1.0 / len(self.table[:, 2].unique())


class HopKTask(Task):
    """Sanford et al.'s hop_k on X (consecutive symbols differ); X's last answer follows X."""

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """`[BOS] X answer`: the one scored position is X's last token, predicting its hop_k answer."""
        x = _walk(batch_size, self.cfg.seq_len - 2, self.cfg.alphabet_size, generator)  # [batch, m]
        answer = hop_k(x, self.cfg.hops)[:, -1:]  # [batch, 1]; -1 if undefined
        answer = torch.where(answer >= 0, N_SPECIAL + answer, NO_ANSWER)
        scored = torch.zeros(batch_size, self.cfg.seq_len - 1, dtype=torch.bool)
        scored[:, -2] = True  # X's last symbol predicts the answer
        return _with_bos(torch.cat([N_SPECIAL + x, answer], dim=1), scored)

    @property
    def chance_accuracy(self) -> float:
        """The answer is an alphabet symbol or NO_ANSWER."""
        return 1.0 / (self.cfg.alphabet_size + 1)


def _with_bos(body: Tensor, scored: Tensor) -> Batch:
    """Prepend BOS to `body` [batch, seq - 1]; `scored[:, j]` marks body[j] as a scored position."""
    batch = body.shape[0]
    tokens = torch.cat([torch.full((batch, 1), BOS), body], dim=1)  # [batch, seq]
    mask = torch.cat([torch.zeros(batch, 1, dtype=torch.bool), scored], dim=1)  # [batch, seq]
    return Batch(tokens, mask)


def _check(ok: bool, message: str) -> None:
    """Raise the `ConfigError` (a ValueError) `TaskConfig.validate` promises when a config cannot work."""
    if not ok:
        raise ConfigError(message)


def check_task(cfg: TaskConfig) -> None:
    """Errors name the offending `task.<field>` and the fix."""
    _check(cfg.name in TASK_NAMES, f"task.name={cfg.name!r} is unknown: use one of {', '.join(TASK_NAMES)}")
    min_len = {"induction": 5, "repeated_tokens": 5, "ngram": 4, "hop_k": cfg.hops + 3}[cfg.name]
    shape = {"induction": "BOS A B A B", "repeated_tokens": "BOS r0 r1 r0 r1", "ngram": "BOS x1 x2 x3"}
    why = shape.get(cfg.name, f"BOS + {cfg.hops + 1} symbols (each hop moves back >= 1) + answer")
    _check(
        cfg.seq_len >= min_len,
        f"task.seq_len={cfg.seq_len} is too short for {cfg.name}: need at least {min_len} ({why}); "
        f"set task.seq_len >= {min_len}",
    )
    min_content = {"induction": 3, "repeated_tokens": 2, "ngram": 1, "hop_k": cfg.alphabet_size}[cfg.name]
    _check(
        cfg.d_vocab >= N_SPECIAL + min_content,
        f"task.d_vocab={cfg.d_vocab} is too small for {cfg.name}: ids 0-{N_SPECIAL - 1} are reserved "
        f"(BOS, PAD, NO_ANSWER) and it needs {min_content} content tokens; "
        f"set task.d_vocab >= {N_SPECIAL + min_content}",
    )
    if cfg.name == "ngram":
        n_possible = (cfg.d_vocab - N_SPECIAL) ** 2
        _check(
            1 <= cfg.n_pairs <= n_possible,
            f"task.n_pairs={cfg.n_pairs} is impossible for ngram with task.d_vocab={cfg.d_vocab}: "
            f"need 1 <= n_pairs <= {n_possible} distinct (x1, x2) pairs; "
            "lower task.n_pairs or raise task.d_vocab",
        )
    if cfg.name == "hop_k":
        _check(cfg.hops >= 1, f"task.hops={cfg.hops} is invalid for hop_k: set task.hops >= 1")
        _check(
            cfg.alphabet_size >= 2,
            f"task.alphabet_size={cfg.alphabet_size} is invalid for hop_k: consecutive symbols differ, "
            "so set task.alphabet_size >= 2",
        )


def make_task(cfg: TaskConfig) -> Task:
    """Validate `cfg` and build its task."""
    cfg.validate()
    task_class = {
        "induction": InductionTask,
        "repeated_tokens": RepeatedTokensTask,
        "ngram": NGramTask,
        "hop_k": HopKTask,
    }[cfg.name]
    return task_class(cfg)
