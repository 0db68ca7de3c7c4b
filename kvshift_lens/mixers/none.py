"""`none` — plain attention, the vanilla transformer: no mixer module anywhere.

Hydra: `model/mixer=none` (what the `vanilla_*` presets select).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from kvshift_lens.mixers.base import LagMixer, MixerOptions, register_mixer

if TYPE_CHECKING:
    from kvshift_lens.model_config import ModelConfig


@register_mixer
@dataclass
class NoMixer(MixerOptions):
    """No local mixing: every layer is standard causal attention."""

    name: Literal["none"] = "none"

    def build(self, cfg: "ModelConfig", layer: int) -> dict[str, LagMixer]:
        return {}
