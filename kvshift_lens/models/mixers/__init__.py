"""Local token mixers, one file each, registered by name (`model.mixer.name`); see `base` for the
protocol and docs/extending.md for adding one."""

from kvshift_lens.models.mixers.base import (
    ATTENTION_SLOTS, BLOCK_SLOTS, MIXERS, MLP_SLOTS, SLOTS, DepthwiseCausalConv, LagMixer, MixerOptions, lag_mix, register_mixer, shift,
)
from kvshift_lens.models.mixers import canon, kv_shift, none, primer_dconv, short_conv, smeared_key, token_shift  # noqa: F401  (register)

__all__ = ["ATTENTION_SLOTS", "BLOCK_SLOTS", "MIXERS", "MLP_SLOTS", "SLOTS", "DepthwiseCausalConv", "LagMixer",
           "MixerOptions", "lag_mix", "register_mixer", "shift"]
