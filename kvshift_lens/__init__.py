"""kvshift_lens: KV shifting attention (Xu et al. 2024) and other local token mixers as TransformerLens 4
models, with synthetic tasks, a CPU-fast trainer and mechanistic-interpretability tools.

The names below load lazily, so `kvshift_lens.model_config`, `kvshift_lens.mixers`,
`kvshift_lens.tasks` and `kvshift_lens.sweeps` (used by the hydra sweeper in a launcher process) import
without transformer_lens, and `kvshift_lens.schema`, `kvshift_lens.cli` (the command line's plumbing)
without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ConfigError": "kvshift_lens.errors",
    "ModelConfig": "kvshift_lens.model_config",
    "attach_tokenizer": "kvshift_lens.tokenizer",
    "build_model": "kvshift_lens.models",
    "build_module": "kvshift_lens.models",
    "load_model": "kvshift_lens.checkpoints",
    "mixer_coefficients": "kvshift_lens.models",
    "save_model": "kvshift_lens.checkpoints",
    "shift_coefficients": "kvshift_lens.models",
    "to_bridge": "kvshift_lens.models",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'kvshift_lens' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
