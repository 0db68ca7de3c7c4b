"""The task protocol: a seeded, vectorised next-token task is one file holding a config dataclass
(`TaskConfig` subclass with its own knobs and `validate()`, registered with `@register_task`) and a
`Task` whose `sample(batch_size, generator)` returns a `Batch`.

Every task emits `Batch(tokens, mask)`: `tokens` is `[batch, seq_len]` int64 and `mask[:, t]`
marks the positions whose NEXT token `tokens[:, t + 1]` is scored (a model's logits at t predict
t + 1), so `mask[:, -1]` is always False. Randomness comes only from the `torch.Generator` passed
to `sample`; fixed structure (e.g. the n-gram table) comes from `TaskConfig.seed`.

Token ids shared by the tasks unless one documents otherwise (`kvshift_lens.core.vocab`): BOS = 0 (first
token of every sequence), PAD = 1, NO_ANSWER = 2; content tokens are `[3, d_vocab)`.

This module knows no concrete task (they register themselves; `kvshift_lens.data.tasks` imports them).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, Optional

import torch
from torch import Tensor

from kvshift_lens.core.errors import ConfigError
from kvshift_lens.core.registry import Registry
from kvshift_lens.core.schema import build as build_config
from kvshift_lens.core.vocab import BOS, N_SPECIAL

LEGACY_FIELDS = ("n_pairs", "hops", "alphabet_size")  # the flat pre-registry TaskConfig held every task's knobs

TASKS: Registry = Registry("task", "task")


class Batch(NamedTuple):
    """One batch: model input and the positions whose next token is scored."""

    tokens: Tensor  # [batch, seq] int64
    mask: Tensor  # [batch, seq] bool; True at t when tokens[:, t + 1] is scored

    def to(self, device: torch.device | str) -> Batch:
        """The batch on `device` (itself when every tensor is already there, as sampled batches are on the CPU)."""
        device = torch.device(device)
        return self if all(t.device == device for t in self) else Batch(*(t.to(device) for t in self))


class Task(ABC):
    """A next-token task; `sample` is a pure function of the generator state.

    Optional hooks (defaults suit synthetic tasks): `held_out` builds the fixed evaluation set, a task that
    names extra held-out metrics in `metric_names` computes them in `held_out_metrics`, and a task whose ids
    come from a real tokenizer sets `tokenizer` (text does all three).
    """

    metric_names: tuple[str, ...] = ()  # extra metrics.csv columns, from `held_out_metrics`
    tokenizer: Any = None  # a `tokenizers.Tokenizer` the trainer attaches to the model (None: synthetic ids)
    special_tokens: dict[str, str] = {}  # its BOS/EOS/... names for `kvshift_lens.models.transformer.attach_tokenizer`

    def __init__(self, cfg: "TaskConfig") -> None:
        self.cfg = cfg
        self.n_content = cfg.d_vocab - N_SPECIAL

    @abstractmethod
    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """Draw `batch_size` sequences using only `generator` (CPU tensors out)."""

    def held_out(self, n: int, batch_size: int, generator: torch.Generator) -> list[Batch]:
        """The fixed evaluation set: `n` sequences in batches of `batch_size`, drawn from `generator` (the
        trainer seeds a stream disjoint from the training one)."""
        return [self.sample(min(batch_size, n - i), generator) for i in range(0, n, batch_size)]

    def held_out_metrics(self, losses: Tensor, tokens: Tensor) -> dict[str, float]:
        """The `metric_names` metrics from the per-token losses [n, T] (`kvshift_lens.data.icl.token_losses`) of the
        whole evaluation set and its tokens [n, T]."""
        return {}

    @property
    @abstractmethod
    def chance_accuracy(self) -> float:
        """Accuracy of a uniform guess over the ids a scored target can take, for reports."""

    def attention_targets(self, batch: Batch) -> Optional[Tensor]:
        """Where a one-layer head that solves the task attends: bool [batch, q, k], True at the key holding
        (or carrying) the answer of each scored query q; None when the task defines no single such key.
        The circuit analysis of a task's own batches reads it (`kvshift_lens.analysis.circuits.target_heads`)."""
        return None


@dataclass
class TaskConfig:
    """Base of every task's config (the hydra `task` group node): `name` picks the registered task."""

    name: str
    d_vocab: int = 64  # vocabulary size, special tokens included
    seq_len: int = 64  # width of every emitted tokens tensor
    seed: int = 0  # seeds fixed task structure; batches use the generator passed to `sample`
    registry: ClassVar[Registry] = TASKS

    def validate(self) -> None:
        """Raise `ConfigError` naming `task.<field>`, the value and the fix."""

    def build(self) -> Task:
        """The task this config describes (called by `make_task` after `validate`)."""
        raise NotImplementedError

    def check_shape(self, min_len: int, shape: str, min_content: int) -> None:
        """seq_len >= min_len (`shape` says why) and at least `min_content` content tokens after the specials."""
        check(self.seq_len >= min_len,
              f"task.seq_len={self.seq_len} is too short for {self.name}: need at least {min_len} ({shape}); "
              f"set task.seq_len >= {min_len}")
        check(self.d_vocab >= N_SPECIAL + min_content,
              f"task.d_vocab={self.d_vocab} is too small for {self.name}: ids 0-{N_SPECIAL - 1} are reserved "
              f"(BOS, PAD, NO_ANSWER) and it needs {min_content} content tokens; "
              f"set task.d_vocab >= {N_SPECIAL + min_content}")


def register_task(cls: type) -> type:
    """Class decorator: make a `TaskConfig` subclass selectable as `task.name=<its name>`."""
    if not issubclass(cls, TaskConfig):
        raise TypeError(f"{cls.__name__} must subclass TaskConfig")
    return TASKS.register(cls)


def check(ok: bool, message: str) -> None:
    """Raise the one-line `ConfigError` a task's `validate` promises when a config cannot work."""
    if not ok:
        raise ConfigError(message)


def upgrade_legacy(data: dict) -> dict:
    """A task config mapping read from a run written before the task registry (config.json, resume.pt),
    without the knobs of other tasks that the flat layout carried (n_pairs, hops, alphabet_size)."""
    fields = {f.name for f in dataclasses.fields(TASKS.get(data.get("name")))} if "name" in data else set()
    return {k: v for k, v in data.items() if k in fields or k not in LEGACY_FIELDS}


def task_config(data: Any, **overrides: Any) -> TaskConfig:
    """A validated config of the registered task: `data` is a name, a mapping with `name`, or a config."""
    if isinstance(data, TaskConfig):
        data = dataclasses.asdict(data)
    if isinstance(data, str):
        data = {"name": data}
    return build_config(TaskConfig, {**data, **overrides}, "task")


def make_task(cfg: Any) -> Task:
    """Validate `cfg` (a `TaskConfig`, mapping or name) and build its task; errors name `task.<field>`."""
    if not isinstance(cfg, TaskConfig) or type(cfg) is not TASKS.get(cfg.name):
        cfg = task_config(cfg)
    cfg.validate()
    return cfg.build()


# --- helpers shared by several tasks ---------------------------------------------------------

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
    """Index of the most recent earlier occurrence of each token (-1 if none): what induction reads.

    `tokens` [batch, seq] int -> [batch, seq] int64.
    """
    _, order, prev_sorted = _group_by_token(tokens)
    return torch.empty_like(order).scatter_(1, order, prev_sorted)  # [batch, seq]


def walk(batch: int, length: int, n: int, generator: torch.Generator) -> Tensor:
    """Uniform walk over n symbols where each step differs from the previous one: -> [batch, length] int64."""
    first = torch.randint(n, (batch, 1), generator=generator)  # [batch, 1]
    steps = 1 + torch.randint(n - 1, (batch, length - 1), generator=generator)  # [batch, length - 1]
    return torch.cat([first, steps], dim=1).cumsum(dim=1) % n  # [batch, length]


def random_subsets(batch: int, n: int, size: int, generator: torch.Generator) -> Tensor:
    """A uniformly random n-subset of [0, size) per row, in random order -> [batch, n]."""
    if size <= 2 * n:  # dense: a random permutation prefix
        return torch.rand(batch, size, generator=generator).argsort(dim=1)[:, :n]
    drawn = torch.randint(size, (batch, 2 * n), generator=generator)  # ~1.4n draws hold n distinct
    while (fresh := previous_occurrence(drawn) < 0).sum(dim=1).min() < n:
        drawn = torch.cat([drawn, torch.randint(size, (batch, n), generator=generator)], dim=1)
    rank = fresh.long().cumsum(dim=1) - 1  # [batch, drawn]; order of first appearance
    keep = torch.where(fresh & (rank < n), rank, n)
    return torch.zeros(batch, n + 1, dtype=torch.long).scatter_(1, keep, drawn)[:, :n]


def target_keys(positions: Tensor) -> Tensor:
    """Key positions [batch, q] (-1: no target) as the bool target mask [batch, q, k] of `attention_targets`."""
    seq = positions.shape[1]
    return (positions[:, :, None] == torch.arange(seq)) & (positions[:, :, None] >= 0)


def with_bos(body: Tensor, scored: Tensor) -> Batch:
    """Prepend BOS to `body` [batch, seq - 1]; `scored[:, j]` marks body[j] as a scored position."""
    batch = body.shape[0]
    tokens = torch.cat([torch.full((batch, 1), BOS), body], dim=1)  # [batch, seq]
    mask = torch.cat([torch.zeros(batch, 1, dtype=torch.bool), scored], dim=1)  # [batch, seq]
    return Batch(tokens, mask)
