"""`canon` — Canon layers (Allen-Zhu 2025, "Physics of Language Models: Part 4.1, Architecture Design
and the Magic of Canon Layers", arXiv 2512.17351): a residual causal depthwise convolution, no
activation, no bias,

    h'_t = h_t + Σ_{i=0..K-1} w_i ⊙ h_{t-i}             (K = kernel = 4)

inserted at positions (as in the reference LlamaCanon code, facebookresearch/PhysicsLM4):
  A — the block input after the norm, before attention (slot x, d_model channels);
  B — the concatenated q, k, v after their projections, before rotary (slots q, k, v: a depthwise
      filter on the concatenation is one filter per part);
  C — the MLP input after the second norm (slot mlp_in);
  D — inside the MLP on the up-projection (gated MLPs: gate and up concatenated; slot mlp_hidden).
C and D need MLPs (`model.attn_only=false`). Init: w ~ U(-1/√K, 1/√K) per tap and channel, the
`nn.Conv1d` default the reference code keeps (`reset_parameters`).

Hydra: `model/mixer=canon model.mixer.positions=AB [model.mixer.kernel=4]`.
Modules `x_mix` (A), `q_mix`/`k_mix`/`v_mix` (B), `mlp_in_mix` (C, on the block),
`mlp_hidden_mix` (D, on the MLP); hooks `hook_<slot>_mixed`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from kvshift_lens.core.errors import ConfigError
from kvshift_lens.models.mixers.base import DepthwiseCausalConv, LagMixer, MixerOptions, ModelShape, register_mixer

POSITIONS = "ABCD"


class CanonConv(DepthwiseCausalConv):
    """Residual depthwise causal conv, `nn.Conv1d`'s default uniform init."""

    def __init__(self, shape: tuple[int, ...], kernel: int):
        super().__init__(shape, kernel, residual=True, bias=False)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        bound = 1.0 / math.sqrt(self.weight.shape[-1])  # kaiming_uniform(a=√5) with fan_in = kernel
        self.weight.copy_((2 * torch.rand(self.weight.shape, generator=generator) - 1) * bound)


@register_mixer
@dataclass
class CanonOptions(MixerOptions):
    """Canon layers at the selected positions of every block."""

    name: Literal["canon"] = "canon"
    positions: str = "AB"  # any of A, B (attention) and C, D (MLP), in that order
    kernel: int = 4  # taps: lags 0 .. kernel-1 (Allen-Zhu: 4)

    def validate(self) -> None:
        letters = [c for c in POSITIONS if c in self.positions]
        if not self.positions or len(set(self.positions)) != len(self.positions) or "".join(letters) != self.positions:
            raise ConfigError(f"model.mixer.positions={self.positions!r} must list some of A, B, C, D once each, "
                              f"in that order (e.g. 'AB', 'ABCD')")
        if self.kernel < 1:
            raise ConfigError(f"model.mixer.kernel={self.kernel} must be >= 1 (Canon layers use 4)")

    def check_model(self, cfg: ModelShape) -> None:
        mlp_positions = [p for p in self.positions if p in "CD"]
        if mlp_positions and cfg.attn_only:
            raise ConfigError(f"model.mixer.positions={self.positions!r} puts Canon layers in the MLP "
                              f"({''.join(mlp_positions)}) but model.attn_only=true; set model.attn_only=false "
                              f"or use positions A/B")

    def build(self, cfg: ModelShape, layer: int) -> dict[str, LagMixer]:
        mods: dict[str, LagMixer] = {}
        if "A" in self.positions:
            mods["x"] = CanonConv((cfg.d_model,), self.kernel)
        if "B" in self.positions:
            for side, heads in (("q", cfg.n_heads), ("k", cfg.kv_heads), ("v", cfg.kv_heads)):
                mods[side] = CanonConv((heads, cfg.d_head), self.kernel)
        if "C" in self.positions:
            mods["mlp_in"] = CanonConv((cfg.d_model,), self.kernel)
        if "D" in self.positions:
            hidden = cfg.mlp_width * (2 if cfg.mlp == "swiglu" else 1)
            mods["mlp_hidden"] = CanonConv((hidden,), self.kernel)
        return mods
