"""kvshift_lens: KV shifting attention (Xu et al. 2024) as TransformerLens 4 models, with
synthetic induction tasks, a CPU-fast trainer and mechanistic-interpretability tools.

Names are imported on first use, so `import kvshift_lens.config` (the command line's validation)
does not pay for torch and transformer_lens.
"""

from importlib import import_module

_EXPORTS = {
    "ConfigError": "kvshift_lens.schema",
    "ModelConfig": "kvshift_lens.models",
    "build_model": "kvshift_lens.models",
    "build_module": "kvshift_lens.models",
    "load_model": "kvshift_lens.checkpoints",
    "save_model": "kvshift_lens.checkpoints",
    "attach_tokenizer": "kvshift_lens.tokenizer",
    "shift_coefficients": "kvshift_lens.models",
    "to_bridge": "kvshift_lens.models",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'kvshift_lens' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
