"""The mixer protocol: a local token mixer is a causal, affine map along the sequence,

    out_t = Σ_{j=0..J-1} c_j ⊙ x_{t-j}  (+ b)          (x_{<0} = 0)

placed at one or more *slots* of a block. A mixer is one file holding an options dataclass
(`MixerOptions` subclass, registered with `@register_mixer`) whose `build(cfg, layer)` returns the
`LagMixer` modules of one layer keyed by slot. Everything else reads this protocol: the model places
each module at its slot, init calls `reset_parameters`, weight decay skips `no_weight_decay()`, the
bridge maps each module as a component with hook `hook_name(slot)`, `mixer_coefficients` reads
`lag_coefficients()`, and the circuit analysis splits activations by lag with `lag_terms`.

This module knows no concrete mixer (they register themselves; `kvshift_lens.mixers` imports them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from kvshift_lens.registry import Registry

if TYPE_CHECKING:
    from kvshift_lens.model_config import ModelConfig

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
        c = self.lag_coefficients()  # [lags, *feature]
        out = c[0] * x
        for j in range(1, c.shape[0]):
            out = out + c[j] * shift(x, j)
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

    def check_model(self, cfg: "ModelConfig") -> None:
        """Raise `ConfigError` when the options cannot work with this model (e.g. MLP slots, no MLP)."""

    def build(self, cfg: "ModelConfig", layer: int) -> dict[str, LagMixer]:
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
