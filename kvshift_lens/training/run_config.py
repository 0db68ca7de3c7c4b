"""Turn the hydra configs in `conf/` into validated dataclasses (CLI, notebooks and tests alike).

Every group -- model (its mixer included), task, train, and the entry points' own knobs -- goes
through one schema (`kvshift_lens.core.schema.build`): the dataclasses' annotations check each value's
type, their `validate()` methods the combinations. Importing this module costs torch (the mixer and
task configs live beside their modules) but not transformer_lens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Type, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from kvshift_lens.core.errors import ConfigError
from kvshift_lens.training.cli import hydra_error_line
from kvshift_lens.models.config import ModelConfig, upgrade_legacy as upgrade_model
from kvshift_lens.core.registry import import_plugins
from kvshift_lens.core.schema import build as build_schema, convert
from kvshift_lens.data.tasks.base import TaskConfig, task_config
from kvshift_lens.training.train_config import TrainConfig

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
T = TypeVar("T")
UPGRADES = {ModelConfig: upgrade_model}  # legacy layouts a group may arrive in (checkpoints predating the mixers)


def check_compatible(model: ModelConfig, task: TaskConfig) -> None:
    """Reject model/task pairs that cannot run together, naming the field to change."""
    if task.seq_len > model.n_ctx:
        raise ConfigError(
            f"task.seq_len={task.seq_len} exceeds model.n_ctx={model.n_ctx}; "
            f"set model.n_ctx>={task.seq_len} or shorten the task"
        )
    if task.d_vocab > model.d_vocab:
        raise ConfigError(
            f"task.d_vocab={task.d_vocab} exceeds model.d_vocab={model.d_vocab}; set model.d_vocab>={task.d_vocab}"
        )


@dataclass
class RunConfig:
    """`conf/train.yaml`: one training run's groups plus the entry point's own knobs."""

    seed: int = 0  # seeds model init, training data and the held-out set (model.seed, task.seed)
    out_dir: str = "runs"  # root of run and sweep directories
    name: str = "adhoc"  # sweep name (multirun directory)
    progress: bool = True  # tqdm bar per run
    detect: bool = False  # score every checkpoint after training
    plugins: list[str] = field(default_factory=list)  # modules imported first: the user's mixers and tasks
    task: TaskConfig = field(default_factory=lambda: task_config("induction"))  # before model, whose
    model: ModelConfig = field(default_factory=ModelConfig)  # d_vocab and n_ctx interpolate task's
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        if self.seed < 0:
            raise ConfigError(f"seed={self.seed} must be >= 0 (it seeds torch generators and names the run's seed<N> directory)")
        check_compatible(self.model, self.task)


@dataclass
class DetectConfig:
    """`conf/detect.yaml`: which runs `experiments.detect` scores, and how."""

    run_dir: str = ""  # a run directory, or a sweep directory (every run under it)
    batch_size: int = 16  # [BOS] r r sequences per checkpoint
    seed: int = 0  # seeds the detection batches
    threads: int = 1  # torch threads
    plugins: list[str] = field(default_factory=list)  # modules imported first: the mixers the checkpoints use
    development: bool = False  # also the developmental measures (kvshift_lens.analysis.development)

    def validate(self) -> None:
        if not self.run_dir:
            raise ConfigError("give the run or sweep directory: python -m experiments.detect <dir>")
        if Path(self.run_dir).is_file():
            raise ConfigError(f"run_dir={self.run_dir} is a file; pass its run directory (the folder holding "
                              f"checkpoints/), or a sweep directory")
        if not Path(self.run_dir).is_dir():
            raise ConfigError(f"run_dir={self.run_dir}: no such directory (give a run or sweep directory)")
        for name in ("batch_size", "threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")


def plain(cfg: Any) -> Any:
    """A hydra config as plain Python data with interpolations resolved; bad ones are `ConfigError`s."""
    if not isinstance(cfg, (DictConfig, ListConfig)):
        return cfg
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as e:
        raise ConfigError(f"{e.full_key} is not set: give {e.full_key}=<value>") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"{e.full_key or 'config'}: {str(e).splitlines()[0]}") from None


def build(cls: Type[T], node: Any, group: str) -> T:
    """The one place a config group becomes its dataclass: `cls` (tagged bases such as `TaskConfig` pick the
    registered subclass by `name`; nested dataclass fields such as `model.mixer` recurse) from a hydra
    node or plain mapping, raising one-line `ConfigError`s naming `group.field`."""
    return build_schema(cls, plain(node), group, upgrade=UPGRADES.get(cls))


def validated(cls: Type[T], cfg: Any) -> T:
    """An entry point's whole config (`RunConfig`, `DetectConfig`) from its composed hydra config, after
    importing its `plugins` (whose mixers and tasks the other groups may name)."""
    data = plain(cfg)
    if isinstance(data, dict) and "plugins" in data:
        import_plugins(convert(list[str], data["plugins"], "plugins"))
    return build_schema(cls, data, "")


def run_config(cfg: Any) -> RunConfig:
    """Validated `RunConfig` from a composed `conf/train.yaml` (raises `ConfigError` on bad input)."""
    for group in ("model", "task", "train"):
        if group not in cfg:
            raise ConfigError(f"config has no `{group}` group; pick one, e.g. {group}=<preset>")
    return validated(RunConfig, cfg)


def compose_hydra(overrides: Sequence[str] = (), config_name: str = "train", conf_dir: Optional[Path] = None,
                  with_hydra: bool = False) -> DictConfig:
    """`conf/<config_name>.yaml` composed with command-line style overrides outside any hydra app (`with_hydra`:
    keep the `hydra` node, whose `run.dir` names the run directory); hydra's errors become the command
    line's one-line `ConfigError`s."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(config_dir=str(conf_dir or CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=list(overrides), return_hydra_config=with_hydra)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(hydra_error_line(e)) from None


def compose(overrides: Sequence[str] = (), config_name: str = "train", conf_dir: Optional[Path] = None) -> RunConfig:
    """Compose `conf/<config_name>.yaml` with command-line style overrides, outside any hydra app, and validate it.

    >>> run = compose(["model=vanilla_2l", "model/mixer=canon", "task=mqar", "train.steps=200"])
    """
    return run_config(compose_hydra(overrides, config_name, conf_dir))
