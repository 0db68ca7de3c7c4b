"""Turn the hydra configs in `conf/` into validated dataclasses (CLI, notebooks and tests alike)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Type, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from kvshift_lens.errors import ConfigError
from kvshift_lens.model_config import ModelConfig, upgrade_legacy as upgrade_model
from kvshift_lens.registry import build_dataclass
from kvshift_lens.tasks import TaskConfig
from kvshift_lens.train import TrainConfig, check_compatible

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
T = TypeVar("T")
UPGRADES = {ModelConfig: upgrade_model}  # legacy layouts a group may arrive in (checkpoints predating the mixers)


@dataclass
class RunConfig:
    """Everything one training run needs."""

    model: ModelConfig
    task: TaskConfig
    train: TrainConfig


def build(cls: Type[T], node: Any, group: str) -> T:
    """The one place a config group becomes its dataclass: `cls` (tagged bases such as `TaskConfig` pick the
    registered subclass by `name`; nested dataclass fields such as `model.mixer` recurse) from a hydra
    node or plain mapping, raising one-line `ConfigError`s naming `group.field`."""
    try:
        data = OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node
    except InterpolationResolutionError as e:  # a resolver's own error (e.g. ${text_vocab:...}), without the YAML trail
        raise ConfigError(str(e).splitlines()[0].split("raised while resolving interpolation: ", 1)[-1]) from None
    return build_dataclass(cls, data, group, upgrade=UPGRADES.get(cls))


def run_config(cfg: DictConfig) -> RunConfig:
    """Validated `RunConfig` from a composed hydra config (raises `ConfigError` on bad input)."""
    for group in ("model", "task", "train"):
        if group not in cfg:
            raise ConfigError(f"config has no `{group}` group; pick one, e.g. {group}=<preset>")
    run = RunConfig(build(ModelConfig, cfg.model, "model"), build(TaskConfig, cfg.task, "task"),
                    build(TrainConfig, cfg.train, "train"))
    check_compatible(run.model, run.task)
    return run


def compose(overrides: Sequence[str] = (), config_name: str = "train", conf_dir: Optional[Path] = None) -> RunConfig:
    """Compose `conf/<config_name>.yaml` with command-line style overrides, outside any hydra app.

    >>> run = compose(["model=vanilla_2l", "model/mixer=canon", "task=mqar", "train.steps=200"])
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(conf_dir or CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
    return run_config(cfg)
