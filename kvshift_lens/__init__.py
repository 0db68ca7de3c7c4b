"""kvshift_lens: KV shifting attention (Xu et al. 2024) as TransformerLens 4 models, with
synthetic induction tasks, a CPU-fast trainer and mechanistic-interpretability tools."""

from kvshift_lens.models import (
    ConfigError,
    ModelConfig,
    build_model,
    build_module,
    load_model,
    save_model,
    shift_coefficients,
    to_bridge,
)

__all__ = [
    "ConfigError",
    "ModelConfig",
    "build_model",
    "build_module",
    "load_model",
    "save_model",
    "shift_coefficients",
    "to_bridge",
]
