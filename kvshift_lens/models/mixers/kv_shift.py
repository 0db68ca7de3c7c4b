"""`kv_shift` — KV shifting attention, Eq. 4-5 of Xu et al. 2024 (arXiv 2411.19574).

Per (KV) head, after the K/V projections and before rotary,

    K̂_t = α1·K_t + α2·K_{t-1}        V̂_t = β1·V_t + β2·V_{t-1}        (K_{-1} = V_{-1} = 0)

generalised to a window w: X̂_t = Σ_{j=0..w} c_j·X_{t-j} (the paper's Fig. 8 windows 1-3).
Parameterisations (Fig. 8): `free` (c unconstrained), `gate` (c = softmax of w logits and a 0,
window 1: c0 = σ(a), c1 = 1 - σ(a)), `clamp01` (c clamped to [0, 1] in the forward and after each
optimizer step). Init: α1 ~ U(0, 1), α2 = 1 - α1 (window w: c ~ Dirichlet(1, ..., 1)).

Hydra: `model/mixer=kv_shift model.mixer.sides=k model.mixer.param=gate model.mixer.window=2`.
Modules `k_shift` / `v_shift` (slots k, v); hooks `blocks.{l}.attn.hook_k_shifted` / `hook_v_shifted`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

from kvshift_lens.core.errors import ConfigError
from kvshift_lens.models.mixers.base import LagMixer, MixerOptions, ModelShape, lag_mix, register_mixer


class KVShift(LagMixer):
    """Eq. 5 per head: X̂_t = Σ_j c_j·X_{t-j}; window 1 gives α1·X + α2·shift(X).

    `weight` holds the raw parameters ([heads, window+1]; [heads, window] logits for `gate`).
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

    def lag_coefficients(self) -> torch.Tensor:
        """[window+1, heads, 1]: one coefficient per head and lag, shared by the head's channels."""
        return self.coefficients().T[:, :, None]

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """Paper init: α1 ~ U(0,1), α2 = 1 - α1; wider windows draw c ~ Dirichlet(1, ..., 1)."""
        n = self.weight.shape[0]
        e = -torch.log1p(-torch.rand(n, self.window + 1, generator=generator))  # Exp(1) draws
        c = e / e.sum(dim=-1, keepdim=True)  # window 1: c0 ~ U(0, 1), c1 = 1 - c0
        if self.param == "gate":
            c = torch.log(c[:, :-1]) - torch.log(c[:, -1:])
        self.weight.copy_(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [batch, pos, head, d_head] -> α1·x + α2·shift(x) (window w: + ... + c_w·shift(x, w)), same shape.

        `exact`: each product rounded before the sum, bit-identical to the pre-registry code (pinned digests)."""
        return lag_mix(x, self.lag_coefficients(), exact=True)  # c [window+1, head, 1]

    @torch.no_grad()
    def project_(self) -> None:
        """Clamp raw parameters to [0, 1] after an optimizer step (clamp01)."""
        if self.param == "clamp01":
            self.weight.clamp_(0.0, 1.0)


@register_mixer
@dataclass
class KVShiftOptions(MixerOptions):
    """KV shift on the keys and/or values of every layer (the paper's model)."""

    name: Literal["kv_shift"] = "kv_shift"
    sides: Literal["kv", "k", "v"] = "kv"  # shift K and V (paper), K only, or V only (Fig. 8 ablation)
    param: Literal["free", "gate", "clamp01"] = "free"  # coefficient parameterisation (Fig. 8 variants)
    window: int = 1  # 1 = the paper (t, t-1); w mixes t .. t-w
    module_suffix = "shift"
    hook_suffix = "shifted"

    def validate(self) -> None:
        choices = {"sides": ("kv", "k", "v"), "param": ("free", "gate", "clamp01")}
        for field, allowed in choices.items():
            if getattr(self, field) not in allowed:
                raise ConfigError(f"model.mixer.{field}={getattr(self, field)!r} is not supported; use one of {list(allowed)}")
        if self.window < 1:
            raise ConfigError(f"model.mixer.window={self.window} must be >= 1 (1 = the paper's t, t-1)")

    def build(self, cfg: ModelShape, layer: int) -> dict[str, LagMixer]:
        return {side: KVShift(cfg.kv_heads, self.window, self.param) for side in self.sides}
