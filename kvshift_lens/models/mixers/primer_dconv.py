"""`primer_dconv` — Primer's multi-dconv-head attention (So et al. 2021, "Primer: Searching for
Efficient Transformers for Language Modeling", arXiv 2109.08668): a causal depthwise convolution of
kernel 3 along the sequence, one filter per channel, after each of the Q, K and V projections
(before rotary; per channel of the concatenated heads, so splitting heads first changes nothing):

    Q̃_t = Σ_{j<3} w_j ⊙ Q_{t-j}   (likewise K, V; no bias, no residual)

Init as in Primer's reference code (`causal_depthwise_conv` in the T5/mesh-tensorflow release):
w_0 = 0.5, w_j = 0.5 / kernel for j >= 1.

Hydra: `model/mixer=primer_dconv [model.mixer.kernel=3] [model.mixer.sides=qkv]`.
Modules `q_mix`, `k_mix`, `v_mix` (slots q, k, v); hooks `blocks.{l}.attn.hook_{q,k,v}_mixed`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from kvshift_lens.core.errors import ConfigError
from kvshift_lens.models.mixers.base import DepthwiseCausalConv, LagMixer, MixerOptions, ModelShape, register_mixer


class PrimerConv(DepthwiseCausalConv):
    """Per-channel causal conv on [batch, pos, head, d_head], Primer's constant init."""

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        kernel = self.weight.shape[-1]
        self.weight.fill_(0.5 / kernel)
        self.weight[..., 0] = 0.5


def check_sides(sides: str, allowed: str = "qkv") -> None:
    """`sides` is a non-empty subsequence of `allowed` (e.g. "qkv", "kv", "k")."""
    letters = [c for c in allowed if c in sides]
    if not sides or len(set(sides)) != len(sides) or "".join(letters) != sides:
        raise ConfigError(f"model.mixer.sides={sides!r} must list some of {list(allowed)} once each, "
                          f"in that order (e.g. {allowed!r} or 'k')")


@register_mixer
@dataclass
class PrimerDConvOptions(MixerOptions):
    """Depthwise causal conv after the Q, K, V projections."""

    name: Literal["primer_dconv"] = "primer_dconv"
    kernel: int = 3  # taps: lags 0 .. kernel-1 (Primer: 3)
    sides: str = "qkv"  # which projections are convolved (Primer: all three)

    def validate(self) -> None:
        if self.kernel < 1:
            raise ConfigError(f"model.mixer.kernel={self.kernel} must be >= 1 (Primer uses 3)")
        check_sides(self.sides)

    def build(self, cfg: ModelShape, layer: int) -> dict[str, LagMixer]:
        heads = {"q": cfg.n_heads, "k": cfg.kv_heads, "v": cfg.kv_heads}
        return {s: PrimerConv((heads[s], cfg.d_head), self.kernel) for s in self.sides}
