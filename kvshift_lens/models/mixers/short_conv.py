"""`short_conv` — the short causal depthwise convolution that Mamba, H3 and BaseConv put in front of
their sequence mixer (Zoology's `ShortConvolution`, Arora et al. 2023, HazyResearch/zoology
`zoology/mixers/convolution.py`): on the attention input x (the block's normalised input),

    x̃_t = Σ_{j<K} w_j ⊙ x_{t-j} + b                      (K = kernel, no residual, no activation)

Init: `nn.Conv1d`'s default, w, b ~ U(-1/√K, 1/√K). Kernel 3 as Zoology's BaseConv (Mamba uses 4).

Hydra: `model/mixer=short_conv [model.mixer.kernel=3]`. Module `x_mix` (slot x); hook
`blocks.{l}.attn.hook_x_mixed`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from kvshift_lens.core.errors import ConfigError
from kvshift_lens.models.mixers.base import DepthwiseCausalConv, LagMixer, MixerOptions, ModelShape, register_mixer


class ShortConv(DepthwiseCausalConv):
    """Depthwise causal conv with bias, no residual, `nn.Conv1d`'s default uniform init."""

    def __init__(self, d_model: int, kernel: int):
        super().__init__((d_model,), kernel, residual=False, bias=True)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        bound = 1.0 / math.sqrt(self.weight.shape[-1])
        self.weight.copy_((2 * torch.rand(self.weight.shape, generator=generator) - 1) * bound)
        self.bias.copy_((2 * torch.rand(self.bias.shape, generator=generator) - 1) * bound)


@register_mixer
@dataclass
class ShortConvOptions(MixerOptions):
    """A short convolution on the attention input."""

    name: Literal["short_conv"] = "short_conv"
    kernel: int = 3  # taps: lags 0 .. kernel-1 (Zoology BaseConv 3, Mamba 4)

    def validate(self) -> None:
        if self.kernel < 1:
            raise ConfigError(f"model.mixer.kernel={self.kernel} must be >= 1 (3 or 4 as in Zoology/Mamba)")

    def build(self, cfg: ModelShape, layer: int) -> dict[str, LagMixer]:
        return {"x": ShortConv(cfg.d_model, self.kernel)}
