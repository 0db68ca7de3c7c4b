"""Vanilla and KV-shift transformers as TransformerLens 4 `TransformerBridge` models.

The KV shift is Eq. 4-5 of Xu et al. (arXiv 2411.19574): per (KV) head, after the K/V
projections and before rotary,

    K̂_t = α1·K_t + α2·K_{t-1}        V̂_t = β1·V_t + β2·V_{t-1}        (K_{-1} = V_{-1} = 0)

generalised to a window w: X̂_t = Σ_{j=0..w} c_j·X_{t-j}. One attention class serves both
paths: the bare module trains with `F.scaled_dot_product_attention`; inside the bridge
(`build_model`) the explicit softmax runs so `hook_pattern` edits reach the output.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

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
from transformer_lens.model_bridge.sources.native.model import NativeAttention, NativeModel

from kvshift_lens.schema import ConfigError, build
from kvshift_lens.tokenizer import synthetic_tokenizer

ARCHS = ("vanilla", "kvshift")
SHIFTS = ("kv", "k", "v")
SHIFT_PARAMS = ("free", "gate", "clamp01")
NORMS = {"layernorm": "LN", "rmsnorm": "RMS", "none": None}
POSITIONS = ("learned", "rotary", "alibi")
MLPS = {"gelu": ("gelu", False), "swiglu": ("silu", True)}


@dataclass
class ModelConfig:
    """Every architectural knob of a kvshift_lens model (also the hydra `model` group schema)."""

    arch: str = "kvshift"  # "vanilla" | "kvshift"
    n_layers: int = 1  # transformer blocks
    d_model: int = 64  # residual stream width D
    n_heads: int = 4  # query heads per layer
    d_head: Optional[int] = None  # per-head width d; None -> d_model // n_heads
    n_kv_heads: Optional[int] = None  # KV heads (GQA); None -> n_heads
    d_vocab: int = 64  # vocabulary size
    n_ctx: int = 64  # longest sequence the model accepts
    attn_only: bool = True  # drop the MLPs
    mlp: str = "gelu"  # "gelu" | "swiglu" (ignored when attn_only)
    d_mlp: Optional[int] = None  # MLP hidden width; None -> 4 * d_model
    norm: str = "layernorm"  # "layernorm" | "rmsnorm" | "none"
    positions: str = "learned"  # "learned" absolute | "rotary" | "alibi"
    shift: str = "kv"  # which of K/V is shifted: "kv" | "k" (smeared key) | "v"
    shift_param: str = "free"  # α/β parameterisation: "free" | "gate" | "clamp01"
    shift_window: int = 1  # 1 = the paper (t, t-1); w mixes t .. t-w
    init_std: Optional[float] = None  # N(0, std) for all matrices; None -> 0.8 / sqrt(d_model)
    residual_scale: bool = False  # scale output projections by 1/sqrt(2·n_layers) (TL4 native default)
    seed: int = 0  # seeds every weight, shift coefficients included

    def __post_init__(self) -> None:
        if self.d_head is None and self.n_heads > 0:
            self.d_head = self.d_model // self.n_heads if self.d_model % self.n_heads == 0 else None
        self.validate()

    def validate(self) -> None:
        """Raise `ConfigError` naming the first field that cannot work and how to fix it."""
        choices = {
            "arch": ARCHS, "shift": SHIFTS, "shift_param": SHIFT_PARAMS,
            "norm": tuple(NORMS), "positions": POSITIONS, "mlp": tuple(MLPS),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"model.{name}={getattr(self, name)!r} is not supported; use one of {list(allowed)}"
                )
        for name in ("n_layers", "d_model", "n_heads", "d_vocab", "n_ctx", "shift_window"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name}={getattr(self, name)} must be >= 1")
        if self.d_head is None:
            raise ConfigError(
                f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}; "
                f"pick n_heads dividing d_model or set model.d_head explicitly"
            )
        if self.d_head < 1:
            raise ConfigError(f"model.d_head={self.d_head} must be >= 1")
        if self.positions == "rotary" and self.d_head % 2:
            raise ConfigError(f"model.d_head={self.d_head} must be even for positions=rotary")
        kv = self.n_kv_heads or self.n_heads
        if kv < 1 or self.n_heads % kv:
            raise ConfigError(
                f"model.n_kv_heads={self.n_kv_heads} must divide model.n_heads={self.n_heads}"
            )
        if self.init_std is not None and self.init_std <= 0:
            raise ConfigError(f"model.init_std={self.init_std} must be > 0 (or null for the default)")

    @property
    def kv_heads(self) -> int:
        """Number of KV heads (= n_heads without GQA); shift coefficients exist per KV head."""
        return self.n_kv_heads or self.n_heads

    @property
    def shifts_k(self) -> bool:
        return self.arch == "kvshift" and "k" in self.shift

    @property
    def shifts_v(self) -> bool:
        return self.arch == "kvshift" and "v" in self.shift

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Build from a plain mapping through the config schema (unknown or mistyped fields are named)."""
        return build(cls, d, "model")

    def tl_config(self) -> TransformerBridgeConfig:
        """The TransformerLens config the bridge and the native blocks are built from."""
        act_fn, gated = MLPS[self.mlp]
        return TransformerBridgeConfig(
            d_model=self.d_model,
            d_head=self.d_head,
            n_layers=self.n_layers,
            n_ctx=self.n_ctx,
            n_heads=self.n_heads,
            d_vocab=self.d_vocab,
            d_mlp=self.d_mlp or 4 * self.d_model,
            n_key_value_heads=self.n_kv_heads,
            attn_only=self.attn_only,
            act_fn=act_fn,
            gated_mlp=gated,
            normalization_type=NORMS[self.norm],
            positional_embedding_type="standard" if self.positions == "learned" else self.positions,
            architecture="TransformerLensNative",
            default_prepend_bos=True,  # string inputs (tokenizer tools) start with [BOS], like the tasks
            seed=self.seed,
        )


def shift(x: torch.Tensor, j: int = 1) -> torch.Tensor:
    """Move `x` [batch, pos, ...] j positions later along pos, filling the first j with zeros."""
    if j == 0:
        return x
    pad = [0, 0] * (x.dim() - 2) + [min(j, x.shape[1]), 0]
    return F.pad(x[:, : max(x.shape[1] - j, 0)], pad)


class KVShift(nn.Module):
    """Eq. 5 per head: X̂_t = Σ_j c_j·X_{t-j}; window 1 gives α1·X + α2·shift(X).

    `weight` holds the raw parameters ([heads, window+1]; [heads, window] logits for `gate`),
    named `weight` so `TransformerBridge.state_dict()` keeps it.
    """

    def __init__(self, n_heads: int, window: int, param: str):
        super().__init__()
        self.window, self.param = window, param
        width = window if param == "gate" else window + 1
        self.weight = nn.Parameter(torch.empty(n_heads, width))

    def coefficients(self) -> torch.Tensor:
        """Effective mixing coefficients c [heads, window+1]: c[:, 0] on X_t, c[:, j] on X_{t-j}."""
        if self.param == "gate":  # window 1: c0 = sigmoid(a), c1 = 1 - c0
            zero = self.weight.new_zeros(self.weight.shape[0], 1)
            return torch.softmax(torch.cat([self.weight, zero], dim=-1), dim=-1)
        if self.param == "clamp01":
            return self.weight.clamp(0.0, 1.0)
        return self.weight

    @torch.no_grad()
    def reset_coefficients(self, generator: torch.Generator) -> None:
        """Paper init: α1 ~ U(0,1), α2 = 1 - α1; wider windows draw c ~ Dirichlet(1, ..., 1)."""
        n = self.weight.shape[0]
        e = -torch.log1p(-torch.rand(n, self.window + 1, generator=generator))  # Exp(1) draws
        c = e / e.sum(dim=-1, keepdim=True)  # window 1: c0 ~ U(0, 1), c1 = 1 - c0
        if self.param == "gate":
            c = torch.log(c[:, :-1]) - torch.log(c[:, -1:])
        self.weight.copy_(c)

    @torch.no_grad()
    def project_(self) -> None:
        """Project raw parameters onto the constraint set after an optimizer step (clamp01)."""
        if self.param == "clamp01":
            self.weight.clamp_(0.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [batch, pos, head, d_head] -> shifted mix, same shape."""
        c = self.coefficients()  # [head, window+1]
        out = c[:, 0, None] * x
        for j in range(1, self.window + 1):
            out = out + c[:, j, None] * shift(x, j)
        return out


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Standard ALiBi slopes 2^(-8h/n), h = 1..n (Press et al. 2022)."""
    return torch.tensor([2.0 ** (-8.0 * (h + 1) / n_heads) for h in range(n_heads)])


class ShiftAttention(NativeAttention):
    """`NativeAttention` with optional KV shift (Eq. 5, before rotary) and ALiBi bias.

    SDPA when no `pattern_fn` is given (bare-module training), explicit softmax otherwise
    (inside the bridge, so `hook_pattern` edits the output). Returns (out, attention scores).
    """

    alibi: torch.Tensor

    def __init__(self, tl_cfg: TransformerBridgeConfig, cfg: ModelConfig, rotary: Optional[nn.Module]):
        super().__init__(tl_cfg, rotary=rotary)
        mk = lambda on: KVShift(cfg.kv_heads, cfg.shift_window, cfg.shift_param) if on else None  # noqa: E731
        self.k_shift = mk(cfg.shifts_k)
        self.v_shift = mk(cfg.shifts_v)
        slopes = alibi_slopes(cfg.n_heads) if cfg.positions == "alibi" else torch.zeros(0)
        self.register_buffer("alibi", slopes)  # [head] slopes m_h; bias -m_h·(t - s)

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
        q = self.q(hidden_states).view(batch, seq, self.n_heads, self.d_head)  # [b, pos, head, d_head]
        k = self.k(hidden_states).view(batch, seq, self.n_kv_heads, self.d_head)  # [b, pos, kv, d_head]
        v = self.v(hidden_states).view(batch, seq, self.n_kv_heads, self.d_head)
        if self.k_shift is not None:
            k = self.k_shift(k)  # K̂ = α1·K + α2·shift(K)
        if self.v_shift is not None:
            v = self.v_shift(v)  # V̂ = β1·V + β2·shift(V)
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


def build_module(cfg: ModelConfig) -> NativeModel:
    """The bare (hook-free, SDPA) model: what the trainer optimises and checkpoints store."""
    tl_cfg = cfg.tl_config()
    native_cfg = copy.deepcopy(tl_cfg)
    if cfg.positions == "alibi":  # NativeModel knows only learned/rotary; ALiBi lives in attention
        native_cfg.positional_embedding_type = "standard"  # not "rotary": its tables need an even d_head
    model = NativeModel(native_cfg)
    if cfg.positions == "alibi":
        model.pos = None  # no absolute positions either
    for block in model.layers:
        block.attn = ShiftAttention(tl_cfg, cfg, rotary=model.rotary)
    model.cfg = tl_cfg
    object.__setattr__(model, "kv_cfg", cfg)
    init_weights(model, cfg)
    return model


@torch.no_grad()
def init_weights(model: NativeModel, cfg: ModelConfig) -> None:
    """Seeded init: every matrix N(0, std), std = 0.8/sqrt(d_model) (legacy HookedTransformer
    scale), biases 0, norm gains 1; output projections optionally scaled by 1/sqrt(2·n_layers)
    (TL4's native default). α/β get their own generator, so vanilla and KV-shift models built
    from one seed share every other weight.
    """
    std = cfg.init_std if cfg.init_std is not None else 0.8 / math.sqrt(cfg.d_model)
    out_std = std / math.sqrt(2 * cfg.n_layers) if cfg.residual_scale else std
    g = torch.Generator().manual_seed(cfg.seed)
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if "_shift." in name:
            continue
        if leaf == "bias":
            p.zero_()
        elif p.dim() == 1:  # norm gains
            p.fill_(1.0)
        else:
            is_out = name.endswith(("attn.o.weight", "mlp.fc_out.weight", "mlp.out.weight"))
            p.copy_(torch.randn(p.shape, generator=g) * (out_std if is_out else std))
    g = torch.Generator().manual_seed(cfg.seed + 1_000_003)
    for module in model.modules():
        if isinstance(module, KVShift):
            module.reset_coefficients(g)


def _add_shift_components(cfg: ModelConfig) -> Callable[[ArchitectureAdapter], None]:
    """Adapter overlay: map the K/V shift modules and the ALiBi-free positional layout."""

    def hook(adapter: ArchitectureAdapter) -> None:
        mapping = adapter.component_mapping
        if cfg.positions == "alibi":
            mapping.pop("pos_embed", None)
        attn = mapping["blocks"].submodules["attn"]
        block = mapping["blocks"]
        block.hook_aliases = dict(block.hook_aliases)
        attn.hook_aliases = dict(attn.hook_aliases)
        for which, on in (("k", cfg.shifts_k), ("v", cfg.shifts_v)):
            if on:
                attn.submodules[f"{which}_shift"] = GeneralizedComponent(name=f"{which}_shift")
                attn.hook_aliases[f"hook_{which}_shifted"] = f"{which}_shift.hook_out"
                block.hook_aliases[f"hook_{which}_shifted"] = f"attn.{which}_shift.hook_out"

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
        post_adapter_hook=_add_shift_components(cfg),
    )
    object.__setattr__(bridge, "kv_cfg", cfg)
    return bridge.eval()  # analysis mode: TL's patching refuses training-mode models


def build_model(cfg: ModelConfig) -> TransformerBridge:
    """A seeded vanilla or KV-shift model as a TransformerLens `TransformerBridge`."""
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


def attention_layers(model: Model) -> list[ShiftAttention]:
    """The `ShiftAttention` module of every layer, in layer order."""
    return [m for m in bare_module(model).modules() if isinstance(m, ShiftAttention)]


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
    """Project every shift's raw parameters onto its constraint set (after optimizer steps)."""
    for m in bare_module(model).modules():
        if isinstance(m, KVShift):
            m.project_()


def shift_coefficients(model: Model) -> pd.DataFrame:
    """One row per (layer, KV head): alpha1..alpha{w+1}, beta1..beta{w+1} as the forward uses them.

    An unshifted K or V (shift="v" / "k") reports its identity coefficients (1, 0, ...);
    vanilla models give an empty frame with the same columns.
    """
    cfg = model_config(model)
    width = cfg.shift_window + 1
    cols = ["layer", "head"] + [f"{n}{j + 1}" for n in ("alpha", "beta") for j in range(width)]
    if cfg.arch == "vanilla":
        return pd.DataFrame(columns=cols)
    identity = torch.zeros(cfg.kv_heads, width)
    identity[:, 0] = 1.0
    rows = []
    for layer, attn in enumerate(attention_layers(model)):
        with torch.no_grad():
            ca = attn.k_shift.coefficients().cpu() if attn.k_shift is not None else identity
            cb = attn.v_shift.coefficients().cpu() if attn.v_shift is not None else identity
        for h in range(cfg.kv_heads):
            rows.append([layer, h, *ca[h].tolist(), *cb[h].tolist()])
    return pd.DataFrame(rows, columns=cols)


def __getattr__(name: str):
    """`save_model`, `load_model`, `read_checkpoint` live in `kvshift_lens.checkpoints`; importable from here too."""
    if name in ("save_model", "load_model", "read_checkpoint", "CHECKPOINT_FORMAT"):
        from kvshift_lens import checkpoints

        return getattr(checkpoints, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
