"""Tokenizers: TransformerLens' string tools (to_tokens, to_str_tokens, to_string, detect_head) on our models."""

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformer_lens.head_detector import detect_head

from kvshift_lens.models.checkpoints import read_checkpoint
from kvshift_lens.analysis.head_detectors import attention_patterns, tl_detector_scores
from kvshift_lens.models.config import ModelConfig
from kvshift_lens.models.transformer import build_model, build_module
from kvshift_lens.models.checkpoints import load_model, save_model
from kvshift_lens.core.vocab import BOS, NO_ANSWER, PAD
from kvshift_lens.data.tasks.base import make_task, task_config
from kvshift_lens.models.transformer import attach_tokenizer
from kvshift_lens.models.vocab_tokenizer import content_word, token_names
from kvshift_lens.training.train_config import TrainConfig
from kvshift_lens.training.trainer import train

TINY = ModelConfig(mixer="kv_shift", d_model=16, n_heads=2, d_vocab=16, n_ctx=16)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 1-layer KV-shift model trained to ~95 % induction accuracy (3 s), and its step-0 checkpoint."""
    run = tmp_path_factory.mktemp("run")
    cfg = ModelConfig(mixer="kv_shift", d_model=32, n_heads=4, d_vocab=32, n_ctx=32)
    summary = train(cfg, task_config("induction", d_vocab=32, seq_len=32), TrainConfig(
        steps=200, lr=1e-2, batch_size=32, eval_every=50, eval_size=64, warmup=10, n_checkpoints=2, threads=1),
        run, progress=False)
    assert summary["final_induction_acc"] > 0.9
    return load_model(run / "checkpoints" / "step_0000200.safetensors"), load_model(run / "checkpoints" / "step_0000000.safetensors")


def test_special_tokens_are_named_and_content_tokens_are_short_words():
    names = token_names(40)
    assert [names[BOS], names[PAD], names[NO_ANSWER]] == ["[BOS]", "[PAD]", "[NO_ANSWER]"]
    assert names[3:6] == ["a", "b", "c"] and names[28] == "z" and names[29] == "aa"
    assert [content_word(i) for i in (0, 25, 26, 701, 702)] == ["a", "z", "aa", "zz", "aaa"]
    assert len(set(token_names(5000))) == 5000


def test_string_tools_round_trip_the_task_tokens():
    model = build_model(TINY)
    batch = make_task(task_config("repeated_tokens", d_vocab=16, seq_len=15)).sample(2, torch.Generator().manual_seed(0))
    text = model.to_string(batch.tokens[:, 1:])  # without [BOS]: to_tokens prepends it
    assert torch.equal(model.to_tokens(text), batch.tokens)
    assert model.to_str_tokens(batch.tokens[0])[:2] == ["[BOS]", model.to_str_tokens(batch.tokens[0, 1:2])[0]]
    assert model.to_str_tokens("a b [PAD]") == ["[BOS]", "a", "b", "[PAD]"]


def test_tl_detect_head_finds_the_induction_head_of_a_trained_kvshift_model(trained):
    model, init = trained
    batch = make_task(task_config("repeated_tokens", d_vocab=32, seq_len=31)).sample(4, torch.Generator().manual_seed(1))
    seqs = model.to_string(batch.tokens[:, 1:])  # "[BOS] r r" as text: TL tokenizes it again
    scores = detect_head(model, seqs, "induction_head")  # [layer, head], TL's "mul" score
    # the most a head can score: the 15 second-copy queries of 31 put all attention on their target
    assert scores.max() > 0.8 * 15 / 31
    assert detect_head(init, seqs, "induction_head").max() < 0.1  # the untrained model has no such head
    tokens = model.to_tokens(seqs)
    ours = tl_detector_scores(attention_patterns(model, tokens), tokens)["induction_score"]  # tokens, no strings
    torch.testing.assert_close(scores, ours, rtol=1e-5, atol=1e-6)


def char_tokenizer() -> Tokenizer:
    """A character-level tokenizer from the `tokenizers` library (what a text model would use)."""
    vocab = {"<s>": 0, "<pad>": 1, **{c: i + 2 for i, c in enumerate("abcdefgh ")}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return tok


@pytest.mark.parametrize("bare", [True, False], ids=["bare-module", "bridge"])
def test_attached_tokenizer_travels_inside_the_checkpoint(tmp_path, bare):
    model = build_module(TINY) if bare else build_model(TINY)
    attach_tokenizer(model, char_tokenizer(), bos_token="<s>", pad_token="<pad>")
    path = save_model(model, tmp_path / "m.safetensors")
    assert "tokenizer" in read_checkpoint(path)[2]
    loaded = load_model(path)
    assert loaded.to_str_tokens("ab c") == ["<s>", "a", "b", " ", "c"]
    assert loaded.to_tokens("ab").tolist() == [[0, 2, 3]] and loaded.cfg.d_vocab == 16
    if not bare:
        assert model.to_str_tokens("ab c") == loaded.to_str_tokens("ab c")


def test_synthetic_tokenizer_is_rebuilt_from_the_config_not_stored(tmp_path):
    path = save_model(build_module(TINY), tmp_path / "m.safetensors")
    assert "tokenizer" not in read_checkpoint(path)[2]
    assert load_model(path).to_str_tokens(torch.tensor([0, 3, 15])) == ["[BOS]", "a", "m"]


def test_tokenizer_larger_than_the_model_vocabulary_is_refused():
    with pytest.raises(ValueError, match="the tokenizer has 17 tokens but the model only 16"):
        attach_tokenizer(build_module(TINY), build_model(ModelConfig(d_vocab=17, n_ctx=16, d_model=16, n_heads=2)).tokenizer)


def test_hook_name_inside_an_aliased_hook_is_the_underlying_tl4_name():
    # documented in docs/detect.md and notebook 01: filter on hook.name with these names, not the aliases
    model = build_model(TINY)
    seen = {}
    for alias in ("blocks.0.attn.hook_z", "blocks.0.attn.hook_k_shifted", "blocks.0.hook_resid_pre"):
        model.run_with_hooks(torch.zeros(1, 4, dtype=torch.long),
                             fwd_hooks=[(alias, lambda t, hook, alias=alias: seen.__setitem__(alias, hook.name))])
    assert seen == {"blocks.0.attn.hook_z": "blocks.0.attn.o.hook_in",
                    "blocks.0.attn.hook_k_shifted": "blocks.0.attn.k_shift.hook_out",
                    "blocks.0.hook_resid_pre": "blocks.0.hook_in"}
