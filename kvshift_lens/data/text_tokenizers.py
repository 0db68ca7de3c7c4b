"""Tokenizers for the real-text corpora, all plain `tokenizers.Tokenizer` objects, and token streams.

* `char`: one token per character of the corpus alphabet (both splits, as nanoGPT's shakespeare-char
  does, so every text of the corpus round-trips exactly); no training.
* `byte`: one token per UTF-8 byte (256 + the separator); exact on any text; no training.
* `bpe`: byte-level BPE (GPT-2 pre-tokenisation) trained on the TRAIN split only, in seconds.

Id 0 is always `EOT` (`<|endoftext|>`): it separates documents in a stream and serves as the BOS of
the detectors' `[BOS] r r` batches. `token_bytes` gives each id's UTF-8 length, the denominator of
bits per byte. `tokenized_corpus` caches the tokenizer and both streams on disk, keyed by the corpus
contents and the tokenizer spec, so a sweep encodes a corpus once.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import tokenizers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from kvshift_lens.data.corpora import Corpus, fingerprint, load_corpus

EOT = "<|endoftext|>"
TOKENIZERS = ("char", "byte", "bpe")
BPE_MIN_VOCAB = 257  # 256 byte tokens + EOT
CACHE_FORMAT = "kvshift_lens.text/1"


class TokenizerError(ValueError):
    """A tokenizer request that cannot work; the message names the field and the fix."""


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (what `pre_tokenizers.ByteLevel` uses)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    extra = (b for b in range(256) if b not in printable)
    table = {b: chr(b) for b in printable}
    table.update({b: chr(256 + i) for i, b in enumerate(extra)})
    return dict(sorted(table.items()))


def char_tokenizer(alphabet: Iterable[str]) -> Tokenizer:
    """Character-level tokenizer: EOT = 0, then the sorted distinct characters of `alphabet`."""
    chars = sorted(set(alphabet) - {EOT})
    tok = Tokenizer(models.BPE(vocab={EOT: 0, **{c: i + 1 for i, c in enumerate(chars)}}, merges=[]))
    tok.add_special_tokens([EOT])
    tok.decoder = decoders.Fuse()
    return tok


def _byte_level(tok: Tokenizer, split_words: bool) -> Tokenizer:
    """Byte-level pre-tokenisation (GPT-2's word-splitting regex only where merges need it) and decoding."""
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split_words)
    tok.decoder = decoders.ByteLevel()
    return tok


def byte_tokenizer() -> Tokenizer:
    """Byte-level tokenizer: EOT = 0, byte b = id b + 1."""
    vocab = {EOT: 0, **{ch: b + 1 for b, ch in _bytes_to_unicode().items()}}
    tok = _byte_level(Tokenizer(models.BPE(vocab=vocab, merges=[])), split_words=False)  # no merges: 3x faster
    tok.add_special_tokens([EOT])
    return tok


def train_bpe(texts: Sequence[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE with `vocab_size` tokens (EOT = 0, then the 256 bytes, then merges) trained on `texts`."""
    if vocab_size < BPE_MIN_VOCAB:
        raise TokenizerError(f"task.vocab_size={vocab_size} is too small for byte-level BPE: it needs "
                             f">= {BPE_MIN_VOCAB} (256 bytes + {EOT}); set task.vocab_size to e.g. 512")
    tok = _byte_level(Tokenizer(models.BPE()), split_words=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=list(_bytes_to_unicode().values()))
    tok.train_from_iterator(texts, trainer)
    return tok


def build_tokenizer(kind: str, corpus: Corpus, vocab_size: int = 1024) -> Tokenizer:
    """The `kind` tokenizer for `corpus` (BPE learns from the train split only)."""
    if kind == "char":
        return char_tokenizer(set().union(*(set(d.text) for d in corpus.train + corpus.validation)))
    if kind == "byte":
        return byte_tokenizer()
    if kind == "bpe":
        return train_bpe([d.text for d in corpus.train], vocab_size)
    raise TokenizerError(f"task.tokenizer={kind!r} is unknown: use one of {list(TOKENIZERS)}")


def is_byte_level(tok: Tokenizer) -> bool:
    """Whether token strings are GPT-2 byte characters (one character per byte) rather than text."""
    return isinstance(tok.decoder, decoders.ByteLevel)


def token_bytes(tok: Tokenizer) -> np.ndarray:
    """UTF-8 length in bytes of the text each id stands for (0 for EOT): [vocab] int64."""
    lengths = np.zeros(tok.get_vocab_size(), dtype=np.int64)
    byte_level = is_byte_level(tok)
    for token, i in tok.get_vocab().items():
        if token != EOT:
            lengths[i] = len(token) if byte_level else len(token.encode("utf-8"))
    return lengths


def encode_documents(tok: Tokenizer, texts: Sequence[str]) -> np.ndarray:
    """One token stream `EOT d1 EOT d2 ...`: [sum of lengths + len(texts)] int64.

    Raises when a text does not round-trip (a character outside a char tokenizer's alphabet, or a
    document that contains the EOT string itself).
    """
    encodings = tok.encode_batch(list(texts), add_special_tokens=False)
    parts = []
    for text, enc in zip(texts, encodings):
        if EOT in text or (not is_byte_level(tok) and len(enc.ids) != len(text)):
            raise TokenizerError("a document does not round-trip through the tokenizer (a character outside its "
                                 "alphabet, or the EOT string in the text); use task.tokenizer=byte")
        parts += [np.zeros(1, dtype=np.int64), np.asarray(enc.ids, dtype=np.int64)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


@dataclass
class TokenizedCorpus:
    """A corpus as two token streams plus the tokenizer that made them."""

    corpus: str  # corpus name
    tokenizer: Tokenizer
    train: np.ndarray  # [n_train_tokens] int64, documents separated by EOT (id 0)
    validation: np.ndarray  # [n_validation_tokens] int64
    info: dict  # documents, characters and bytes per split, corpus fingerprint, tokenizer spec

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()


def _spec_key(corpus: Corpus, kind: str, vocab_size: int) -> tuple[str, dict]:
    spec = {"format": CACHE_FORMAT, "corpus": corpus.name, "fingerprint": fingerprint(corpus), "tokenizer": kind,
            "vocab_size": vocab_size if kind == "bpe" else None, "tokenizers_version": tokenizers.__version__}
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16], spec


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """`write` to a temporary name, then rename: parallel runs filling one cache never read half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _save_array(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)


def tokenized_corpus(name: str, kind: str = "char", vocab_size: int = 1024,
                     cache_dir: Optional[os.PathLike | str] = None) -> TokenizedCorpus:
    """Load corpus `name`, build its `kind` tokenizer and encode both splits; reuse `cache_dir`'s copy when the
    corpus contents and spec match (a corrupt cache entry is rebuilt)."""
    corpus = load_corpus(name)
    key, spec = _spec_key(corpus, kind, vocab_size)
    entry = Path(cache_dir, key) if cache_dir is not None else None
    if entry is not None and (entry / "info.json").exists():
        try:
            info = json.loads((entry / "info.json").read_text())
            tok = Tokenizer.from_file(str(entry / "tokenizer.json"))
            streams = [np.load(entry / f"{s}.npy").astype(np.int64) for s in ("train", "validation")]
            if info.get("spec") == spec:
                return TokenizedCorpus(name, tok, *streams, info)
        except Exception:  # an unreadable entry (tokenizers raises bare Exceptions) is rebuilt below
            pass
    tok = build_tokenizer(kind, corpus, vocab_size)
    streams = [encode_documents(tok, [d.text for d in docs]) for docs in (corpus.train, corpus.validation)]
    info = {"spec": spec, **{f"{s}_{what}": value for s, docs in (("train", corpus.train), ("validation", corpus.validation))
                             for what, value in (("documents", len(docs)), ("characters", sum(len(d.text) for d in docs)),
                                                 ("bytes", sum(len(d.text.encode()) for d in docs)))},
            "train_tokens": int(len(streams[0])), "validation_tokens": int(len(streams[1])),
            "validation_names": [d.name for d in corpus.validation]}
    if entry is not None:
        entry.mkdir(parents=True, exist_ok=True)
        dtype = np.uint16 if tok.get_vocab_size() <= 2**16 else np.int64
        for split_name, stream in zip(("train", "validation"), streams):
            _write_atomic(entry / f"{split_name}.npy", lambda p, s=stream: _save_array(p, s.astype(dtype)))
        _write_atomic(entry / "tokenizer.json", lambda p: tok.save(str(p)))
        _write_atomic(entry / "info.json", lambda p: p.write_text(json.dumps(info, indent=2)))
    return TokenizedCorpus(name, tok, *streams, info)
