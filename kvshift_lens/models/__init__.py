"""Models: the config (`config`: `ModelConfig`), the local token mixers (`mixers/`, one file each), attention and
blocks (`layers`), building the bare module and its TransformerLens bridge (`transformer`), mixer
coefficient tables (`coefficients`), checkpoints (`checkpoints`) and the synthetic-vocabulary tokenizer
(`vocab_tokenizer`). Imports only `kvshift_lens.core`. Names load lazily, so `models.config` and
`models.mixers` import without transformer_lens."""

from kvshift_lens.core.lazy import lazy_namespace

_T, _C, _K = "kvshift_lens.models.transformer", "kvshift_lens.models.coefficients", "kvshift_lens.models.checkpoints"
_EXPORTS = {
    "ModelConfig": "kvshift_lens.models.config", "ConfigError": "kvshift_lens.core.errors",
    "shift": "kvshift_lens.models.mixers", "MIXERS": "kvshift_lens.models.mixers",
    "MixerAttention": "kvshift_lens.models.layers", "MixerBlock": "kvshift_lens.models.layers",
    **{n: _T for n in ("Model", "build_module", "build_model", "to_bridge", "init_weights", "model_config", "bare_module",
                       "bare_state_dict", "blocks", "attention_layers", "constrain_", "no_weight_decay_parameters",
                       "attach_tokenizer")},
    **{n: _C for n in ("mixer_coefficients", "shift_coefficients", "mixer_reach", "MIXER_COEFFICIENT_COLUMNS")},
    **{n: _K for n in ("save_model", "load_model", "read_checkpoint", "write_safetensors", "state_sha256",
                       "CHECKPOINT_FORMAT")},
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_namespace(__name__, globals(), _EXPORTS)
