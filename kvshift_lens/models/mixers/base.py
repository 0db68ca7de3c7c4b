"""The mixer protocol: a local token mixer is a causal, affine map along the sequence,

    out_t = Σ_{j=0..J-1} c_j ⊙ x_{t-j}  (+ b)          (x_{<0} = 0)

placed at one or more *slots* of a block. A mixer is one file holding an options dataclass
(`MixerOptions` subclass, registered with `@register_mixer`) whose `build(cfg, layer)` returns the
`LagMixer` modules of one layer keyed by slot. Everything else reads this protocol: the model places
each module at its slot, init calls `reset_parameters`, weight decay skips `no_weight_decay()`, the
bridge maps each module as a component with hook `hook_name(slot)`, `mixer_coefficients` reads
`lag_coefficients()`, and the circuit analysis splits activations by lag with `lag_terms`.

This module knows no concrete mixer (they register themselves; `kvshift_lens.models.mixers` imports them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from kvshift_lens.core.registry import Registry


class ModelShape(Protocol):
    """The fields of a `ModelConfig` a mixer reads to size its modules. A protocol, so mixers sit below
    the model config that names them (the config imports the mixer registry, never the reverse)."""

    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    kv_heads: int
    attn_only: bool
    mlp: str
    mlp_width: int


# slot -> where the module sits and the shape it mixes (all before rotary, all causal)
SLOTS: dict[str, str] = {
    "x": "attention input (the block's normalised input), shared by Q, K, V: [batch, pos, d_model]",
    "q_input": "input of the Q projection only: [batch, pos, d_model]",
    "k_input": "input of the K projection only: [batch, pos, d_model]",
    "v_input": "input of the V projection only: [batch, pos, d_model]",
    "q": "queries after the projection, split into heads: [batch, pos, head, d_head]",
    "k": "keys after the projection, split into KV heads: [batch, pos, kv_head, d_head]",
    "v": "values after the projection, split into KV heads: [batch, pos, kv_head, d_head]",
    "mlp_in": "MLP input (the block's second normalised input): [batch, pos, d_model]",
    "mlp_hidden": "MLP hidden pre-activation (gated MLPs: gate and up concatenated): [batch, pos, (2·)d_mlp]",
}
ATTENTION_SLOTS = ("x", "q_input", "k_input", "v_input", "q", "k", "v")
BLOCK_SLOTS = ("mlp_in",)
MLP_SLOTS = ("mlp_hidden",)


def shift(x: torch.Tensor, j: int = 1) -> torch.Tensor:
    """Move `x` [batch, pos, ...] j positions later along pos, filling the first j with zeros."""
    if j == 0:
        return x
    pad = [0, 0] * (x.dim() - 2) + [min(j, x.shape[1]), 0]
    return F.pad(x[:, : max(x.shape[1] - j, 0)], pad)


def _lagged_shape(c: torch.Tensor, x: torch.Tensor) -> tuple[int, ...]:
    """c's shape [lags, *f] with f right-aligned against x's feature dims [batch, pos, *feature] (1s between)."""
    return (c.shape[0], *[1] * (x.dim() - 1 - c.dim()), *c.shape[1:])


class _LagMix(torch.autograd.Function):
    """Σ_j c_j ⊙ shift(x, j) accumulated lag by lag into one buffer, with a hand-written backward (`lag_mix`)."""

    @staticmethod
    def _dense(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """c [lags, *f] as a dense [lags, *feature] tensor (a dense multiplier is faster than a stride-0 one)."""
        return c.reshape(_lagged_shape(c, x)).expand(c.shape[0], *x.shape[2:]).contiguous()

    @staticmethod
    def forward(ctx, x: torch.Tensor, c: torch.Tensor, exact: bool) -> torch.Tensor:
        ctx.save_for_backward(x, c)
        ce = _LagMix._dense(c, x)  # [lags, *feature]
        out = x * ce[0]
        for j in range(1, min(c.shape[0], x.shape[1])):  # the term c_j ⊙ x_{t-j}, zero at t < j
            if exact:
                out[:, j:] += ce[j] * x[:, :-j]
            else:
                out[:, j:].addcmul_(ce[j], x[:, :-j])
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor], None]:
        x, c = ctx.saved_tensors
        grad = grad.contiguous()  # attention's backward hands it over transposed; strided passes are slower
        ce = _LagMix._dense(c, x)
        lags, seq = c.shape[0], x.shape[1]
        grad_x = grad_c = None
        if ctx.needs_input_grad[0]:
            grad_x = grad * ce[0]
            for j in range(1, min(lags, seq)):
                grad_x[:, :-j].addcmul_(ce[j], grad[:, j:])
        if ctx.needs_input_grad[1]:
            grad_c = torch.stack([(grad[:, j:] * x[:, : seq - j]).sum((0, 1)) if j < seq else torch.zeros_like(ce[0])
                                  for j in range(lags)]).sum_to_size(_lagged_shape(c, x)).view(c.shape)
        return grad_x, grad_c, None


def lag_mix(x: torch.Tensor, c: torch.Tensor, exact: bool = False) -> torch.Tensor:
    """Σ_j c_j ⊙ shift(x, j): x [batch, pos, *feature], c [lags, *f] with f broadcasting against `feature`.

    Accumulates lag by lag into one buffer instead of through padded copies, with the backward written
    out (one pass per lag for x, one product and reduction per lag for c): on CPU about 2.5x faster than
    autograd of the plain formula (`make bench`: `mixer_vs_vanilla`). By default each lag is one fused
    multiply-add (`addcmul_`), which may round differently in the last bit; `exact=True` rounds each
    product before adding it, so the forward is bit-identical to `c[0] * x + c[1] * shift(x, 1) + ...`
    (positions t < j add nothing instead of c_j·0).
    """
    return _LagMix.apply(x, c, exact)


class LagMixer(nn.Module):
    """A causal affine token mixer: out_t = Σ_j c_j ⊙ x_{t-j} + b, c = `lag_coefficients()`.

    Subclasses define `lag_coefficients` ([lags, *feature], broadcasting against x's trailing dims,
    identity of a residual connection included in lag 0), optionally `bias_term`, and
    `reset_parameters(generator)`. Parameters are named `weight` / `bias` so
    `TransformerBridge.state_dict()` keeps them.
    """

    def lag_coefficients(self) -> torch.Tensor:
        """Effective mixing coefficients [lags, *feature]: entry j multiplies x_{t-j}."""
        raise NotImplementedError

    def bias_term(self) -> Optional[torch.Tensor]:
        """Position-independent additive term [*feature] (counted in lag 0 by `lag_terms`), or None."""
        return None

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Seeded init from the model's mixer generator (separate from every other weight's)."""
        raise NotImplementedError

    @torch.no_grad()
    def project_(self) -> None:
        """Project parameters onto their constraint set after an optimizer step (default: none)."""

    def no_weight_decay(self) -> list[nn.Parameter]:
        """Parameters AdamW must not decay (default: all of them; they are mixing coefficients)."""
        return list(self.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [batch, pos, *feature] -> mixed, same shape."""
        out = lag_mix(x, self.lag_coefficients())  # Σ_j c_j ⊙ shift(x, j), c [lags, *feature]
        bias = self.bias_term()
        return out if bias is None else out + bias

    def lag_terms(self, x: torch.Tensor) -> torch.Tensor:
        """Output split by lag: [lags, *x.shape], term j = c_j ⊙ x_{t-j} (bias in term 0); sums to forward(x)."""
        c = self.lag_coefficients()
        terms = torch.stack([c[j] * shift(x, j) for j in range(c.shape[0])])
        bias = self.bias_term()
        if bias is not None:
            terms[0] = terms[0] + bias
        return terms


class DepthwiseCausalConv(LagMixer):
    """Per-feature causal convolution of `kernel` taps: out_t = [x_t +] Σ_{j<kernel} w_j ⊙ x_{t-j} [+ b].

    `weight` is [*shape, kernel] with the last axis in lag order (w[..., 0] multiplies x_t), i.e. the
    reverse of `nn.Conv1d`'s tap order; `shape` broadcasts against the mixed tensor's trailing dims
    ((d,) for [.., d]; (heads, 1) per head or (heads, d_head) per channel for [.., head, d_head]).
    """

    def __init__(self, shape: tuple[int, ...], kernel: int, residual: bool = False, bias: bool = False):
        super().__init__()
        self.residual = residual
        self.weight = nn.Parameter(torch.empty(*shape, kernel))
        self.bias = nn.Parameter(torch.empty(*shape)) if bias else None

    def lag_coefficients(self) -> torch.Tensor:
        c = self.weight.movedim(-1, 0)  # [kernel, *shape]
        if self.residual:
            c = torch.cat([c[:1] + 1.0, c[1:]])
        return c

    def bias_term(self) -> Optional[torch.Tensor]:
        return self.bias


MIXERS: Registry = Registry("mixer", "model.mixer")


@dataclass
class MixerOptions:
    """Base of every mixer's options (the `model.mixer` config node): `name` picks the registered mixer.

    Subclasses add their options as typed fields, override `build`, and may override `validate`
    (options alone), `check_model` (against the model config), `module_suffix` / `hook_suffix`.
    """

    name: str
    registry: ClassVar[Registry] = MIXERS
    module_suffix: ClassVar[str] = "mix"  # module attribute `<slot>_<suffix>` on its attention/block/MLP
    hook_suffix: ClassVar[str] = "mixed"  # hook alias `hook_<slot>_<suffix>`

    def validate(self) -> None:
        """Raise `ConfigError` naming `model.mixer.<field>` for options that cannot work."""

    def check_model(self, cfg: ModelShape) -> None:
        """Raise `ConfigError` when the options cannot work with this model (e.g. MLP slots, no MLP)."""

    def build(self, cfg: ModelShape, layer: int) -> dict[str, LagMixer]:
        """The mixer modules of layer `layer` keyed by slot (see `SLOTS`); {} places nothing."""
        raise NotImplementedError

    def module_name(self, slot: str) -> str:
        return f"{slot}_{self.module_suffix}"

    def hook_name(self, slot: str) -> str:
        return f"hook_{slot}_{self.hook_suffix}"


def register_mixer(cls: type) -> type:
    """Class decorator: make a `MixerOptions` subclass selectable as `model.mixer.name=<its name>`."""
    if not issubclass(cls, MixerOptions):
        raise TypeError(f"{cls.__name__} must subclass MixerOptions")
    return MIXERS.register(cls)
