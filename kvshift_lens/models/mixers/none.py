"""`none` — plain attention, the vanilla transformer: no mixer module anywhere.

Hydra: `model/mixer=none` (what the `vanilla_*` presets select).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kvshift_lens.models.mixers.base import LagMixer, MixerOptions, ModelShape, register_mixer


@register_mixer
@dataclass
class NoMixer(MixerOptions):
    """No local mixing: every layer is standard causal attention."""

    name: Literal["none"] = "none"

    def build(self, cfg: ModelShape, layer: int) -> dict[str, LagMixer]:
        return {}
