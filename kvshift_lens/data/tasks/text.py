"""`text` — language modelling on a real-text corpus that ships with the install (`kvshift_lens.data.corpora`).

Example (corpus shakespeare, tokenizer char, seq_len 8; `^` marks a scored position, whose NEXT token
is the target): a training row is 8 consecutive tokens at a uniform random offset of the train
stream (the 34 training plays, `EOT` = id 0 between plays), and every next token is scored:

    text     R   O   M   E   O   :  \\n   O
    scored   ^   ^   ^   ^   ^   ^   ^
    target   O   M   E   O   :  \\n   O

The held-out set is fixed: `eval_size` windows of the validation stream (the 4 held-out plays, or
held-out modules), laid out by `eval_windows`. Besides the trainer's loss and next-token accuracy
(`induction_acc`, which here is plain next-token accuracy), text runs log `eval_bpb` (bits per UTF-8
byte), Olsson et al.'s `icl_score` and our `icl_band_score` (`lm_metrics`). Ids follow the tokenizer
(`kvshift_lens.data.text_tokenizers`), not the synthetic tasks' BOS/PAD/NO_ANSWER layout; `task.d_vocab` is
the tokenizer's vocabulary size (conf/task/text.yaml resolves it with `${text_vocab:...}`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, Optional

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import Tensor

from kvshift_lens.data.corpora import CORPORA, CorpusError, load_corpus
from kvshift_lens.data.icl import icl_band_from_token_losses, icl_from_token_losses, icl_positions
from kvshift_lens.data.tasks.base import Batch, Task, TaskConfig, check, register_task
from kvshift_lens.data.text_tokenizers import (
    EOT, BPE_MIN_VOCAB, TOKENIZERS, TokenizerError, token_bytes, tokenized_corpus,
)

EVAL_CHAIN = 8  # held-out windows per chain (see eval_windows)
METRICS = ("eval_bpb", "icl_score", "icl_band_score")


@lru_cache(maxsize=None)
def text_vocab(corpus: str, tokenizer: str, vocab_size: int) -> int:
    """Vocabulary size of `tokenizer` on `corpus` without encoding it: byte 257, bpe `vocab_size`, char the
    corpus alphabet + EOT (reads the corpus). Hydra's `${text_vocab:corpus,tokenizer,vocab_size}`."""
    if tokenizer == "byte":
        return 257
    if tokenizer == "bpe":
        return int(vocab_size)
    if tokenizer == "char":
        corpus_ = load_corpus(corpus)
        return 1 + len(set().union(*(set(d.text) for d in corpus_.train + corpus_.validation)))
    raise TokenizerError(f"task.tokenizer={tokenizer!r} is unknown: use one of {list(TOKENIZERS)}")


if not OmegaConf.has_resolver("text_vocab"):
    OmegaConf.register_new_resolver("text_vocab", lambda c, t, v: text_vocab(str(c), str(t), int(v)))


@register_task
@dataclass
class TextConfig(TaskConfig):
    """A corpus, a tokenizer and a window length; `d_vocab` None means the tokenizer's vocabulary size."""

    name: Literal["text"] = "text"
    corpus: Literal["shakespeare", "python_stdlib"] = "shakespeare"
    tokenizer: Literal["char", "byte", "bpe"] = "char"  # char / byte: exact, no training; bpe: trained on train split
    vocab_size: int = 1024  # bpe only: tokens including the 256 bytes and EOT
    d_vocab: Optional[int] = None  # None -> text_vocab(corpus, tokenizer, vocab_size)
    seq_len: int = 256
    cache_dir: Optional[str] = None  # tokenizer + token streams on disk (None: rebuilt in memory every time)

    def __post_init__(self) -> None:
        if self.d_vocab is None and self.corpus in CORPORA and self.tokenizer in TOKENIZERS:
            self.d_vocab = text_vocab(self.corpus, self.tokenizer, self.vocab_size)

    def validate(self) -> None:
        check(self.corpus in CORPORA, f"task.corpus={self.corpus!r} is unknown: use one of {list(CORPORA)}")
        check(self.tokenizer in TOKENIZERS, f"task.tokenizer={self.tokenizer!r} is unknown: use one of {list(TOKENIZERS)}")
        check(self.tokenizer != "bpe" or self.vocab_size >= BPE_MIN_VOCAB,
              f"task.vocab_size={self.vocab_size} is too small for byte-level BPE: it needs >= {BPE_MIN_VOCAB} "
              f"(256 bytes + EOT); set task.vocab_size to e.g. 512")
        check(self.seq_len >= 3, f"task.seq_len={self.seq_len} is too short for text: need >= 3 tokens; set task.seq_len=256")
        expected = text_vocab(self.corpus, self.tokenizer, self.vocab_size)
        check(self.d_vocab == expected, f"task.d_vocab={self.d_vocab} does not match the {self.tokenizer} tokenizer of "
              f"{self.corpus} ({expected} tokens); set task.d_vocab={expected} or leave it to conf/task/text.yaml")

    def build(self) -> "TextTask":
        return TextTask(self)


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
        raise CorpusError(f"the held-out split has {len(stream)} tokens, fewer than one chain of evaluation "
                          f"windows needs ({span}); lower task.seq_len")
    firsts = np.linspace(0, len(stream) - span, n_chains).round().astype(np.int64)  # [n_chains]
    starts = (firsts[:, None] + stride * np.arange(chain)).reshape(-1)[:n]  # [n]
    return stream[torch.from_numpy(starts)[:, None] + torch.arange(seq_len)]


@torch.no_grad()
def lm_metrics(losses: Tensor, tokens: Tensor, bytes_per_token: Tensor) -> dict[str, float]:
    """Held-out LM metrics from `token_losses` [batch, T] of `tokens` [batch, T]: eval_bpb (bits per UTF-8 byte
    of the predicted text: total nats / ln 2 / bytes, comparable across tokenizers; EOT's loss counts, its 0
    bytes do not), icl_score (Olsson et al.) and icl_band_score (our band variant)."""
    predicted = losses[:, 1:]  # [batch, T-1]; column 0 has no prediction
    n_bytes = bytes_per_token[tokens[:, 1:]].sum().item()
    return {"eval_bpb": predicted.sum().item() / math.log(2) / max(n_bytes, 1),
            "icl_score": icl_from_token_losses(losses), "icl_band_score": icl_band_from_token_losses(losses)}


def unigram_cross_entropy(train: Tensor, tokens: Tensor, vocab: int) -> float:
    """Nats per token of the context-free baseline: the train stream's add-one-smoothed token frequencies
    scored on the predicted tokens `tokens[:, 1:]` (what an LM must beat to use any context).

    `train` [n_train] int64, `tokens` [batch, seq] int64 -> float.
    """
    counts = torch.bincount(train, minlength=vocab).double() + 1.0
    logp = (counts / counts.sum()).log()
    return -logp[tokens[:, 1:]].mean().item()


class TextTask(Task):
    """Random windows of a tokenized corpus's train stream; fixed windows of its validation stream."""

    metric_names = METRICS
    special_tokens = {"bos_token": EOT, "eos_token": EOT}  # EOT separates documents and starts detector batches

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__(cfg)
        data = tokenized_corpus(cfg.corpus, cfg.tokenizer, cfg.vocab_size, cfg.cache_dir)
        check(data.vocab_size == cfg.d_vocab, f"task.d_vocab={cfg.d_vocab} but the {cfg.tokenizer} tokenizer of "
              f"{cfg.corpus} has {data.vocab_size} tokens; set task.d_vocab={data.vocab_size}")
        self.tokenizer = data.tokenizer
        self.info = data.info
        self.train_stream = torch.from_numpy(data.train)  # [n_train] int64
        self.validation_stream = torch.from_numpy(data.validation)  # [n_validation] int64
        self.bytes_per_token = torch.from_numpy(token_bytes(data.tokenizer))  # [vocab]

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """Random train windows; every next token is scored."""
        tokens = random_windows(self.train_stream, batch_size, self.cfg.seq_len, generator)
        mask = torch.ones_like(tokens, dtype=torch.bool)
        mask[:, -1] = False
        return Batch(tokens, mask)

    def held_out(self, n: int, batch_size: int, generator: torch.Generator) -> list[Batch]:
        """`eval_windows` of the validation split (no randomness: every seed is evaluated on the same text)."""
        tokens = eval_windows(self.validation_stream, n, self.cfg.seq_len)
        mask = torch.ones_like(tokens, dtype=torch.bool)
        mask[:, -1] = False
        return [Batch(tokens[i : i + batch_size], mask[i : i + batch_size]) for i in range(0, n, batch_size)]

    def held_out_metrics(self, losses: Tensor, tokens: Tensor) -> dict[str, float]:
        """`lm_metrics` of the whole held-out set."""
        return lm_metrics(losses, tokens, self.bytes_per_token)

    @property
    def chance_accuracy(self) -> float:
        """A uniform guess over the vocabulary."""
        return 1.0 / self.cfg.d_vocab
