"""kvshift_lens: KV shifting attention (Xu et al. 2024) as TransformerLens 4 models, with
synthetic induction tasks, a CPU-fast trainer and mechanistic-interpretability tools.

The model API below is imported on first use, so light submodules (`kvshift_lens.sweeps`, used
by the hydra sweeper in a launcher process) load without torch or TransformerLens.
"""

from importlib import import_module

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


def __getattr__(name: str):
    if name in __all__:
        return getattr(import_module("kvshift_lens.models"), name)
    raise AttributeError(f"module 'kvshift_lens' has no attribute {name!r}")
