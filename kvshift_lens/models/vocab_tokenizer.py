"""Tokenizers for kvshift_lens models, so TransformerLens' string tools (`to_tokens`, `to_str_tokens`,
`to_string`, `head_detector.detect_head`, labelled attention views) work on them.

A synthetic-task model gets a word-level tokenizer over its own vocabulary, built in memory: the
special ids keep their names (`[BOS]` = 0, `[PAD]` = 1, `[NO_ANSWER]` = 2) and content id 3, 4, ...
is the word "a", "b", ..., "z", "aa", "ab", ... (bijective base 26), so `"[BOS] a b c a b c"` is a
`[BOS] r r` sequence. Any other tokenizer (`tokenizers.Tokenizer` or `PreTrainedTokenizerFast`, e.g.
a byte-level BPE) is attached with `kvshift_lens.models.transformer.attach_tokenizer` and travels inside `save_model` files.

TL 4 normalises every tokenizer through `get_tokenizer_with_bos`, which reloads it with
`AutoTokenizer.from_pretrained(init_kwargs["name_or_path"], add_bos_token=True)` unless it already
prepends BOS -- a `KeyError` (no `name_or_path`) or a download for an in-memory tokenizer. We build
every tokenizer the way that function would return it (`name_or_path` set, `add_bos_token=True`),
so TL keeps it as it is.
"""

from __future__ import annotations

import json
import string
from typing import Optional, Union

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from kvshift_lens.core.vocab import BOS, N_SPECIAL, NO_ANSWER, PAD

SPECIAL_NAMES = {BOS: "[BOS]", PAD: "[PAD]", NO_ANSWER: "[NO_ANSWER]"}
SPECIAL_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token")
AnyTokenizer = Union[Tokenizer, PreTrainedTokenizerFast]


def content_word(index: int) -> str:
    """Word of the `index`-th content token (0 -> "a", 25 -> "z", 26 -> "aa", ...)."""
    word = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        word = string.ascii_lowercase[rest] + word
    return word


def token_names(d_vocab: int) -> list[str]:
    """Name of every id of a synthetic vocabulary of size `d_vocab`."""
    return [SPECIAL_NAMES[i] for i in range(min(N_SPECIAL, d_vocab))] + [
        content_word(i) for i in range(max(d_vocab - N_SPECIAL, 0))]


def synthetic_tokenizer(d_vocab: int) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over a synthetic vocabulary: whitespace-separated names <-> ids.

    `[BOS]` also serves as EOS (GPT-2's convention: one document ends where the next begins).
    """
    vocab = {name: i for i, name in enumerate(token_names(d_vocab))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return as_hf_tokenizer(backend, name=f"kvshift_lens/synthetic-{d_vocab}", bos_token=SPECIAL_NAMES[BOS],
                           eos_token=SPECIAL_NAMES[BOS], pad_token=SPECIAL_NAMES[PAD])


def as_hf_tokenizer(tokenizer: AnyTokenizer, *, name: Optional[str] = None, **special_tokens: str
                    ) -> PreTrainedTokenizerFast:
    """A `PreTrainedTokenizerFast` that TransformerLens 4 accepts as it is (see the module docstring).

    `special_tokens` (bos_token, eos_token, pad_token, unk_token) override the tokenizer's own; a missing
    EOS defaults to BOS and a missing PAD to EOS, so TL adds no token outside the vocabulary.
    """
    if isinstance(tokenizer, PreTrainedTokenizerFast):
        own = {k: getattr(tokenizer, k) for k in SPECIAL_KEYS if getattr(tokenizer, k) is not None}
        name = name or tokenizer.name_or_path or "kvshift_lens/attached"
        backend = tokenizer.backend_tokenizer
    elif isinstance(tokenizer, Tokenizer):
        own, backend = {}, tokenizer
    else:
        raise TypeError(f"expected a tokenizers.Tokenizer or a PreTrainedTokenizerFast, got {type(tokenizer).__name__}")
    specials = {**own, **{k: v for k, v in special_tokens.items() if v is not None}}
    unknown = sorted(set(specials) - set(SPECIAL_KEYS))
    if unknown:
        raise TypeError(f"unknown special token kind(s) {unknown}; use {list(SPECIAL_KEYS)}")
    specials.setdefault("eos_token", specials.get("bos_token"))
    specials.setdefault("pad_token", specials.get("eos_token"))
    specials = {k: v for k, v in specials.items() if v is not None}
    vocab = backend.get_vocab(with_added_tokens=True)
    missing = sorted(v for v in specials.values() if v not in vocab)
    if missing:
        raise ValueError(f"special token(s) {missing} are not in the tokenizer's vocabulary")
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(backend.to_str()),
                                   name_or_path=name or "kvshift_lens/attached",
                                   add_bos_token="bos_token" in specials, **specials)


def tokenizer_to_json(tokenizer: PreTrainedTokenizerFast) -> str:
    """The tokenizer as one JSON string (its `tokenizers` JSON, name and special tokens), for checkpoints."""
    specials = {k: getattr(tokenizer, k) for k in SPECIAL_KEYS if getattr(tokenizer, k) is not None}
    return json.dumps({"name": tokenizer.name_or_path, "special_tokens": specials,
                       "tokenizer": tokenizer.backend_tokenizer.to_str()}, sort_keys=True)


def tokenizer_from_json(text: str) -> PreTrainedTokenizerFast:
    """Inverse of `tokenizer_to_json`."""
    data = json.loads(text)
    return as_hf_tokenizer(Tokenizer.from_str(data["tokenizer"]), name=data["name"], **data["special_tokens"])
