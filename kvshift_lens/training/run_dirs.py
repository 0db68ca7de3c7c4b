"""Where a run lives: conf/train.yaml derives its directory from the command (`hydra.run.dir`, or
`hydra.sweep.subdir` in a sweep) as `<out_dir>/<model>/<task>[/<overrides>]/seed<N>`, so the same command
finds the same directory (and resumes there) and no run directory ever contains another run.

The command line (`experiments.train`) and the Python API (`kvshift_lens.train`) both resolve that one
definition through the resolver registered here. Torch-free: the CLI needs it before composing."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from kvshift_lens.core.errors import ConfigError
from kvshift_lens.training.cli import hydra_error_line


MAX_COMPONENT = 200  # characters of a run directory's override level kept as written (file systems allow 255)
DIGEST = 16  # hex digits of sha256 that stand for the rest of a longer override level


def path_safe(override_dirname: str) -> str:
    """Hydra's override dirname as one directory level: a group override `model/mixer=canon` -> `model.mixer=canon`.

    A level longer than `MAX_COMPONENT` characters (a long `train.interventions=[...]`) would not fit in a file name
    (255 bytes): it becomes its first `MAX_COMPONENT - DIGEST - 1` characters, `~` and the first `DIGEST` hex digits
    of the sha256 of the whole level, so it stays readable, the same command still finds the same directory, and two
    commands that differ only past the prefix get different ones.
    """
    safe = str(override_dirname).replace("/", ".")
    if len(safe.encode()) <= MAX_COMPONENT:
        return safe
    digest = hashlib.sha256(safe.encode()).hexdigest()[:DIGEST]
    prefix = safe.encode()[:MAX_COMPONENT - DIGEST - 1].decode(errors="ignore")  # bytes: a name's limit is in bytes
    return f"{prefix}~{digest}"


def register_resolvers() -> None:
    """Register `${path_safe:...}`, which conf/train.yaml's run and sweep directories use (once per process)."""
    if not OmegaConf.has_resolver("path_safe"):
        OmegaConf.register_new_resolver("path_safe", path_safe)


def run_directory(cfg: DictConfig) -> Path:
    """The directory `python -m experiments.train <overrides>` writes, for the same overrides composed with
    `return_hydra_config=True`: `hydra.run.dir` made absolute, exactly as hydra's `run_job` does (a value it
    cannot resolve is the CLI's one-line `ConfigError`)."""
    register_resolvers()
    hydra_config, previous = HydraConfig.instance(), HydraConfig.instance().cfg
    try:
        hydra_config.set_config(cfg)  # `${hydra:runtime.choices.model}` reads the global hydra config
        return Path(os.path.abspath(str(OmegaConf.select(cfg, "hydra.run.dir"))))
    except OmegaConfBaseException as e:  # e.g. a broken interpolation in an override: the CLI's one line
        raise ConfigError(hydra_error_line(e)) from None
    finally:
        hydra_config.cfg = previous
