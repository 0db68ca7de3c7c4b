"""`smeared_key` — the smeared key of Olsson et al. 2022 ("In-context learning and induction heads",
§ on architectural requirements): per head, with a learned scalar a,

    k_j = σ(a)·k_j + (1 - σ(a))·k_{j-1}                 (keys only, k_{-1} = 0)

so a one-layer model can match on the previous token. Numerically it is `kv_shift` with
`sides=k param=gate window=1` (same init: σ(a) ~ U(0, 1), same weights from one seed), under its
own name. Hydra: `model/mixer=smeared_key`. Module `k_mix` (slot k); hook `blocks.{l}.attn.hook_k_mixed`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kvshift_lens.models.mixers.base import LagMixer, MixerOptions, ModelShape, register_mixer
from kvshift_lens.models.mixers.kv_shift import KVShift


@register_mixer
@dataclass
class SmearedKeyOptions(MixerOptions):
    """A per-head sigmoid gate between each key and the previous one (no options)."""

    name: Literal["smeared_key"] = "smeared_key"

    def build(self, cfg: ModelShape, layer: int) -> dict[str, LagMixer]:
        return {"k": KVShift(cfg.kv_heads, window=1, param="gate")}
