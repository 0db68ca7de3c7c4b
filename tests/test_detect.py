"""Head detectors on hand-built attention patterns and hand-built models whose scores are known."""

import math

import pytest
import torch

from kvshift_lens.analysis.head_detectors import (
    BOS, METRICS, ablate_heads, ablation_drop, attention_patterns, copying_boost_share, copying_score, duplicate_token_score, head_scores, induction_score, prefix_matching, previous_token_score, repeat_period, repeated_tokens, scored_mask, tl_detector_scores,
)
from kvshift_lens.models.config import ModelConfig
from kvshift_lens.models.transformer import build_model, build_module, to_bridge


def causal_uniform(batch: int, seq: int) -> torch.Tensor:
    """Uniform attention over keys s <= t: [batch, 1, q, k]."""
    pattern = torch.ones(seq, seq).tril()
    return (pattern / pattern.sum(-1, keepdim=True)).expand(batch, 1, seq, seq)


def random_pattern(batch: int, heads: int, seq: int, seed: int = 0) -> torch.Tensor:
    """Causal softmax of random logits: [batch, heads, q, k]."""
    logits = torch.randn(batch, heads, seq, seq, generator=torch.Generator().manual_seed(seed)) * 3
    return logits.masked_fill(torch.ones(seq, seq).triu(1).bool(), float("-inf")).softmax(-1)


def distinct_repeat(period: int, d_vocab: int, batch: int = 1) -> torch.Tensor:
    """`[BOS] r r` sequences whose r has no repeated token: [batch, 1 + 2·period]."""
    g = torch.Generator().manual_seed(0)
    r = torch.stack([torch.randperm(d_vocab - 1, generator=g)[:period] + 1 for _ in range(batch)])
    return torch.cat([torch.full((batch, 1), BOS), r, r], dim=1)


def induction_pattern(seq: int, period: int) -> torch.Tensor:
    """Second-copy rows on key t - L + 1, every other row on BOS: [q, k]."""
    pattern = torch.zeros(seq, seq)
    pattern[:, 0] = 1.0
    for t in range(period + 1, seq):
        pattern[t] = 0.0
        pattern[t, t - period + 1] = 1.0
    return pattern


def previous_pattern(seq: int) -> torch.Tensor:
    """Every row on key t - 1 (row 0 on itself): [q, k]."""
    return torch.eye(seq).roll(-1, dims=1).tril() + torch.eye(seq) * (torch.arange(seq) == 0)


def theorem2_model(alpha=(0.0, 1.0), beta=(1.0, 0.0), d_vocab=32, d_model=48, n_ctx=21):
    """Xu et al. Theorem 2 by hand: one KV-shift head whose query (token x_t) matches the shifted key
    α2·K_{s-1} of the token after x_t's earlier occurrence and copies that token's own value (β1)."""
    cfg = ModelConfig(mixer="kv_shift", n_layers=1, n_heads=1, d_model=d_model, d_vocab=d_vocab, n_ctx=n_ctx)
    module = build_module(cfg)
    raw = torch.randn(d_model, d_vocab, generator=torch.Generator().manual_seed(0))
    embed = torch.linalg.qr(raw - raw.mean(0)).Q.T  # [vocab, d_model]: orthonormal, zero-mean rows
    eye = torch.eye(d_model)
    attn = module.layers[0].attn
    with torch.no_grad():
        module.tok_embed.weight.copy_(embed)
        module.pos.weight.zero_()
        for lin, w in ((attn.q, 3 * eye), (attn.k, eye), (attn.v, eye), (attn.o, eye)):
            lin.weight.copy_(w)
        attn.k_shift.weight.copy_(torch.tensor([alpha]))
        attn.v_shift.weight.copy_(torch.tensor([beta]))
        module.head.weight.copy_(3 * embed)
    return to_bridge(module)


# --- attention-pattern scores ----------------------------------------------------------------

def test_perfect_induction_diagonal_scores_one_and_uniform_scores_mean_inverse_row_length():
    period = 5
    tokens = distinct_repeat(period, 20, batch=2)
    seq = tokens.shape[1]
    pattern = induction_pattern(seq, period).expand(2, 1, seq, seq)
    assert induction_score(pattern, tokens).item() == pytest.approx(1.0)
    expected = sum(1 / (t + 1) for t in range(period + 1, seq)) / period
    assert induction_score(causal_uniform(2, seq), tokens).item() == pytest.approx(expected)


def test_induction_score_drops_rows_whose_token_repeats_inside_r():
    tokens = torch.tensor([[BOS, 4, 5, 4, 6, 4, 5, 4, 6]])  # r = 4 5 4 6: rows of token 4 are ambiguous
    pattern = induction_pattern(9, 4)[None, None].clone()
    pattern[0, 0, [5, 7]] = 0.0
    pattern[0, 0, [5, 7], [2, 4]] = 1.0  # ambiguous rows attend the other occurrence's follower
    assert induction_score(pattern, tokens).item() == pytest.approx(1.0)
    pattern[0, 0, 6] = 0.0
    pattern[0, 0, 6, 0] = 1.0  # the unambiguous row of token 5 misses: 1 of 2 counted rows
    assert induction_score(pattern, tokens).item() == pytest.approx(0.5)


def test_perfect_previous_token_pattern_scores_one_and_a_bos_sink_scores_only_row_one():
    seq = 9
    prev = torch.zeros(1, 1, seq, seq)
    prev[0, 0, 0, 0] = 1.0
    prev[0, 0, torch.arange(1, seq), torch.arange(seq - 1)] = 1.0
    assert previous_token_score(prev).item() == pytest.approx(1.0)
    sink = torch.zeros(1, 1, seq, seq)
    sink[..., 0] = 1.0  # only row 1, whose previous token is BOS, scores
    assert previous_token_score(sink).item() == pytest.approx(1 / (seq - 1))
    expected = sum(1 / (t + 1) for t in range(1, seq)) / (seq - 1)
    assert previous_token_score(causal_uniform(1, seq)).item() == pytest.approx(expected)


def test_duplicate_score_averages_only_rows_that_have_an_earlier_duplicate():
    tokens = torch.tensor([[0, 5, 6, 5, 7, 6]])
    pattern = torch.zeros(1, 1, 6, 6)
    pattern[..., 0] = 1.0  # rows without a duplicate sit on BOS
    pattern[0, 0, 3] = torch.tensor([0, 1.0, 0, 0, 0, 0])  # 5 -> earlier 5
    pattern[0, 0, 5] = torch.tensor([0, 0, 0.5, 0, 0, 0.5])  # 6: half on the earlier 6, half on itself
    assert duplicate_token_score(pattern, tokens).item() == pytest.approx(0.75)


def test_prefix_matching_sums_attention_over_all_earlier_occurrences():
    period = 3
    tokens = torch.tensor([[BOS] + [4, 5, 6] * 3])  # [BOS] r r r
    seq = tokens.shape[1]
    pattern = torch.zeros(1, 1, seq, seq)
    pattern[..., 0] = 1.0
    for t in range(period + 1, seq):  # spread evenly over every key that followed an earlier x_t
        keys = [s for s in range(1, t + 1) if tokens[0, s - 1] == tokens[0, t]]
        pattern[0, 0, t] = 0.0
        pattern[0, 0, t, keys] = 1.0 / len(keys)
    assert prefix_matching(pattern, tokens).item() == pytest.approx(1.0)
    two = 1 + 2 * period  # the [BOS] r r prefix
    assert induction_score(pattern[..., :two, :two], tokens[:, :two]).item() == pytest.approx(1.0)


def test_scores_equal_transformer_lens_mul_scores_rescaled_by_rows_with_a_target():
    period = 6
    tokens = distinct_repeat(period, 20)
    seq = tokens.shape[1]
    pattern = random_pattern(1, 3, seq)
    tl = tl_detector_scores(pattern, tokens)  # TL divides by all T rows, we by rows with a target
    ours = {
        "induction_score": (induction_score(pattern, tokens), period),
        "previous_token_score": (previous_token_score(pattern), seq - 1),
        "duplicate_token_score": (duplicate_token_score(pattern, tokens), period),
    }
    for name, (score, rows) in ours.items():
        torch.testing.assert_close(score * rows / seq, tl[name], msg=name)
        assert (score > tl[name]).all(), name


# --- batches ------------------------------------------------------------------------------

def test_repeated_tokens_are_seeded_bos_led_copies_without_bos_inside():
    a = repeated_tokens(8, 7, 12, torch.Generator().manual_seed(3))
    b = repeated_tokens(8, 7, 12, torch.Generator().manual_seed(3))
    assert a.shape == (8, 15) and torch.equal(a, b)
    assert (a[:, 0] == BOS).all() and (a[:, 1:] != BOS).all() and (a < 12).all()
    assert repeat_period(a) == 7
    with pytest.raises(ValueError, match="BOS"):
        repeat_period(torch.randint(1, 12, (2, 15), generator=torch.Generator().manual_seed(0)))


# --- whole models -------------------------------------------------------------------------

def force_patterns(model, forced: dict[tuple[int, int], torch.Tensor]):
    """`model.hooks` context that overwrites head patterns (q, k) before the value matmul."""
    def hook_for(layer):
        def hook(pattern, hook):
            pattern = pattern.clone()
            for (l, h), p in forced.items():
                if l == layer:
                    pattern[:, h] = p[: pattern.shape[-1], : pattern.shape[-1]]
            return pattern
        return hook
    layers = sorted({l for l, _ in forced})
    return model.hooks(fwd_hooks=[(f"blocks.{l}.attn.hook_pattern", hook_for(l)) for l in layers])


def test_head_scores_reads_forced_patterns_from_a_real_model_as_tidy_rows():
    cfg = ModelConfig(mixer="kv_shift", n_layers=2, n_heads=2, d_model=32, d_vocab=20, n_ctx=21)
    model = build_model(cfg)
    with force_patterns(model, {(1, 0): induction_pattern(21, 10), (0, 1): previous_pattern(21)}):
        df = head_scores(model, batch_size=4)
    assert list(df.columns) == ["layer", "head", "metric", "value"]
    per_head = df[df.layer >= 0].groupby("metric").size()
    assert len(df) == 1 + sum(per_head) and (per_head == 4).all() and len(per_head) == len(METRICS) + 2
    assert df[(df.layer == -1)].metric.tolist() == ["icl_score"]
    value = df.set_index(["metric", "layer", "head"]).value
    assert value["induction_score", 1, 0] == pytest.approx(1.0)
    assert value["previous_token_score", 0, 1] == pytest.approx(1.0)
    assert value["induction_score", 0, 0] < 0.5 and value["previous_token_score", 1, 1] < 0.5
    with pytest.raises(ValueError, match="unknown metric"):
        head_scores(model, metrics=("induction",))


def test_theorem2_head_is_an_induction_head_that_copies_and_whose_ablation_breaks_induction():
    model = theorem2_model()
    df = head_scores(model, distinct_repeat(10, 32, batch=16)).set_index(["metric", "layer", "head"]).value
    assert df["induction_score", 0, 0] > 0.99 and df["prefix_matching", 0, 0] > 0.99
    assert df["copying_score", 0, 0] > 0.95
    assert df["zero_ablation_loss_increase", 0, 0] > 2.0 and df["zero_ablation_acc_drop", 0, 0] > 0.8
    assert df["mean_ablation_loss_increase", 0, 0] > 2.0 and df["mean_ablation_acc_drop", 0, 0] > 0.8
    assert df["icl_score", -1, -1] < -1.0  # the late token is predicted, the early one is not


def test_joint_ablation_of_one_head_matches_the_per_head_ablation_and_of_none_changes_nothing():
    model = build_model(ModelConfig(mixer="kv_shift", n_layers=2, d_model=16, n_heads=2, d_vocab=16, n_ctx=21, seed=3))
    tokens = repeated_tokens(8, 10, 16, torch.Generator().manual_seed(0))
    mask = scored_mask(tokens, 10)
    drops = ablation_drop(model, tokens, mask).set_index(["metric", "layer", "head"]).value
    _, base = ablate_heads(model, tokens, mask, [])
    for kind in ("zero", "mean"):
        _, acc = ablate_heads(model, tokens, mask, [(1, 1)], kind)
        assert base - acc == pytest.approx(drops[f"{kind}_ablation_acc_drop", 1, 1], abs=1e-6)
    with pytest.raises(ValueError, match="kind"):
        ablate_heads(model, tokens, mask, [(0, 0)], "resample")


def test_ablating_the_theorem2_head_together_with_nothing_else_breaks_induction():
    model = theorem2_model()
    tokens = distinct_repeat(10, 32, batch=16)
    mask = scored_mask(tokens, 10)
    assert ablate_heads(model, tokens, mask, [])[1] > 0.99
    assert ablate_heads(model, tokens, mask, [(0, 0)])[1] < 0.2


def test_copying_score_follows_the_sign_of_beta1_the_attended_tokens_own_value():
    assert copying_score(theorem2_model(beta=(1.0, 0.0))).item() == pytest.approx(1.0, abs=1e-4)
    assert copying_score(theorem2_model(beta=(-1.0, 0.0))).item() == pytest.approx(-1.0, abs=1e-4)


def low_rank_copier(d_vocab: int = 64, d_model: int = 32, n_heads: int = 2, seed: int = 0):
    """Vanilla 1-layer model whose every head copies through a d_head-dimensional subspace: W_U = W_Eᵀ and
    W_V[h] W_O[h] the orthogonal projection onto d_head directions, so its OV circuit is E P Eᵀ (rank d_head)."""
    cfg = ModelConfig(mixer="none", n_layers=1, n_heads=n_heads, d_model=d_model, d_vocab=d_vocab, n_ctx=8,
                      norm="none", seed=seed)
    module = build_module(cfg)
    g = torch.Generator().manual_seed(seed)
    embed = torch.randn(d_vocab, d_model, generator=g)
    basis = torch.linalg.qr(torch.randn(d_model, d_model, generator=g)).Q  # orthonormal columns
    d_head = d_model // n_heads
    attn = module.layers[0].attn
    with torch.no_grad():
        module.tok_embed.weight.copy_(embed)
        module.head.weight.copy_(embed)  # unembed = embedᵀ
        attn.v.weight.copy_(basis.T)  # head h reads coordinates h·d_head … along `basis`
        attn.o.weight.copy_(basis)  # and writes them back
    return to_bridge(module), d_head


def test_an_ideal_low_rank_copier_scores_one_but_only_about_minus_two_thirds_on_the_boost_share():
    model, d_head = low_rank_copier(d_vocab=64, d_model=32, n_heads=2)
    assert d_head == 16
    torch.testing.assert_close(copying_score(model), torch.ones(1, 2), atol=1e-4, rtol=0)
    boost = copying_boost_share(model)  # the metric this repository used before: capped far below 1
    assert (boost < -0.5).all() and (boost > -0.8).all()


def test_random_heads_score_about_zero():
    scores = torch.cat([copying_score(build_model(ModelConfig(mixer="none", n_layers=2, n_heads=4, d_model=64,
                                                                d_vocab=64, n_ctx=8, seed=s))).flatten()
                        for s in range(4)])  # 32 heads
    assert scores.abs().mean() < 0.2 and abs(scores.mean()) < 0.1


def test_copying_score_needs_no_vocab_sized_eigendecomposition():
    model, _ = low_rank_copier(d_vocab=64, d_model=32, n_heads=2)
    from kvshift_lens.analysis.head_detectors import _direct_ov
    left, right = _direct_ov(model, 0)
    full = torch.linalg.eigvals((left @ right).double())  # [head, vocab]: rank d_head, the rest ≈ 0
    torch.testing.assert_close(full.sum(-1).real / full.abs().sum(-1), copying_score(model)[0].double(), atol=1e-3,
                               rtol=0)


def test_on_distinct_r_the_induction_score_is_the_plain_arena_diagonal():
    period = 10
    tokens = repeated_tokens(4, period, 64, torch.Generator().manual_seed(0))  # distinct by default
    pattern = random_pattern(4, 3, tokens.shape[1])
    q = torch.arange(period + 1, tokens.shape[1])
    diagonal = pattern[..., q, q - period + 1].mean((0, -1))  # ARENA: mean over batch and second-copy rows
    torch.testing.assert_close(induction_score(pattern, tokens), diagonal)


def test_repeated_tokens_draw_r_without_replacement_where_the_vocabulary_allows():
    g = torch.Generator().manual_seed(0)
    tokens = repeated_tokens(16, 31, 64, g)  # default: distinct
    r = tokens[:, 1:32]
    assert all(len(set(row.tolist())) == 31 for row in r)
    iid = repeated_tokens(64, 31, 64, g, distinct=False)
    assert any(len(set(row.tolist())) < 31 for row in iid[:, 1:32])
    assert repeated_tokens(2, 20, 8, g).shape == (2, 41)  # too small a vocabulary: i.i.d. by default
    with pytest.raises(ValueError, match="distinct=True"):
        repeated_tokens(2, 20, 8, g, distinct=True)


def test_attention_patterns_match_each_layers_hook_pattern():
    model = build_model(ModelConfig(n_layers=2, n_heads=2, d_model=16, d_vocab=12, n_ctx=9))
    tokens = repeated_tokens(3, 4, 12, torch.Generator().manual_seed(0))
    _, cache = model.run_with_cache(tokens)
    pattern = attention_patterns(model, tokens)
    assert pattern.shape == (3, 2, 2, 9, 9)
    torch.testing.assert_close(pattern[:, 1], cache["blocks.1.attn.hook_pattern"])
    assert math.isclose(pattern.sum(-1).mean().item(), 1.0, rel_tol=1e-6)
