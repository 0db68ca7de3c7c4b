"""Turn the hydra configs in `conf/` into validated dataclasses (CLI, notebooks and tests alike)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Type, TypeVar

from omegaconf import DictConfig, OmegaConf

from kvshift_lens.models import ConfigError, ModelConfig
from kvshift_lens.tasks import TaskConfig
from kvshift_lens.train import TrainConfig, check_compatible

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
T = TypeVar("T")


@dataclass
class RunConfig:
    """Everything one training run needs."""

    model: ModelConfig
    task: TaskConfig
    train: TrainConfig


def _build(cls: Type[T], node: Any, group: str) -> T:
    """Instantiate dataclass `cls` from a config node, naming unknown or mistyped fields."""
    data = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown field(s) {[f'{group}.{k}' for k in unknown]}; valid: {sorted(known)}")
    try:
        obj = cls(**data)
    except TypeError as e:
        raise ConfigError(f"{group}: {e}") from None
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()
    return obj


def run_config(cfg: DictConfig) -> RunConfig:
    """Validated `RunConfig` from a composed hydra config (raises `ConfigError` on bad input)."""
    for group in ("model", "task", "train"):
        if group not in cfg:
            raise ConfigError(f"config has no `{group}` group; pick one, e.g. {group}=<preset>")
    run = RunConfig(_build(ModelConfig, cfg.model, "model"), _build(TaskConfig, cfg.task, "task"),
                    _build(TrainConfig, cfg.train, "train"))
    check_compatible(run.model, run.task)
    return run


def compose(overrides: Sequence[str] = (), config_name: str = "train") -> RunConfig:
    """Compose `conf/<config_name>.yaml` with command-line style overrides, outside any hydra app.

    >>> run = compose(["model=vanilla_2l", "train.steps=200"])
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
    return run_config(cfg)
