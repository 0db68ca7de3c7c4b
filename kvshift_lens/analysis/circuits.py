"""Lag decomposition of attention heads under any local mixer, and the mechanism of each induction head.

Every mixer is causal and affine along the sequence, so a head's key K_s splits exactly into lag
terms: the part carried by token s - j (`MixerAttention.lag_terms`; for KV shift, lag j is c_j K_{s-j},
α1 at j = 0, α2 at j = 1; for a mixer on the block input, K = W_K·x̃ splits by the lags of x̃).
Rotary is linear, so the logit q_t·K_s splits into the same lag terms, and the head's output into
pattern @ V_lag @ W_O. `classify_heads` uses these to tell the one-layer mixer mechanism (Xu et al.,
Theorem 2 for KV shift) from two-layer K-composition; vanilla heads have the single lag 0.
"""

from __future__ import annotations

from typing import Optional, Sequence

import pandas as pd
import torch
from transformer_lens import ActivationCache, TransformerBridge
from transformer_lens.utilities import get_act_name

from kvshift_lens.analysis.head_detectors import (
    attention_patterns, direct_logits, head_scores, induction_score, induction_targets, repeat_period, repeated_tokens, scored_mask, target_attention,
)
from kvshift_lens.models.transformer import attention_layers, model_config

INDUCTION_THRESHOLD = 0.3  # induction_score of an induction head (uniform attention: ~1.4/T)
PATH_THRESHOLD = 0.5  # prev_key and own_value fractions of a mixer-mediated head
PREVIOUS_THRESHOLD = 0.3  # previous_token_score of a K-composition source head
COMPOSITION_DROP = 0.5  # share of the induction score lost when the source is cut from the keys


def attention_input(cache: ActivationCache, layer: int) -> torch.Tensor:
    """The normalised block input layer `layer`'s attention (and its mixers) read: [batch, pos, d_model]."""
    return cache[f"blocks.{layer}.attn.hook_in"]


def logit_terms(model: TransformerBridge, cache: ActivationCache, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention logits split by key lag: terms [lag, batch, head, q, k] (lag j: q_t·K_s^(j) / scale, K_s^(j)
    the part of key s carried by token s - j, rotary applied to each term) and the key-free bias
    [head or 1, q, k] (causal -inf, ALiBi).

    terms.sum(0) + bias equals the layer's `hook_attn_scores`.
    """
    attn = attention_layers(model)[layer]
    x = attention_input(cache, layer)
    q = attn.lag_terms(x, "q").sum(0)  # [batch, pos, head, d_head]: the mixed queries, before rotary
    k = attn.lag_terms(x, "k")  # [lag, batch, pos, kv_head, d_head]
    k = k.repeat_interleave(q.shape[2] // k.shape[3], dim=3)  # [lag, batch, pos, head, d_head]
    batch, seq = q.shape[:2]
    positions = torch.arange(seq, device=q.device).expand(batch, seq)
    q = q.transpose(1, 2)  # [batch, head, pos, d_head]
    terms = []
    for k_j in k:
        k_j, q_j = k_j.transpose(1, 2), q  # [batch, head, pos, d_head]
        if attn.rotary is not None:
            q_j, k_j = attn.rotary.apply_rope(q, k_j, position_ids=positions)
        terms.append(q_j @ k_j.transpose(-2, -1) / attn.scale)
    return torch.stack(terms), attn.score_bias(seq, q.device)


def output_terms(model: TransformerBridge, cache: ActivationCache, layer: int) -> torch.Tensor:
    """Per-head outputs split by value lag: [lag, batch, pos, head, d_model], lag j = pattern @ V^(j) @ W_O
    (V^(j) the part of each value carried by the token j positions before it).

    Summed over lags and heads, plus b_O, this equals the layer's `hook_attn_out`.
    """
    attn = attention_layers(model)[layer]
    pattern = cache[get_act_name("pattern", layer)]  # [batch, head, q, k]
    v = attn.lag_terms(attention_input(cache, layer), "v")  # [lag, batch, pos, kv_head, d_head]
    v = v.repeat_interleave(pattern.shape[1] // v.shape[3], dim=3)  # [lag, batch, pos, head, d_head]
    terms = []
    for v_j in v:
        z = torch.einsum("bhqk,bkhd->bqhd", pattern, v_j)
        terms.append(torch.einsum("bqhd,hdm->bqhm", z, model.W_O[layer]))
    return torch.stack(terms)


def _fraction(part: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """part / total where the total is positive, NaN elsewhere (the head does not favour the target)."""
    return torch.where(total > 0, part / total, torch.full_like(total, float("nan")))


def scored_induction_targets(tokens: torch.Tensor) -> torch.Tensor:
    """The induction target of every scored, unambiguous query of a `[BOS] r r` batch: bool [batch, q, k]."""
    return induction_targets(tokens) & scored_mask(tokens, repeat_period(tokens))[:, :, None]


@torch.no_grad()
def path_fractions(model: TransformerBridge, tokens: torch.Tensor, targets: Optional[torch.Tensor] = None) -> pd.DataFrame:
    """Per head, at the queries with one target key s in `targets` (bool [batch, q, k]; default: the scored
    `induction_rows` of a `[BOS] r r` batch, s = t - L + 1), whose answer is the next token: the share of the
    target key's logit margin carried by key lags >= 1, i.e. earlier tokens mixed into the key
    (prev_key_fraction; α2's share for KV shift), and the share of the direct answer logit carried by the
    attended tokens' own values, value lag 0 (own_value_fraction; β1's share for KV shift), with the totals
    they divide. A task's own targets come from `Task.attention_targets`.
    """
    tokens = tokens.to(model.W_E.device)
    seq = tokens.shape[1]
    targets = (scored_induction_targets(tokens) if targets is None else targets).to(tokens.device)
    rows = targets.sum(-1) == 1
    rows[:, -1] = False  # the last position has no next token to score
    b_idx, t_idx = rows.nonzero(as_tuple=True)  # R rows
    s_idx = targets[b_idx, t_idx].long().argmax(-1)  # the target key of each row
    answer = tokens[b_idx, t_idx + 1]  # [R]
    _, cache = model.run_with_cache(tokens)
    keys = torch.arange(seq, device=tokens.device)
    others = (keys[None] <= t_idx[:, None]) & (keys[None] != s_idx[:, None])  # [R, k] causal non-targets
    scale = cache["ln_final.hook_scale"][b_idx, t_idx] if "ln_final.hook_scale" in cache.keys() else None  # [R, 1]
    rows = []
    for layer in range(model.cfg.n_layers):
        terms, bias = logit_terms(model, cache, layer)  # [lag, batch, head, q, k], [head or 1, q, k]
        parts = torch.cat([terms, bias.expand_as(terms[0])[None]])  # [lag+1, batch, head, q, k]
        sel = parts.permute(1, 3, 0, 2, 4)[b_idx, t_idx]  # [R, lag+1, head, k]
        target = sel.gather(-1, s_idx[:, None, None, None].expand(*sel.shape[:-1], 1))[..., 0]
        rest = torch.where(others[:, None, None], sel, 0.0).sum(-1) / others.sum(-1)[:, None, None]
        margin = (target - rest).sum(0)  # [lag+1, head] summed over rows
        outs = output_terms(model, cache, layer).permute(1, 2, 0, 3, 4)[b_idx, t_idx]  # [R, lag, head, d_model]
        logits = direct_logits(model, outs, scale[:, None, None] if scale is not None else None)
        dla = logits.gather(-1, answer[:, None, None, None].expand(*logits.shape[:-1], 1))[..., 0]
        dla = (dla - logits.mean(-1)).sum(0)  # [lag, head] mean-centred answer logit, summed over rows
        prev_key = _fraction(margin[1:-1].sum(0), margin.sum(0))
        own_value = _fraction(dla[0], dla.sum(0))
        for h in range(margin.shape[1]):
            rows.append((layer, h, prev_key[h].item(), own_value[h].item(),
                         margin[:, h].sum().item() / len(b_idx), dla[:, h].sum().item() / len(b_idx)))
    return pd.DataFrame(rows, columns=["layer", "head", "prev_key_fraction", "own_value_fraction",
                                       "target_logit_margin", "answer_logit"])


@torch.no_grad()
def target_heads(
    model: TransformerBridge,
    tokens: torch.Tensor,
    targets: torch.Tensor,
    *,
    attention_threshold: float = INDUCTION_THRESHOLD,
    path_threshold: float = PATH_THRESHOLD,
) -> pd.DataFrame:
    """One row per head on a task's own batch, `targets` from `Task.attention_targets` (bool [batch, q, k]):
    `target_attention` (mean attention on the target key over the target rows: `induction_score`'s statistic
    on the task's rows), `path_fractions` at those rows, and `mechanism`: **mixer-mediated** when the target
    is attended (>= attention_threshold) and prev_key_fraction and own_value_fraction reach path_threshold
    (`classify_heads`' rule: matched through the earlier token mixed into the key, answered from the token's
    own value), **direct** when it is attended with prev_key_fraction < path_threshold (matched on the key's
    own token, e.g. stacked MQAR's pair tokens), else **none**.
    """
    tokens, targets = tokens.to(model.W_E.device), targets.to(model.W_E.device)
    attention = target_attention(attention_patterns(model, tokens), targets)  # [layer, head]
    table = path_fractions(model, tokens, targets)
    table.insert(2, "target_attention", attention.flatten().tolist())
    attended = table["target_attention"] >= attention_threshold
    through_mixer = (table["prev_key_fraction"] >= path_threshold) & (table["own_value_fraction"] >= path_threshold)
    table.insert(2, "mechanism", "none")
    table.loc[attended & through_mixer, "mechanism"] = "mixer-mediated"
    table.loc[attended & (table["prev_key_fraction"] < path_threshold), "mechanism"] = "direct"
    return table


def composition_baseline(model: TransformerBridge, samples: int = 256, seed: int = 0) -> float:
    """Chance-level K-composition: mean TL composition score ||LR||/(||L||·||R||) of Gaussian
    L = W_V W_O and R = W_K W_Qᵀ with this model's head shapes."""
    cfg = model_config(model)
    g = torch.Generator().manual_seed(seed)
    w = lambda *shape: torch.randn(samples, *shape, generator=g)  # noqa: E731
    left = w(cfg.d_model, cfg.d_head) @ w(cfg.d_head, cfg.d_model)  # [samples, d_model, d_model]
    right = w(cfg.d_model, cfg.d_head) @ w(cfg.d_head, cfg.d_model)
    norm = torch.linalg.matrix_norm  # Frobenius
    return (norm(left @ right) / norm(left) / norm(right)).mean().item()


@torch.no_grad()
def key_path_drop(model: TransformerBridge, tokens: torch.Tensor, sources: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Relative drop of each head's induction_score when the summed output of the `sources` heads
    is replaced by its mean over batch and positions in the key input of one later layer at a
    time: [layer, head], NaN for layers not after every source. The causal test of K-composition."""
    tokens = tokens.to(model.W_E.device)
    first = max(layer for layer, _ in sources) + 1
    z_names = {layer: get_act_name("z", layer) for layer, _ in sources}
    names = list(z_names.values()) + [get_act_name("resid_pre", layer) for layer in range(first, model.cfg.n_layers)]
    _, cache = model.run_with_cache(tokens, names_filter=names)
    out = sum(cache[z_names[l]][:, :, h] @ model.W_O[l, h] for l, h in sources)  # [batch, pos, d_model]
    delta = out.mean((0, 1)) - out  # swaps the sources' output for its mean
    clean = induction_score(attention_patterns(model, tokens), tokens)  # [layer, head]
    drop = torch.full_like(clean, float("nan"))
    cfg = model_config(model)
    for layer in range(first, model.cfg.n_layers):
        attn = attention_layers(model)[layer]
        x = model.blocks[layer].ln1.original_component(cache[get_act_name("resid_pre", layer)] + delta)
        keys = attn.lag_terms(x, "k").sum(0)  # [batch, pos, kv_head, d_head]: final keys of the ablated input
        final = f"blocks.{layer}.attn.{cfg.mixer.hook_name('k')}" if "k" in attn.mixer_names else get_act_name("k", layer)
        with model.hooks(fwd_hooks=[(final, lambda k, hook, keys=keys: keys)]):
            ablated = induction_score(attention_patterns(model, tokens)[:, layer], tokens)
        drop[layer] = 1 - ablated / clean[layer]
    return drop


def _composition_evidence(
    model: TransformerBridge, tokens: torch.Tensor, induction: torch.Tensor, previous: torch.Tensor,
) -> dict[str, list]:
    """Columns for `classify_heads` from bool [layer, head] grids of induction and previous-token heads:
    k_path_drop (all earlier heads cut from the keys), composition_source (the previous-token head
    whose cut costs most), its source_drop and TL K-composition / chance. NaN or "" off induction heads.
    """
    n_layers, n_heads = induction.shape
    nan = torch.full(induction.shape, float("nan"))
    joint, best, source = nan.clone(), nan.clone(), torch.full(induction.shape, -1)
    for layer in range(1, n_layers):
        earlier = [(l, h) for l in range(layer) for h in range(n_heads)]
        joint[layer] = key_path_drop(model, tokens, earlier)[layer].cpu()
    for flat in previous[:-1].flatten().nonzero().flatten().tolist():
        drop = key_path_drop(model, tokens, [divmod(flat, n_heads)]).cpu()  # NaN up to the source's layer
        source[drop > best.nan_to_num(float("-inf"))] = flat
        best = torch.fmax(best, drop)
    source[~induction] = -1  # relative drops of near-zero scores are noise
    k_comp = model.all_composition_scores("K").scores.flatten(0, 1).cpu() / composition_baseline(model)
    ratio, found = nan.clone(), (source >= 0).nonzero()  # found: [n, 2] (layer, head)
    ratio[found[:, 0], found[:, 1]] = k_comp[source[found[:, 0], found[:, 1]], found[:, 0], found[:, 1]]
    return {
        "k_path_drop": joint.where(induction, float("nan")).flatten().tolist(),
        "composition_source": [f"L{i // n_heads}H{i % n_heads}" if i >= 0 else "" for i in source.flatten().tolist()],
        "source_drop": best.where(source >= 0, float("nan")).flatten().tolist(),
        "k_composition_ratio": ratio.flatten().tolist(),
    }


@torch.no_grad()
def classify_heads(
    model: TransformerBridge,
    tokens: Optional[torch.Tensor] = None,
    *,
    seq_len: Optional[int] = None,
    batch_size: int = 32,
    seed: int = 0,
    induction_threshold: float = INDUCTION_THRESHOLD,
    path_threshold: float = PATH_THRESHOLD,
    previous_threshold: float = PREVIOUS_THRESHOLD,
    composition_drop: float = COMPOSITION_DROP,
) -> pd.DataFrame:
    """One row per head: scores, path fractions, K-composition evidence and `mechanism`.

    Induction heads (induction_score >= threshold) are "mixer-mediated" when prev_key_fraction and
    own_value_fraction both reach path_threshold (the one-layer mechanism: the key carries the previous
    token through the mixer, the value the token itself), else "composition-mediated" when an earlier
    previous-token head exists and cutting all earlier heads from their key input removes
    >= composition_drop of their induction score (`key_path_drop`); all other heads are "none".
    """
    cfg = model_config(model)
    if tokens is None:
        generator = torch.Generator().manual_seed(seed)
        tokens = repeated_tokens(batch_size, ((seq_len or cfg.n_ctx) - 1) // 2, cfg.d_vocab, generator)
    scores = head_scores(model, tokens, metrics=("induction_score", "previous_token_score"))
    table = scores.pivot_table(index=["layer", "head"], columns="metric", values="value").reset_index()
    table = table.merge(path_fractions(model, tokens), on=["layer", "head"])
    table.columns.name = None
    grid = lambda column: torch.tensor(table[column].to_numpy()).view(cfg.n_layers, cfg.n_heads)  # noqa: E731
    induction = grid("induction_score") >= induction_threshold
    table["is_induction"] = induction.flatten().tolist()
    previous = grid("previous_token_score") >= previous_threshold
    table = table.assign(**_composition_evidence(model, tokens, induction, previous))
    mixer_mediated = (table["prev_key_fraction"] >= path_threshold) & (table["own_value_fraction"] >= path_threshold)
    composed = (table["composition_source"] != "") & (table["k_path_drop"] >= composition_drop)
    table["mechanism"] = "none"
    table.loc[table["is_induction"] & composed, "mechanism"] = "composition-mediated"
    table.loc[table["is_induction"] & mixer_mediated, "mechanism"] = "mixer-mediated"
    return table[["layer", "head", "mechanism", "is_induction", "induction_score", "previous_token_score",
                  "prev_key_fraction", "own_value_fraction", "target_logit_margin", "answer_logit",
                  "k_path_drop", "composition_source", "source_drop", "k_composition_ratio"]]
