"""The attention, MLP and block modules of our transformers: TransformerLens 4's native modules with a
local token mixer's causal lag mixers at their slots.

The mixer (`kvshift_lens.models.mixers`, chosen by `ModelConfig.mixer`) places lag mixers at slots of each
block: the attention input (`x`), one projection's input (`q_input`, `k_input`, `v_input`), the per-head
projections before rotary (`q`, `k`, `v`), the MLP input (`mlp_in`) or hidden layer (`mlp_hidden`).
KV shift (Eq. 4-5 of Xu et al., arXiv 2411.19574) is the mixer `kv_shift` on slots k, v:

    K̂_t = α1·K_t + α2·K_{t-1}        V̂_t = β1·V_t + β2·V_{t-1}

One attention class serves both paths: the bare module trains with `F.scaled_dot_product_attention`;
inside the bridge the explicit softmax runs so `hook_pattern` edits reach the output.
"""

from __future__ import annotations

from typing import Callable, Optional

from transformer_lens.config import TransformerBridgeConfig
from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformer_lens.model_bridge.sources.native.model import NativeAttention, NativeBlock, NativeGatedMLP, NativeMLP

from kvshift_lens.models.mixers import ATTENTION_SLOTS, BLOCK_SLOTS, MLP_SLOTS, LagMixer
from kvshift_lens.models.config import ModelConfig


def _raw(module: Optional[nn.Module]) -> Optional[nn.Module]:
    """The wrapped module of a bridge component (the module itself outside a bridge)."""
    return module.original_component if isinstance(module, GeneralizedComponent) else module


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Standard ALiBi slopes 2^(-8h/n), h = 1..n (Press et al. 2022): -> [n_heads] float."""
    return torch.tensor([2.0 ** (-8.0 * (h + 1) / n_heads) for h in range(n_heads)])


class MixerSlots(nn.Module):
    """Mixin: registers a block part's lag mixers as `<slot>_<suffix>` attributes and applies them."""

    mixer_names: dict[str, str]  # slot -> attribute name

    def _add_mixers(self, cfg: ModelConfig, mixers: dict[str, LagMixer], slots: tuple[str, ...]) -> None:
        self.mixer_names = {}
        for slot in slots:
            if slot in mixers:
                name = cfg.mixer.module_name(slot)
                self.add_module(name, mixers[slot])
                self.mixer_names[slot] = name

    def mix(self, slot: str, x: torch.Tensor) -> torch.Tensor:
        """Apply the mixer at `slot` (through its bridge component, so its hooks fire), or pass x through."""
        name = self.mixer_names.get(slot)
        return x if name is None else getattr(self, name)(x)

    def mixers(self) -> dict[str, LagMixer]:
        """slot -> the bare mixer module of this part."""
        return {slot: _raw(getattr(self, name)) for slot, name in self.mixer_names.items()}


def _lag_compose(terms: torch.Tensor, f: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Lag terms [L, ...] of an input pushed through an affine lag map `f` (x -> [J, ...]): [L+J-1, ...].

    Input lag l and output lag j of `f` land in lag l + j; `f`'s constant part is counted once.
    """
    base = f(torch.zeros_like(terms[0]))  # [J, ...]: the affine offset, by lag
    out = terms.new_zeros(terms.shape[0] + base.shape[0] - 1, *base.shape[1:])
    for lag in range(terms.shape[0]):
        out[lag : lag + base.shape[0]] += f(terms[lag]) - base
    out[: base.shape[0]] += base
    return out


class MixerAttention(MixerSlots, NativeAttention):
    """`NativeAttention` with the mixer's attention slots (before rotary) and an optional ALiBi bias.

    SDPA when no `pattern_fn` is given (bare-module training), explicit softmax otherwise
    (inside the bridge, so `hook_pattern` edits the output). Returns (out, attention scores).
    """

    alibi: torch.Tensor

    def __init__(self, tl_cfg: TransformerBridgeConfig, cfg: ModelConfig, mixers: dict[str, LagMixer],
                 rotary: Optional[nn.Module]):
        super().__init__(tl_cfg, rotary=rotary)
        self._add_mixers(cfg, mixers, ATTENTION_SLOTS)
        slopes = alibi_slopes(cfg.n_heads) if cfg.positions == "alibi" else torch.zeros(0)
        self.register_buffer("alibi", slopes)  # [head] slopes m_h; bias -m_h·(t - s)

    def project(self, x: torch.Tensor, side: str) -> torch.Tensor:
        """Q, K or V of the normalised input x [batch, pos, d_model] before the post-projection mixer
        (what `hook_q` / `hook_k` / `hook_v` hold): [batch, pos, head, d_head]."""
        batch, seq, _ = x.shape
        heads = self.n_heads if side == "q" else self.n_kv_heads
        return getattr(self, side)(self.mix(f"{side}_input", x)).view(batch, seq, heads, self.d_head)

    def mixed_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values after every attention mixer, before rotary: [batch, pos, head, d_head]."""
        x = self.mix("x", x)
        return tuple(self.mix(side, self.project(x, side)) for side in "qkv")

    def lag_terms(self, x: torch.Tensor, side: str) -> torch.Tensor:
        """`mixed_qkv(x)` of one side split by the lag of the input token each part comes from:
        [lags, batch, pos, head, d_head], summing to it (projection biases in lag 0). No hooks fire."""
        mixers = self.mixers()
        terms = x[None]  # [1, batch, pos, d_model]
        for slot in ("x", f"{side}_input"):
            if slot in mixers:
                terms = _lag_compose(terms, mixers[slot].lag_terms)
        linear = _raw(getattr(self, side))
        heads = self.n_heads if side == "q" else self.n_kv_heads
        terms = _lag_compose(terms, lambda t: linear(t)[None]).unflatten(-1, (heads, self.d_head))
        return _lag_compose(terms, mixers[side].lag_terms) if side in mixers else terms

    def score_bias(self, seq: int, device: torch.device) -> torch.Tensor:
        """Additive score bias [head or 1, q, k]: causal -inf mask plus ALiBi distance penalty."""
        mask = self.causal_mask[:seq, :seq].to(device)
        bias = torch.zeros(seq, seq, device=device).masked_fill(mask, float("-inf"))[None]
        if self.alibi.numel():
            pos = torch.arange(seq, device=device)
            dist = (pos[:, None] - pos[None, :]).clamp(min=0).float()  # [q, k]
            bias = bias - self.alibi.to(device)[:, None, None] * dist
        return bias

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        pattern_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        **kwargs,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        batch, seq, _ = hidden_states.shape
        q, k, v = self.mixed_qkv(hidden_states)  # [b, pos, head or kv, d_head], e.g. K̂ = α1·K + α2·shift(K)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [b, head, pos, d_head]
        if self.rotary is not None:
            q, k = self.rotary.apply_rope(q, k, position_ids=position_ids)
        if self.kv_repeats > 1:
            k = k.repeat_interleave(self.kv_repeats, dim=1)
            v = v.repeat_interleave(self.kv_repeats, dim=1)

        if pattern_fn is None and attention_mask is None:
            if self.alibi.numel():
                z = F.scaled_dot_product_attention(q, k, v, attn_mask=self.score_bias(seq, q.device), scale=1 / self.scale)
            else:
                z = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1 / self.scale)
            scores = None
        else:
            scores = q @ k.transpose(-2, -1) / self.scale + self.score_bias(seq, q.device)  # [b, head, q, k]
            if attention_mask is not None:
                block = self._combine_attention_mask(torch.zeros_like(scores[0, 0], dtype=torch.bool), attention_mask, batch=batch)
                scores = scores.masked_fill(block, float("-inf"))
            pattern = torch.nan_to_num(F.softmax(scores, dim=-1))  # fully masked rows -> 0
            if pattern_fn is not None:
                pattern = pattern_fn(pattern)
            z = pattern @ v  # [b, head, pos, d_head]
        out = self.o(z.transpose(1, 2).reshape(batch, seq, -1))
        return out, scores


class MixerMLP(MixerSlots, NativeMLP):
    """`NativeMLP` with an optional mixer on its hidden pre-activation (slot mlp_hidden)."""

    def __init__(self, tl_cfg: TransformerBridgeConfig, cfg: ModelConfig, mixers: dict[str, LagMixer]):
        super().__init__(tl_cfg)
        self._add_mixers(cfg, mixers, MLP_SLOTS)

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        mid = self.act(self.mix("mlp_hidden", self.fc_in(hidden_states)))  # [b, pos, d_mlp]
        if self.ln is not None:
            mid = self.ln(mid)
        return self.fc_out(mid)


class MixerGatedMLP(MixerSlots, NativeGatedMLP):
    """`NativeGatedMLP` (SwiGLU) with an optional mixer on the concatenated gate and up projections."""

    def __init__(self, tl_cfg: TransformerBridgeConfig, cfg: ModelConfig, mixers: dict[str, LagMixer]):
        super().__init__(tl_cfg)
        self._add_mixers(cfg, mixers, MLP_SLOTS)

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        gate, up = self.gate(hidden_states), getattr(self, "in")(hidden_states)  # [b, pos, d_mlp] each
        if "mlp_hidden" in self.mixer_names:
            gate, up = self.mix("mlp_hidden", torch.cat([gate, up], dim=-1)).chunk(2, dim=-1)
        return self.out(self.act(gate) * up)


class MixerBlock(MixerSlots, NativeBlock):
    """`NativeBlock` whose parts carry the mixer's slots (attention, MLP input, MLP hidden)."""

    def __init__(self, native_cfg: TransformerBridgeConfig, tl_cfg: TransformerBridgeConfig, cfg: ModelConfig,
                 mixers: dict[str, LagMixer], rotary: Optional[nn.Module]):
        super().__init__(native_cfg, rotary=rotary)
        self.attn = MixerAttention(tl_cfg, cfg, mixers, rotary)
        if not cfg.attn_only:
            self.mlp = (MixerGatedMLP if cfg.mlp == "swiglu" else MixerMLP)(tl_cfg, cfg, mixers)
        self._add_mixers(cfg, mixers, BLOCK_SLOTS)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        **kwargs,
    ) -> tuple[torch.Tensor]:
        attn_out, _ = self.attn(self.ln1(hidden_states), attention_mask=attention_mask, position_ids=position_ids)
        hidden_states = hidden_states + attn_out
        if not self.cfg.attn_only:
            hidden_states = hidden_states + self.mlp(self.mix("mlp_in", self.ln2(hidden_states)))
        return (hidden_states,)

    def all_mixers(self) -> dict[str, LagMixer]:
        """slot -> bare mixer module, over the attention, the block and the MLP."""
        parts = [_raw(self.attn), self] + ([] if self.cfg.attn_only else [_raw(self.mlp)])
        return {slot: m for part in parts for slot, m in part.mixers().items()}
