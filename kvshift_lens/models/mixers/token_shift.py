"""`token_shift` — RWKV-4's time-mix token shift (Peng et al. 2023, "RWKV: Reinventing RNNs for the
Transformer Era", arXiv 2305.13048): on the block's normalised input x, a separate per-channel
interpolation with the previous token for the input of each projection,

    x̃^K_t = μ_K ⊙ x_t + (1 - μ_K) ⊙ x_{t-1},   K = W_K x̃^K      (likewise V and, optionally, Q)

Init as in RWKV-4 (`RWKV_TimeMix`, also Zoology's `zoology/mixers/rwkv.py`), with channel
i = 0..C-1, layer l = 0..L-1: μ_K,i = (i/C)^(1 - l/L); μ_V,i = (i/C)^(1 - l/L) + 0.3·l/(L-1)
(0 for L = 1); Q takes RWKV's receptance init μ_R,i = (i/C)^(0.5·(1 - l/L)) (RWKV has no query).

Hydra: `model/mixer=token_shift [model.mixer.sides=qkv]`. Modules `q_input_mix`, `k_input_mix`,
`v_input_mix` (slots q_input, k_input, v_input); hooks `blocks.{l}.attn.hook_{q,k,v}_input_mixed`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

from kvshift_lens.models.mixers.base import LagMixer, MixerOptions, ModelShape, register_mixer
from kvshift_lens.models.mixers.primer_dconv import check_sides


class TokenShift(LagMixer):
    """x̃_t = μ ⊙ x_t + (1 - μ) ⊙ x_{t-1} with μ = `weight` [d_model]; `role` picks RWKV's init."""

    def __init__(self, d_model: int, role: str, layer: int, n_layers: int):
        super().__init__()
        self.role, self.layer, self.n_layers = role, layer, n_layers
        self.weight = nn.Parameter(torch.empty(d_model))

    def lag_coefficients(self) -> torch.Tensor:
        return torch.stack([self.weight, 1.0 - self.weight])  # [2, d_model]

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        ratio_1_to_0 = 1.0 - self.layer / self.n_layers
        ratio_0_to_1 = self.layer / (self.n_layers - 1) if self.n_layers > 1 else 0.0
        x = torch.arange(self.weight.shape[0], dtype=self.weight.dtype) / self.weight.shape[0]
        if self.role == "q":
            self.weight.copy_(x ** (0.5 * ratio_1_to_0))
        else:
            self.weight.copy_(x ** ratio_1_to_0 + (0.3 * ratio_0_to_1 if self.role == "v" else 0.0))


@register_mixer
@dataclass
class TokenShiftOptions(MixerOptions):
    """RWKV-4 token shift in front of the selected projections."""

    name: Literal["token_shift"] = "token_shift"
    sides: str = "qkv"  # projections whose input is shifted (RWKV: k, v and the receptance)

    def validate(self) -> None:
        check_sides(self.sides)

    def build(self, cfg: ModelShape, layer: int) -> dict[str, LagMixer]:
        return {f"{s}_input": TokenShift(cfg.d_model, s, layer, cfg.n_layers) for s in self.sides}
