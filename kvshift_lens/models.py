"""Transformers with a pluggable local token mixer (vanilla, KV shift, Canon, ...) as TransformerLens 4
`TransformerBridge` models.

The mixer (`kvshift_lens.mixers`, chosen by `ModelConfig.mixer`) places causal lag mixers at slots of
each block: the attention input (`x`), one projection's input (`q_input`, `k_input`, `v_input`), the
per-head projections before rotary (`q`, `k`, `v`), the MLP input (`mlp_in`) or hidden layer
(`mlp_hidden`). KV shift (Eq. 4-5 of Xu et al., arXiv 2411.19574) is the mixer `kv_shift` on slots k, v:

    K̂_t = α1·K_t + α2·K_{t-1}        V̂_t = β1·V_t + β2·V_{t-1}

One attention class serves both paths: the bare module trains with `F.scaled_dot_product_attention`;
inside the bridge (`build_model`) the explicit softmax runs so `hook_pattern` edits reach the output.
"""

from __future__ import annotations

import copy
import math
from typing import Callable, Optional, Union

import numpy as np
import pandas as pd

import torch
import torch.nn as nn
import torch.nn.functional as F

import transformer_lens.model_bridge.sources.native  # noqa: F401  (attaches boot_native)
from transformer_lens import TransformerBridge
from transformer_lens.config import TransformerBridgeConfig
from transformer_lens.model_bridge.architecture_adapter import ArchitectureAdapter
from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent
from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module
from transformer_lens.model_bridge.sources.native.model import (
    NativeAttention, NativeBlock, NativeGatedMLP, NativeMLP, NativeModel,
)

from kvshift_lens.errors import ConfigError
from kvshift_lens.mixers import ATTENTION_SLOTS, BLOCK_SLOTS, MLP_SLOTS, SLOTS, LagMixer, shift
from kvshift_lens.mixers.kv_shift import KVShift
from kvshift_lens.model_config import ModelConfig
from kvshift_lens.tokenizer import synthetic_tokenizer

__all__ = ["ConfigError", "ModelConfig", "shift"]  # re-exported: their home moved out of this module


def _raw(module: Optional[nn.Module]) -> Optional[nn.Module]:
    """The wrapped module of a bridge component (the module itself outside a bridge)."""
    return module.original_component if isinstance(module, GeneralizedComponent) else module


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Standard ALiBi slopes 2^(-8h/n), h = 1..n (Press et al. 2022)."""
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


def build_module(cfg: ModelConfig) -> NativeModel:
    """The bare (hook-free, SDPA) model: what the trainer optimises and checkpoints store."""
    tl_cfg = cfg.tl_config()
    native_cfg = copy.deepcopy(tl_cfg)
    if cfg.positions == "alibi":  # NativeModel knows only learned/rotary; ALiBi lives in attention
        native_cfg.positional_embedding_type = "standard"  # not "rotary": its tables need an even d_head
    model = NativeModel(native_cfg)
    if cfg.positions == "alibi":
        model.pos = None  # no absolute positions either
    for layer in range(cfg.n_layers):
        mixers = cfg.mixer.build(cfg, layer)
        unknown = sorted(set(mixers) - set(SLOTS))
        if unknown:
            raise TypeError(f"mixer {cfg.mixer.name!r} built modules for unknown slot(s) {unknown}; slots: {list(SLOTS)}")
        model.layers[layer] = block = MixerBlock(native_cfg, tl_cfg, cfg, mixers, rotary=model.rotary)
        unplaced = sorted(set(mixers) - set(block.all_mixers()))
        if unplaced:
            raise ConfigError(f"model.mixer={cfg.mixer.name!r} has modules for MLP slot(s) {unplaced} but "
                              f"model.attn_only=true; set model.attn_only=false")
    model.cfg = tl_cfg
    object.__setattr__(model, "kv_cfg", cfg)
    init_weights(model, cfg)
    return model


@torch.no_grad()
def init_weights(model: NativeModel, cfg: ModelConfig) -> None:
    """Seeded init: every matrix N(0, std), std = 0.8/sqrt(d_model) (legacy HookedTransformer
    scale), biases 0, norm gains 1; output projections optionally scaled by 1/sqrt(2·n_layers)
    (TL4's native default). Mixer modules get their own generator (`LagMixer.reset_parameters`),
    so models with different mixers built from one seed share every other weight.
    """
    std = cfg.init_std if cfg.init_std is not None else 0.8 / math.sqrt(cfg.d_model)
    out_std = std / math.sqrt(2 * cfg.n_layers) if cfg.residual_scale else std
    mixers = [m for m in model.modules() if isinstance(m, LagMixer)]
    mixer_params = {id(p) for m in mixers for p in m.parameters()}
    g = torch.Generator().manual_seed(cfg.seed)
    for name, p in model.named_parameters():
        if id(p) in mixer_params:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "bias":
            p.zero_()
        elif p.dim() == 1:  # norm gains
            p.fill_(1.0)
        else:
            is_out = name.endswith(("attn.o.weight", "mlp.fc_out.weight", "mlp.out.weight"))
            p.copy_(torch.randn(p.shape, generator=g) * (out_std if is_out else std))
    g = torch.Generator().manual_seed(cfg.seed + 1_000_003)
    for module in mixers:
        module.reset_parameters(g)


def no_weight_decay_parameters(model: nn.Module) -> set[int]:
    """ids of the parameters every mixer module excludes from weight decay."""
    return {id(p) for m in model.modules() if isinstance(m, LagMixer) for p in m.no_weight_decay()}


def _add_mixer_components(cfg: ModelConfig, block: MixerBlock) -> Callable[[ArchitectureAdapter], None]:
    """Adapter overlay: map every mixer module as a component with its hook alias, and the
    ALiBi-free positional layout. Names come from `block` (all blocks carry the same slots)."""

    def hook(adapter: ArchitectureAdapter) -> None:
        mapping = adapter.component_mapping
        if cfg.positions == "alibi":
            mapping.pop("pos_embed", None)
        blocks = mapping["blocks"]
        parts = {"attn": (blocks.submodules["attn"], block.attn.mixer_names), "": (blocks, block.mixer_names)}
        if not cfg.attn_only:
            parts["mlp"] = (blocks.submodules["mlp"], block.mlp.mixer_names)
        blocks.hook_aliases = dict(blocks.hook_aliases)
        for path, (component, names) in parts.items():
            component.hook_aliases = dict(component.hook_aliases)
            for slot, name in names.items():
                hook_name = cfg.mixer.hook_name(slot)
                component.submodules[name] = GeneralizedComponent(name=name)
                component.hook_aliases[hook_name] = f"{name}.hook_out"
                blocks.hook_aliases[hook_name] = f"{path}.{name}.hook_out" if path else f"{name}.hook_out"

    return hook


def to_bridge(module: NativeModel) -> TransformerBridge:
    """Wrap a bare model from `build_module` in a TransformerBridge (in place: deep-copy first
    to keep training the bare module), with its attached tokenizer or one over its synthetic vocabulary."""
    cfg: ModelConfig = module.kv_cfg
    tokenizer = getattr(module, "kv_tokenizer", None) or synthetic_tokenizer(cfg.d_vocab)
    bridge = build_bridge_from_module(
        module,
        architecture="TransformerLensNative",
        tl_config=cfg.tl_config(),
        tokenizer=tokenizer,
        model_name=f"kvshift_lens-{cfg.arch}-{cfg.n_layers}L",
        post_adapter_hook=_add_mixer_components(cfg, module.layers[0]),
    )
    object.__setattr__(bridge, "kv_cfg", cfg)
    return bridge.eval()  # analysis mode: TL's patching refuses training-mode models


def build_model(cfg: ModelConfig) -> TransformerBridge:
    """A seeded model with `cfg.mixer` as a TransformerLens `TransformerBridge`."""
    return to_bridge(build_module(cfg))


Model = Union[TransformerBridge, NativeModel]


def model_config(model: Model) -> ModelConfig:
    """The `ModelConfig` a bare module or bridge was built from."""
    cfg = getattr(model, "kv_cfg", None)
    if cfg is None:
        raise TypeError(f"{type(model).__name__} was not built by kvshift_lens.build_model/build_module")
    return cfg


def bare_module(model: Model) -> NativeModel:
    """The underlying `NativeModel` (the bridge keeps it as `original_model`)."""
    return model.original_model if isinstance(model, TransformerBridge) else model


def blocks(model: Model) -> list[MixerBlock]:
    """The bare `MixerBlock` of every layer, in layer order."""
    return [m for m in bare_module(model).modules() if isinstance(m, MixerBlock)]


def attention_layers(model: Model) -> list[MixerAttention]:
    """The `MixerAttention` module of every layer, in layer order."""
    return [m for m in bare_module(model).modules() if isinstance(m, MixerAttention)]


def bare_state_dict(model: Model) -> dict[str, torch.Tensor]:
    """All persistent tensors under bare-module names (the bridge's own `state_dict()` drops
    anything not named weight/bias on a mapped component)."""
    root = bare_module(model)
    sd = {}
    for key, value in nn.Module.state_dict(root).items():
        node, alias = root, False
        for part in key.split(".")[:-1]:
            # inside the bridge, a component's real module is `_original_component`; any other
            # child path is an alias (e.g. MLPBridge's `in`/`out` for the native `fc_in`/`fc_out`)
            if isinstance(node, GeneralizedComponent) and part != "_original_component":
                alias = True
                break
            node = getattr(node, part)
        if not alias:
            sd[key.replace("_original_component.", "")] = value
    sd.pop("head.bias", None)  # a fixed zero buffer UnembeddingBridge adds; not a weight of ours
    return sd


@torch.no_grad()
def constrain_(model: Model) -> None:
    """Project every mixer's parameters onto its constraint set (after optimizer steps)."""
    for m in bare_module(model).modules():
        if isinstance(m, LagMixer):
            m.project_()


MIXER_COEFFICIENT_COLUMNS = ["layer", "slot", "head", "channel", "lag", "value"]


def mixer_coefficients(model: Model) -> pd.DataFrame:
    """Every mixer's effective lag coefficients as the forward uses them (residual identity included):
    one row per (layer, slot, head, channel, lag). Slots q/k/v have a head; per-head coefficients have
    channel -1; slots on d_model or MLP features have head -1. Empty (same columns) without a mixer."""
    frames = []
    for layer, block in enumerate(blocks(model)):
        for slot, mixer in block.all_mixers().items():
            with torch.no_grad():
                c = mixer.lag_coefficients().detach().cpu().float().numpy()  # [lags, *feature]
            per_head = c.ndim == 3  # [lags, head, 1 or d_head] on q/k/v; [lags, channel] elsewhere
            c = c if per_head else c[:, None, :]
            lag, head, channel = np.meshgrid(*(np.arange(n) for n in c.shape), indexing="ij")
            frames.append(pd.DataFrame({
                "layer": layer, "slot": slot,
                "head": head.ravel() if per_head else -1,
                "channel": -1 if per_head and c.shape[2] == 1 else channel.ravel(),
                "lag": lag.ravel(), "value": c.ravel(),
            }))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=MIXER_COEFFICIENT_COLUMNS)


def shift_coefficients(model: Model) -> pd.DataFrame:
    """One row per (layer, KV head) of a model whose mixer is `KVShift` modules on K and/or V
    (kv_shift, smeared_key): alpha1..alpha{w+1}, beta1..beta{w+1} as the forward uses them.

    An unshifted K or V reports its identity coefficients (1, 0, ...); a model without KV-shift
    modules (vanilla, other mixers: see `mixer_coefficients`) gives an empty frame.
    """
    cfg = model_config(model)
    shifts = [{s: m for s, m in b.all_mixers().items() if isinstance(m, KVShift) and s in ("k", "v")} for b in blocks(model)]
    width = max((m.window + 1 for layer in shifts for m in layer.values()), default=2)
    cols = ["layer", "head"] + [f"{n}{j + 1}" for n in ("alpha", "beta") for j in range(width)]
    if not any(shifts):
        return pd.DataFrame(columns=cols)
    identity = torch.zeros(cfg.kv_heads, width)
    identity[:, 0] = 1.0
    rows = []
    for layer, found in enumerate(shifts):
        with torch.no_grad():
            ca, cb = (found[s].coefficients().cpu() if s in found else identity for s in "kv")
        for h in range(cfg.kv_heads):
            rows.append([layer, h, *ca[h].tolist(), *cb[h].tolist()])
    return pd.DataFrame(rows, columns=cols)


def __getattr__(name: str):
    """`save_model`, `load_model`, `read_checkpoint` live in `kvshift_lens.checkpoints`; importable from here too."""
    if name in ("save_model", "load_model", "read_checkpoint", "CHECKPOINT_FORMAT"):
        from kvshift_lens import checkpoints

        return getattr(checkpoints, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
