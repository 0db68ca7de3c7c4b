"""Lag decomposition of heads and mechanism classification on hand-built models (KV shift and vanilla);
the other mixers are covered in tests/test_mixers.py."""

import math

import pytest
import torch
from test_detect import distinct_repeat, force_patterns, induction_pattern, previous_pattern, theorem2_model

from kvshift_lens.analysis.circuits import (
    classify_heads, composition_baseline, logit_terms, output_terms, path_fractions, scored_induction_targets, target_heads,
)
from kvshift_lens.analysis.head_detectors import repeated_tokens
from kvshift_lens.models.config import ModelConfig
from kvshift_lens.models.transformer import build_model, build_module, to_bridge
from kvshift_lens.data.tasks.base import make_task, task_config

CONFIGS = {
    "learned-kv": dict(),
    "rotary-gqa-window2": dict(positions="rotary", n_kv_heads=2, mixer=dict(name="kv_shift", window=2)),
    "alibi-k-rmsnorm": dict(positions="alibi", norm="rmsnorm", mixer=dict(name="kv_shift", sides="k", param="gate")),
    "vanilla-2layer": dict(mixer="none", n_layers=2),
}


@pytest.mark.parametrize("overrides", CONFIGS.values(), ids=CONFIGS.keys())
def test_lag_terms_sum_exactly_to_the_attention_logits_and_outputs(overrides):
    cfg = ModelConfig(**{"d_model": 32, "n_heads": 4, "d_vocab": 20, "n_ctx": 21, "seed": 3, **overrides})
    model = build_model(cfg)
    tokens = repeated_tokens(3, 10, 20, torch.Generator().manual_seed(0))
    _, cache = model.run_with_cache(tokens)
    for layer in range(cfg.n_layers):
        terms, bias = logit_terms(model, cache, layer)
        assert terms.shape[0] == (cfg.mixer.window + 1 if cfg.arch == "kvshift" else 1)
        torch.testing.assert_close(terms.sum(0) + bias, cache[f"blocks.{layer}.attn.hook_attn_scores"])
        outs = output_terms(model, cache, layer)  # [lag, batch, pos, head, d_model]
        torch.testing.assert_close(outs.sum((0, 3)) + model.b_O[layer], cache[f"blocks.{layer}.hook_attn_out"])


def test_theorem2_head_is_mixer_mediated_with_all_margin_from_alpha2_and_answer_from_beta1():
    row = classify_heads(theorem2_model(), distinct_repeat(10, 32, batch=8)).iloc[0]
    assert row.mechanism == "mixer-mediated" and row.is_induction
    assert row.prev_key_fraction == pytest.approx(1.0) and row.own_value_fraction == pytest.approx(1.0)
    assert row.target_logit_margin > 10 and row.answer_logit > 5


def test_unshifted_keys_make_the_theorem2_head_a_duplicate_head_not_an_induction_head():
    row = classify_heads(theorem2_model(alpha=(1.0, 0.0)), distinct_repeat(10, 32, batch=8)).iloc[0]
    assert not row.is_induction and row.mechanism == "none"
    assert row.target_logit_margin < 0 and math.isnan(row.prev_key_fraction)  # the target is not favoured


def test_induction_attention_that_copies_the_shifted_value_is_not_mixer_mediated():
    paths = path_fractions(theorem2_model(beta=(0.0, 1.0)), distinct_repeat(10, 32, batch=8)).iloc[0]
    assert paths.prev_key_fraction == pytest.approx(1.0)
    assert paths.answer_logit <= 0 and not paths.own_value_fraction >= 0.5  # the value is x_t's, not the answer's
    row = classify_heads(theorem2_model(beta=(0.0, 1.0)), distinct_repeat(10, 32, batch=8)).iloc[0]
    assert row.is_induction and row.mechanism == "none"


def test_own_value_fraction_is_beta1s_lag0_share_of_the_centred_answer_logit():
    # β2 copies x_t's own value: its centred answer logit is -β2/V of the copy strength, against β1(1 - 1/V)
    paths = path_fractions(theorem2_model(beta=(0.7, 0.3)), distinct_repeat(10, 32, batch=8)).iloc[0]
    own, shifted = 0.7 * (1 - 1 / 32), -0.3 / 32
    assert paths.own_value_fraction == pytest.approx(own / (own + shifted), abs=2e-3)


def test_prev_key_fraction_is_alpha2s_share_of_the_summed_target_margin():
    # α1 = 0.3 makes x_t's own key match at s = t - L and s = t, costing 0.3·2/t of the margin on row t
    paths = path_fractions(theorem2_model(alpha=(0.3, 0.7)), distinct_repeat(10, 32, batch=8)).iloc[0]
    rows = range(11, 20)  # scored second-copy rows of L = 10, T = 21
    expected = 0.7 * len(rows) / sum(0.7 - 0.3 * 2 / t for t in rows)
    assert paths.prev_key_fraction == pytest.approx(expected, rel=1e-4)


def two_layer_induction_model(d_vocab=16, d_model=40, n_ctx=21):
    """Hand-built vanilla induction circuit: L0H0 (pattern forced to previous-token by the test)
    writes x_{t-1} into subspace B; L1H0's query reads x_t from A, its key reads B, its value A."""
    cfg = ModelConfig(mixer="none", n_layers=2, n_heads=1, d_model=d_model, d_vocab=d_vocab, n_ctx=n_ctx)
    module = build_module(cfg)
    raw = torch.randn(d_model, 2 * d_vocab, generator=torch.Generator().manual_seed(0))
    basis = torch.linalg.qr(raw - raw.mean(0)).Q.T  # [2·vocab, d_model] orthonormal, zero-mean rows
    a, b = basis[:d_vocab], basis[d_vocab:]  # token subspace A, previous-token subspace B
    l0, l1 = module.layers[0].attn, module.layers[1].attn
    with torch.no_grad():  # nn.Linear computes W x: W = Σ_v e_out(v) e_in(v)ᵀ maps e_in(v) to e_out(v)
        module.tok_embed.weight.copy_(a)
        module.pos.weight.zero_()
        l0.v.weight.copy_(b.T @ a / d_model**0.5)  # A -> B (ln1 scales unit vectors by √d_model)
        l1.q.weight.copy_(5 * a.T @ a)
        l1.k.weight.copy_(a.T @ b)  # B -> A: the key of s is x_{s-1}
        l1.v.weight.copy_(a.T @ a)
        for attn in (l0, l1):
            attn.o.weight.copy_(torch.eye(d_model))
        module.head.weight.copy_(3 * a)
    return to_bridge(module)


def test_two_layer_induction_head_is_composition_mediated_through_the_previous_token_head():
    model = two_layer_induction_model()
    with force_patterns(model, {(0, 0): previous_pattern(21)}):
        table = classify_heads(model, distinct_repeat(10, 16, batch=8)).set_index(["layer", "head"])
    row = table.loc[(1, 0)]
    assert row.is_induction and row.induction_score > 0.9
    assert row.mechanism == "composition-mediated" and row.composition_source == "L0H0"
    assert row.k_path_drop > 0.8 and row.k_composition_ratio > 1
    assert table.loc[(0, 0)].mechanism == "none" and table.loc[(0, 0)].previous_token_score == pytest.approx(1.0)


def test_induction_attention_that_ignores_the_key_path_is_not_composition_mediated():
    model = two_layer_induction_model()  # same weights and TL K-composition, layer-1 pattern forced
    with force_patterns(model, {(0, 0): previous_pattern(21), (1, 0): induction_pattern(21, 10)}):
        row = classify_heads(model, distinct_repeat(10, 16, batch=8)).set_index(["layer", "head"]).loc[(1, 0)]
    assert row.is_induction and row.composition_source == "L0H0" and row.k_composition_ratio > 1
    assert row.k_path_drop == pytest.approx(0.0, abs=1e-6) and row.mechanism == "none"


def test_composition_baseline_is_the_chance_level_of_a_random_models_k_composition():
    model = build_model(ModelConfig(mixer="none", n_layers=2, n_heads=4, d_model=32, d_vocab=20))
    scores = model.all_composition_scores("K").scores[0, :, 1, :]  # layer 0 -> layer 1 head pairs
    assert scores.mean().item() == pytest.approx(composition_baseline(model), rel=0.25)


def mqar_batch(batch=16):
    """MQAR in the theorem-2 model's vocabulary and context (zeros between the queries), and its targets."""
    task = make_task(task_config("mqar", d_vocab=32, seq_len=20, num_kv_pairs=4, random_non_queries=False))
    b = task.sample(batch, torch.Generator().manual_seed(0))
    return b.tokens, task.attention_targets(b)


def test_default_targets_of_path_fractions_are_the_scored_induction_rows():
    model, tokens = theorem2_model(alpha=(0.3, 0.7), beta=(0.8, 0.2)), distinct_repeat(10, 32, batch=8)
    pd_default, pd_explicit = path_fractions(model, tokens), path_fractions(model, tokens, scored_induction_targets(tokens))
    assert pd_default.equals(pd_explicit)


def test_the_theorem2_head_recalls_mqar_values_through_the_shifted_key():
    tokens, targets = mqar_batch()
    row = target_heads(theorem2_model(), tokens, targets).iloc[0]
    assert row.mechanism == "mixer-mediated" and row.target_attention > 0.9
    assert row.prev_key_fraction == pytest.approx(1.0) and row.own_value_fraction == pytest.approx(1.0)


def test_a_head_matching_the_key_token_itself_is_direct_and_one_missing_its_target_is_none():
    tokens, targets = mqar_batch()
    own_key = targets.roll(-1, dims=-1)  # the queried key's own context position (a stacked-MQAR-like target)
    row = target_heads(theorem2_model(alpha=(1.0, 0.0)), tokens, own_key).iloc[0]
    assert row.mechanism == "direct" and row.prev_key_fraction == pytest.approx(0.0)
    assert row.target_attention == pytest.approx(0.5, abs=0.01)  # split with the query's own position
    assert target_heads(theorem2_model(alpha=(1.0, 0.0)), tokens, targets).iloc[0].mechanism == "none"
