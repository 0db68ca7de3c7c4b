"""Tokenizer-free head detectors for kvshift_lens bridges (definitions in docs/detect.md).

Attention-pattern scores on repeated random tokens, the OV-circuit eigenvalue copying score, zero/mean ablation and
the in-context-learning score, all batched through `run_with_cache` / `run_with_hooks`, so
vanilla and KV-shift models are measured the same way.
"""

from __future__ import annotations

from typing import Optional, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from transformer_lens import TransformerBridge, head_detector
from transformer_lens.utilities import get_act_name

from kvshift_lens.data.icl import icl_from_token_losses, token_losses
from kvshift_lens.models.transformer import attention_layers, model_config

BOS = 0
PREFIX_REPEATS = 4  # Olsson et al. measure prefix matching on r repeated several times
METRICS = (
    "induction_score", "prefix_matching", "previous_token_score", "duplicate_token_score",
    "copying_score", "copying_boost_share", "ablation_drop", "icl_score",
)
PATTERN_METRICS = ("induction_score", "previous_token_score", "duplicate_token_score")
COLUMNS = ["layer", "head", "metric", "value"]


def repeated_tokens(
    batch_size: int, period: int, d_vocab: int, generator: torch.Generator,
    *, n_repeats: int = 2, bos: int = BOS, distinct: Optional[bool] = None,
) -> torch.Tensor:
    """`[BOS] r r ...` (n_repeats copies) with r over the ids != bos: [batch, 1 + n_repeats·period].

    `distinct=True` draws r without replacement (no token twice in r), as at the 50k-token vocabularies
    where TransformerLens / ARENA scores come from, so the plain diagonal induction score needs no row
    filtering; False draws i.i.d.; None (default) is distinct whenever period <= d_vocab - 1.
    """
    if distinct is None:
        distinct = period <= d_vocab - 1
    if distinct and period > d_vocab - 1:
        raise ValueError(f"distinct=True needs period <= d_vocab - 1 = {d_vocab - 1} tokens besides BOS, got "
                         f"period {period}; shorten the sequence or pass distinct=False")
    if distinct:
        r = torch.rand(batch_size, d_vocab - 1, generator=generator).argsort(dim=1)[:, :period]  # [batch, period]
    else:
        r = torch.randint(0, d_vocab - 1, (batch_size, period), generator=generator)
    r = r + (r >= bos).long()  # skip the BOS id
    return torch.cat([torch.full((batch_size, 1), bos), r.repeat(1, n_repeats)], dim=1)


def repeat_period(tokens: torch.Tensor) -> int:
    """Period L of a `[BOS] r r` batch, `tokens` [batch, 1 + 2L] -> int; ValueError for any other batch."""
    seq = tokens.shape[1]
    period = (seq - 1) // 2
    if seq < 3 or seq % 2 == 0 or not torch.equal(tokens[:, 1 : 1 + period], tokens[:, 1 + period :]):
        raise ValueError(
            f"expected a [BOS] r r batch of odd length 1 + 2L (two equal copies of r), got shape "
            f"{tuple(tokens.shape)}; build one with kvshift_lens.analysis.head_detectors.repeated_tokens"
        )
    return period


def scored_mask(tokens: torch.Tensor, period: int) -> torch.Tensor:
    """True where the NEXT token is predictable by induction (t in [L+1, T-2]): `tokens` [batch, T] ->
    [batch, T] bool."""
    pos = torch.arange(tokens.shape[1], device=tokens.device)
    return ((pos > period) & (pos < tokens.shape[1] - 1)).expand_as(tokens)


# --- detection targets: bool [batch or 1, q, k], True where a query should attend -------------

def previous_targets(seq_len: int) -> torch.Tensor:
    """Key t-1 for every query t >= 1: -> [1, seq_len, seq_len] bool (query, key)."""
    return torch.ones(seq_len - 1, dtype=torch.bool).diag(-1)[None]


def induction_rows(tokens: torch.Tensor) -> torch.Tensor:
    """Second-copy queries of a `[BOS] r r` batch whose token occurs once in r: `tokens` [batch, T] ->
    [batch, T] bool."""
    period = repeat_period(tokens)
    r = tokens[:, 1 : 1 + period]
    unique = (r[:, :, None] == r[:, None, :]).sum(-1) == 1  # [batch, L]; False for accidental repeats
    return torch.cat([torch.zeros_like(tokens[:, : period + 1], dtype=torch.bool), unique], dim=1)


def induction_targets(tokens: torch.Tensor) -> torch.Tensor:
    """Key t-L+1 (the token after the earlier occurrence) for every `induction_rows` query t:
    `tokens` [batch, T] -> [batch, T, T] bool (query, key)."""
    seq, period = tokens.shape[1], repeat_period(tokens)
    diagonal = torch.ones(seq - period + 1, dtype=torch.bool, device=tokens.device).diag(1 - period)
    return diagonal[None] & induction_rows(tokens)[:, :, None]


def duplicate_targets(tokens: torch.Tensor) -> torch.Tensor:
    """Keys s < t holding the same token as the query: `tokens` [batch, T] -> [batch, T, T] bool (query, key)."""
    same = tokens[:, :, None] == tokens[:, None, :]  # [batch, q, k]
    return same.tril(-1)


def prefix_targets(tokens: torch.Tensor) -> torch.Tensor:
    """Keys s <= t whose previous token equals the query's token (the tokens that followed it):
    `tokens` [batch, T] -> [batch, T, T] bool (query, key)."""
    before = F.pad(tokens[:, :-1], (1, 0), value=-1)  # before[s] = tokens[s-1]; none at s = 0
    return (tokens[:, :, None] == before[:, None, :]).tril()


def target_attention(pattern: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Attention mass on `targets`, averaged over the (batch, query) rows with at least one target.

    pattern [batch, *heads, q, k]; targets bool [batch or 1, q, k] -> [*heads] (NaN if no row has one).
    """
    extra = [1] * (pattern.dim() - 3)
    t = targets.to(pattern.device).view(targets.shape[0], *extra, *targets.shape[1:])
    mass = (pattern * t).sum(-1)  # [batch, *heads, q]; zero on rows without a target
    rows = targets.any(-1).expand(pattern.shape[0], -1).sum()
    return mass.sum((0, -1)) / rows


def induction_score(pattern: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean attention of second-copy queries of `[BOS] r r` to the token after their earlier
    occurrence (diagonal at offset 1-L), over queries whose token is unique in r: [*heads]."""
    return target_attention(pattern, induction_targets(tokens))


def prefix_matching(pattern: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Olsson et al.: attention mass on every token that followed an earlier occurrence of the query's token:
    `pattern` [batch, *heads, T, T], `tokens` [batch, T] -> [*heads]."""
    return target_attention(pattern, prefix_targets(tokens))


def previous_token_score(pattern: torch.Tensor) -> torch.Tensor:
    """Mean attention from t to t-1 over queries t >= 1: [*heads]."""
    return target_attention(pattern, previous_targets(pattern.shape[-1]))


def duplicate_token_score(pattern: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Attention mass on earlier occurrences of the query's token, over queries that have one:
    `pattern` [batch, *heads, T, T], `tokens` [batch, T] -> [*heads]."""
    return target_attention(pattern, duplicate_targets(tokens))


def tl_detector_scores(pattern: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """TL's head_detector "mul" scores (batch mean, like `detect_head` on a list): name -> [*heads].

    Our score = TL score · T / (rows with a target); see docs/detect.md.
    """
    pats = {
        "induction_score": head_detector.get_induction_head_detection_pattern,
        "previous_token_score": head_detector.get_previous_token_head_detection_pattern,
        "duplicate_token_score": head_detector.get_duplicate_token_head_detection_pattern,
    }
    flat = pattern.flatten(1, -3).cpu()  # [batch, heads, q, k]
    out = {}
    for name, make in pats.items():
        scores = torch.tensor([
            [head_detector.compute_head_attention_similarity_score(
                flat[b, i], make(tokens[b].cpu()), exclude_bos=False,
                exclude_current_token=False, error_measure="mul") for i in range(flat.shape[1])]
            for b in range(flat.shape[0])
        ])  # [batch, heads]
        out[name] = scores.mean(0).view(pattern.shape[1:-2])
    return out


# --- model-level helpers --------------------------------------------------------------------

def _device(model: TransformerBridge) -> torch.device:
    """Where the model's weights (and so its inputs) live."""
    return model.W_E.device


@torch.no_grad()
def attention_patterns(model: TransformerBridge, tokens: torch.Tensor) -> torch.Tensor:
    """Every layer's `hook_pattern` in one cached run: [batch, layer, head, q, k]."""
    names = [get_act_name("pattern", layer) for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(tokens.to(_device(model)), names_filter=names)
    return torch.stack([cache[n] for n in names], dim=1)


def direct_logits(model: TransformerBridge, resid: torch.Tensor, scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Logits a residual component [..., d_model] adds through the final norm and unembed: [..., vocab].

    The norm is linearised as TL's `apply_ln_to_stack` does (centre for LayerNorm, divide by the
    cached `scale` when given), then its gain is applied; the norm bias is not the component's.
    """
    if model_config(model).norm == "layernorm":
        resid = resid - resid.mean(-1, keepdim=True)
    if scale is not None:
        resid = resid / scale
    gain = getattr(model.ln_final, "weight", None)
    return (resid * gain if gain is not None else resid) @ model.W_U


def _direct_ov(model: TransformerBridge, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each head's direct OV circuit of `layer` as two factors whose product is the [vocab, vocab] map from a
    source token to the logits it writes: (left [head, vocab, d_head], right [head, d_head, vocab]).

    Token a -> ln1(W_E[a]) − ln1(0) (LayerNorm folded exactly per token; the norm bias is not the token's)
    -> the value path's lag-0 part (the attended token's own value: β1·W_V for KV shift, every mixer's lag-0
    coefficients in general) -> W_O[h] -> final norm linearised as TL's `apply_ln_to_stack` (centre, gain) -> W_U.
    """
    cfg = model_config(model)
    zero = torch.zeros(1, 1, cfg.d_model, device=_device(model))
    attn = attention_layers(model)[layer]
    ln1 = model.blocks[layer].ln1.original_component  # the bare norm: calling the bridge one has side effects
    own = attn.lag_terms(ln1(model.W_E)[:, None], "v")[0] - attn.lag_terms(ln1(zero), "v")[0]  # [vocab, 1, kv, d_head]
    own = own[:, 0].repeat_interleave(cfg.n_heads // cfg.kv_heads, dim=1)  # [vocab, head, d_head]
    left = own.transpose(0, 1)  # [head, vocab, d_head]
    right = direct_logits(model, model.W_O[layer])  # [head, d_head, vocab]
    return left, right


@torch.no_grad()
def copying_score(model: TransformerBridge) -> torch.Tensor:
    """Elhage et al. 2021 / Olsson et al. 2022 copying score: Σλ / Σ|λ| over the eigenvalues λ of each head's
    direct OV circuit W_U·W_OV·W_E (`_direct_ov`): [layer, head] in [−1, 1].

    1: the head raises the logit of the token it attends to; 0: random; −1: suppresses it. The nonzero
    eigenvalues of the rank-d_head [vocab, vocab] circuit are those of the [d_head, d_head] product of its
    factors (as TL's `FactoredMatrix.eigenvalues`), so the cost does not grow with the vocabulary.
    """
    scores = []
    for layer in range(model_config(model).n_layers):
        left, right = _direct_ov(model, layer)
        eig = torch.linalg.eigvals((right @ left).double())  # [head, d_head] complex
        scores.append(eig.sum(-1).real / eig.abs().sum(-1).clamp_min(torch.finfo(torch.float64).tiny))
    return torch.stack(scores).float()


@torch.no_grad()
def copying_boost_share(model: TransformerBridge) -> torch.Tensor:
    """Our own earlier variant (not the literature's): per source token a, the share r_a of the positive,
    mean-subtracted logit boosts of the head's direct OV row that lands on a itself; score = mean of 2·r_a − 1:
    -> [layer, head].

    Range [−1, 1], but a head of rank d_head over V tokens cannot reach 1: its rows boost many tokens,
    so an ideal rank-16 copier over 64 tokens scores about −0.70. Compare heads with each other only.
    """
    scores = []
    for layer in range(model_config(model).n_layers):
        left, right = _direct_ov(model, layer)
        logits = left @ right  # [head, source token, vocab]
        boost = (logits - logits.mean(-1, keepdim=True)).relu()
        r = boost.diagonal(dim1=-2, dim2=-1) / boost.sum(-1).clamp_min(torch.finfo(boost.dtype).tiny)
        scores.append(2 * r.mean(-1) - 1)
    return torch.stack(scores)


def _loss_acc(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token loss and accuracy over positions where `mask` is True: logits [..., batch, T, vocab] -> [...]."""
    logp = logits[..., :-1, :].log_softmax(-1)
    target = tokens[:, 1:].expand(*logp.shape[:-1])
    nll = -logp.gather(-1, target[..., None])[..., 0]  # [..., batch, T-1]
    hit = (logp.argmax(-1) == target).float()
    m = mask[:, :-1].float()
    return (nll * m).sum((-2, -1)) / m.sum(), (hit * m).sum((-2, -1)) / m.sum()


@torch.no_grad()
def ablation_drop(model: TransformerBridge, tokens: torch.Tensor, mask: torch.Tensor) -> pd.DataFrame:
    """Loss increase and accuracy drop at `mask`ed positions when one head's `hook_z` is zeroed or
    replaced by its batch mean (per position); all heads of a layer in one batched run.

    `tokens` [batch, T] int64, `mask` [batch, T] bool (True at t: token t + 1 scored) -> tidy rows (COLUMNS).
    """
    tokens, mask = tokens.to(_device(model)), mask.to(_device(model))
    n_heads, batch = model.cfg.n_heads, tokens.shape[0]
    names = [get_act_name("z", layer) for layer in range(model.cfg.n_layers)]
    logits, cache = model.run_with_cache(tokens, names_filter=names)
    base_loss, base_acc = _loss_acc(logits, tokens, mask)
    stacked = tokens.repeat(n_heads, 1)  # copy h of the batch ablates head h
    rows = []
    for layer, name in enumerate(names):
        mean_z = cache[name].mean(0)  # [pos, head, d_head]
        for kind in ("zero", "mean"):
            def ablate(z: torch.Tensor, hook, kind: str = kind, mean_z: torch.Tensor = mean_z) -> torch.Tensor:
                z = z.reshape(n_heads, batch, *z.shape[1:]).clone()  # [copy, batch, pos, head, d_head]
                for h in range(n_heads):
                    z[h, :, :, h] = 0.0 if kind == "zero" else mean_z[:, h]
                return z.reshape(n_heads * batch, *z.shape[2:])

            out = model.run_with_hooks(stacked, fwd_hooks=[(name, ablate)])
            loss, acc = _loss_acc(out.view(n_heads, batch, *out.shape[1:]), tokens, mask)  # [head]
            for h in range(n_heads):
                rows += [
                    (layer, h, f"{kind}_ablation_loss_increase", (loss[h] - base_loss).item()),
                    (layer, h, f"{kind}_ablation_acc_drop", (base_acc - acc[h]).item()),
                ]
    return pd.DataFrame(rows, columns=COLUMNS)


@torch.no_grad()
def ablate_heads(model: TransformerBridge, tokens: torch.Tensor, mask: torch.Tensor,
                 heads: Sequence[tuple[int, int]], kind: str = "zero") -> tuple[float, float]:
    """Loss and accuracy at `mask`ed positions with every (layer, head) in `heads` ablated together
    (`hook_z` zeroed, or replaced by its batch mean per position): does the set carry the task?"""
    if kind not in ("zero", "mean"):
        raise ValueError(f"kind={kind!r} must be 'zero' or 'mean'")
    tokens, mask = tokens.to(_device(model)), mask.to(_device(model))
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(int(layer), []).append(int(head))
    names = {layer: get_act_name("z", layer) for layer in by_layer}
    means = {}
    if kind == "mean":
        _, cache = model.run_with_cache(tokens, names_filter=list(names.values()))
        means = {layer: cache[name].mean(0) for layer, name in names.items()}  # [pos, head, d_head]

    def hook_for(layer: int):
        def ablate(z: torch.Tensor, hook) -> torch.Tensor:
            z = z.clone()
            for h in by_layer[layer]:
                z[:, :, h] = 0.0 if kind == "zero" else means[layer][:, h]
            return z
        return ablate

    logits = model.run_with_hooks(tokens, fwd_hooks=[(names[layer], hook_for(layer)) for layer in by_layer])
    loss, acc = _loss_acc(logits, tokens, mask)
    return loss.item(), acc.item()


@torch.no_grad()
def icl_score(model: TransformerBridge, tokens: torch.Tensor) -> float:
    """Olsson et al. ICL score of `model` on `tokens` [batch, T] int64 -> float (`icl_from_token_losses`; < 0: ICL)."""
    tokens = tokens.to(_device(model))
    return icl_from_token_losses(token_losses(model(tokens), tokens))


def _tidy(metric: str, values: torch.Tensor) -> pd.DataFrame:
    """[layer, head] tensor -> tidy rows."""
    layers, heads = values.shape
    return pd.DataFrame({
        "layer": torch.arange(layers).repeat_interleave(heads).tolist(),
        "head": torch.arange(heads).repeat(layers).tolist(),
        "metric": metric,
        "value": values.detach().cpu().flatten().tolist(),
    })


def head_scores(
    model: TransformerBridge,
    tokens: Optional[torch.Tensor] = None,
    *,
    metrics: Sequence[str] = METRICS,
    seq_len: Optional[int] = None,
    batch_size: int = 32,
    seed: int = 0,
) -> pd.DataFrame:
    """Every requested metric as tidy rows (layer, head, metric, value); icl_score has layer = head = -1.

    `tokens` is a `[BOS] r r` batch; by default one of length seq_len (default n_ctx, rounded down
    to 1 + 2L) is sampled from `seed`. prefix_matching samples its own r^4 batch of the same length.
    """
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {list(METRICS)}")
    cfg = model_config(model)
    generator = torch.Generator().manual_seed(seed)
    seq_len = tokens.shape[1] if tokens is not None else (seq_len or cfg.n_ctx)
    if tokens is None:
        tokens = repeated_tokens(batch_size, (seq_len - 1) // 2, cfg.d_vocab, generator)
    period = repeat_period(tokens)
    frames = []
    if any(m in metrics for m in PATTERN_METRICS):
        pattern = attention_patterns(model, tokens)  # [batch, layer, head, q, k]
        scorers = {
            "induction_score": lambda: induction_score(pattern, tokens),
            "previous_token_score": lambda: previous_token_score(pattern),
            "duplicate_token_score": lambda: duplicate_token_score(pattern, tokens),
        }
        frames += [_tidy(m, scorers[m]()) for m in PATTERN_METRICS if m in metrics]
    if "prefix_matching" in metrics:
        prefix = repeated_tokens(tokens.shape[0], (seq_len - 1) // PREFIX_REPEATS, cfg.d_vocab,
                                 generator, n_repeats=PREFIX_REPEATS)
        frames.append(_tidy("prefix_matching", prefix_matching(attention_patterns(model, prefix), prefix)))
    if "copying_score" in metrics:
        frames.append(_tidy("copying_score", copying_score(model)))
    if "copying_boost_share" in metrics:
        frames.append(_tidy("copying_boost_share", copying_boost_share(model)))
    if "ablation_drop" in metrics:
        frames.append(ablation_drop(model, tokens, scored_mask(tokens, period)))
    if "icl_score" in metrics:
        frames.append(pd.DataFrame([(-1, -1, "icl_score", icl_score(model, tokens))], columns=COLUMNS))
    return pd.concat(frames, ignore_index=True)
