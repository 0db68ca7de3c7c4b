"""kvshift_lens: KV shifting attention (Xu et al. 2024) and other local token mixers as TransformerLens 4
models, with synthetic tasks, a CPU-fast trainer and mechanistic-interpretability tools.

The front door (kvshift_lens/api.py), as complete as `python -m experiments.train`:

    train(model="kvshift_1l", task="induction", seed=0, *overrides, **keyword_overrides) -> Run
        compose the presets in conf/, train (or resume) in the CLI's run directory; `detect=True` scores heads
    open_run(path) -> Run      .metrics .heads (tidy frames) .summary .config .checkpoints .model(step) .detect()
    open_runs(path) -> frame   one row per run of a sweep, with its `status` and `path`

Also: `compose` (a validated RunConfig from conf/), `load_runs` / `load_summaries` / `load_heads` (runs as
frames), `ModelConfig`, `build_model`, `load_model`, `save_model`, `to_bridge`, `attach_tokenizer`,
`mixer_coefficients`, `shift_coefficients`, `head_scores`, `make_task`, `task_config`, `TrainConfig`,
`ConfigError`.

The package follows the data (docs/architecture.md); imports run one way, upward never:
`report` -> `analysis` -> `training` -> `models` | `data` -> `core`, and this front door above them all.

The names load lazily, so light modules (`kvshift_lens.models.config`, the sweeper's
`kvshift_lens.training.sweeps`) import without transformer_lens. The flat layout's module paths
(`kvshift_lens.detect`, ...) still import, with a DeprecationWarning naming the new one (`legacy`).
"""

from __future__ import annotations

import sys
import types
from typing import Any

from kvshift_lens import legacy
from kvshift_lens.core.lazy import lazy_namespace

_EXPORTS = {
    "ConfigError": "kvshift_lens.core.errors",
    "ModelConfig": "kvshift_lens.models.config",
    "attach_tokenizer": "kvshift_lens.models.transformer",
    "build_model": "kvshift_lens.models.transformer",
    "build_module": "kvshift_lens.models.transformer",
    "to_bridge": "kvshift_lens.models.transformer",
    "mixer_coefficients": "kvshift_lens.models.coefficients",
    "shift_coefficients": "kvshift_lens.models.coefficients",
    "load_model": "kvshift_lens.models.checkpoints",
    "save_model": "kvshift_lens.models.checkpoints",
    "make_task": "kvshift_lens.data.tasks",
    "task_config": "kvshift_lens.data.tasks",
    "TrainConfig": "kvshift_lens.training.train_config",
    "compose": "kvshift_lens.training.run_config",
    "load_runs": "kvshift_lens.training.runs",
    "load_summaries": "kvshift_lens.training.runs",
    "load_heads": "kvshift_lens.training.runs",
    "head_scores": "kvshift_lens.analysis.head_detectors",
    "train": "kvshift_lens.api",
    "Run": "kvshift_lens.api",
    "open_run": "kvshift_lens.api",
    "open_runs": "kvshift_lens.api",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_namespace(__name__, globals(), _EXPORTS)


class _Package(types.ModuleType):
    """Keeps the exported function `train` when the old module path `kvshift_lens.train` is imported
    (the import system would otherwise set the package attribute to that module)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
legacy.install()
