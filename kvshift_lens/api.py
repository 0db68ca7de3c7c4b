"""The Python front door, as complete as the command line: `train` one run from the presets in conf/ (the same
composed config, the same run directory, the same resume and the same one-line errors as
`python -m experiments.train`), and `open_run` / `open_runs` to read runs back.

    >>> import kvshift_lens as kl
    >>> run = kl.train("kvshift_1l", "induction", seed=0, train={"steps": 300}, progress=False)
    >>> run.metrics, run.summary["final_induction_acc"], run.model()   # a tidy frame, a dict, a TransformerBridge

Overrides, one convention: positional strings are hydra overrides exactly as typed on the command line
(`"train.steps=300"`, `"model/mixer=canon"`); keyword arguments are overrides too, nested mappings flattened
to dotted keys, so `train={"steps": 300}` and `**{"train.steps": 300}` both mean `train.steps=300`. `model` and
`task` name the presets, so their fields take the dotted or the string form (`**{"model.d_model": 32}`). The run
directory is named after the overrides as written, keyword values in Python's spelling (`train.lr=0.001`).
"""

from __future__ import annotations

import json
import re
import traceback
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import pandas as pd
from omegaconf import OmegaConf

from kvshift_lens.core.errors import ConfigError, TrainingDiverged
from kvshift_lens.data.tasks.base import TaskConfig
from kvshift_lens.models.config import ModelConfig
from kvshift_lens.training.cli import SUMMARY_FILE, clear_failure, drop_if_empty, record_failure
from kvshift_lens.training.run_config import RunConfig, build, compose_hydra, run_config
from kvshift_lens.training.run_dirs import run_directory
from kvshift_lens.training.runs import (PathLike, find_runs, flatten, is_run_dir, load_heads, load_runs,
                                        load_summaries, run_status)
from kvshift_lens.training.train_config import TrainConfig

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

PLAIN_VALUE = re.compile(r"[\w.+\-/:@]+")  # written unquoted, as on a command line (numbers, names, paths)


def override_value(value: Any) -> str:
    """A Python value in hydra's override grammar: true/false, null, numbers, [lists], strings quoted only
    when the command line would need quotes."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    text = str(value)
    if PLAIN_VALUE.fullmatch(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def keyword_overrides(options: dict[str, Any]) -> list[str]:
    """`train={"steps": 300}` or `**{"train.steps": 300}` -> ["train.steps=300"]."""
    return [f"{key}={override_value(value)}" for key, value in flatten(options).items()]


def train(model: Union[str, ModelConfig] = "kvshift_1l", task: Union[str, TaskConfig] = "induction",
          seed: Union[int, TrainConfig] = 0, *overrides: Any, **options: Any) -> "Run":
    """Train (or resume) the run `python -m experiments.train model=<model> task=<task> seed=<seed> <overrides>`
    would, in the same directory, and return it. `detect=True` scores its checkpoints afterwards,
    `progress=False` hides the bar (both are overrides like any other). Bad input raises the command line's
    one-line `ConfigError` and leaves no run directory.

    The deprecated form `train(ModelConfig, TaskConfig, TrainConfig, run_dir)` still trains into `run_dir` and
    returns its summary dict (that is `kvshift_lens.training.trainer.train`)."""
    if isinstance(model, ModelConfig):
        warnings.warn("kvshift_lens.train(ModelConfig, TaskConfig, TrainConfig, run_dir) is deprecated: call "
                      "kvshift_lens.training.trainer.train with those arguments, or kvshift_lens.train(<model preset>, "
                      "<task preset>, seed, **overrides) for a run composed from conf/", DeprecationWarning, stacklevel=2)
        from kvshift_lens.training.trainer import train as train_run

        return train_run(model, task, seed, *overrides, **options)
    cfg = compose_hydra([f"model={model}", f"task={task}", f"seed={override_value(seed)}", *map(str, overrides),
                         *keyword_overrides(options)], with_hydra=True)
    run_dir = run_directory(cfg)  # before validation, as hydra resolves it before the CLI's job starts
    run = run_config(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]))
    # Imported only now, as on the command line: a bad value costs no transformer_lens import.
    from kvshift_lens.analysis.run_detection import analyze_run
    from kvshift_lens.training.trainer import train as train_run

    root = Path(run.out_dir)
    clear_failure(run_dir)
    try:
        train_run(run.model, run.task, run.train, run_dir, progress=run.progress)
        if run.detect:
            analyze_run(run_dir)
    except (ConfigError, KeyboardInterrupt):
        drop_if_empty(run_dir, root)  # nothing written yet: no run directory, no interrupt stub
        raise
    except Exception as e:  # recorded like a CLI job's failure (error.txt, summary status), then raised
        expected = isinstance(e, (ValueError, OSError))
        message = (str(e).strip() or type(e).__name__).splitlines()[0]
        record_failure(run_dir, message if expected else f"{type(e).__name__}: {message}",
                       "" if expected else traceback.format_exc(),
                       status="diverged" if isinstance(e, TrainingDiverged) else "failed")
        raise
    return Run(run_dir)


class Run:
    """One run directory read back: metrics and head scores as tidy frames, its summary and config, its
    checkpoints and the model at any of them (a TransformerBridge)."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path).absolute()
        if not is_run_dir(self.path):
            hint = ("it holds runs: kvshift_lens.open_runs reads a sweep" if find_runs(self.path, failed=True)
                    else "a run directory holds config.json")
            raise FileNotFoundError(f"{self.path} is not a run directory ({hint})")

    def __repr__(self) -> str:
        acc = self.summary.get("final_induction_acc")
        return f"Run('{self.path}', status={self.status}" + (f", final_induction_acc={acc:.3f})" if acc is not None else ")")

    @property
    def status(self) -> str:
        """completed, diverged, failed or incomplete (`kvshift_lens.training.runs.run_status`)."""
        return run_status(self.path)

    @property
    def metrics(self) -> pd.DataFrame:
        """One row per evaluation: run (this run's path), status, config columns, step, train_loss, eval_loss,
        induction_acc, ..."""
        return load_runs(self.path).assign(run=str(self.path))

    @property
    def heads(self) -> pd.DataFrame:
        """heads.csv, tidy (run = this run's path, config columns, step, layer, head, metric, value); `detect()`
        writes it."""
        return load_heads(self.path).assign(run=str(self.path))

    @property
    def summary(self) -> dict:
        """summary.json (final metrics, steps to 90 %, emergence keys after `detect()`); {status} while running."""
        path = self.path / SUMMARY_FILE
        return json.loads(path.read_text()) if path.exists() else {"status": self.status}

    @property
    def config(self) -> RunConfig:
        """The run's validated config (model, task, train groups and seed), as written to config.json."""
        groups = json.loads((self.path / "config.json").read_text())
        model = build(ModelConfig, groups["model"], "model")
        return RunConfig(seed=model.seed, model=model, task=build(TaskConfig, groups["task"], "task"),
                         train=build(TrainConfig, groups["train"], "train"))

    @property
    def checkpoints(self) -> dict[int, Path]:
        """Saved model checkpoints by training step (ascending)."""
        from kvshift_lens.analysis.emergence import run_checkpoints

        return run_checkpoints(self.path)

    def model(self, step: Optional[int] = None) -> "TransformerBridge":
        """The model at checkpoint `step` (default: the last) as a TransformerBridge, hooks and tokenizer included."""
        from kvshift_lens.models.checkpoints import load_model

        checkpoints = self.checkpoints
        if not checkpoints:
            raise FileNotFoundError(f"{self.path} has no checkpoints yet")
        if step is not None and step not in checkpoints:
            raise ValueError(f"no checkpoint at step {step} in {self.path}; saved steps: {list(checkpoints)}")
        return load_model(checkpoints[max(checkpoints) if step is None else step])

    def detect(self, **detect_kwargs: Any) -> pd.DataFrame:
        """Score every checkpoint (heads.csv, emergence keys in summary.json), as `experiments.detect` does;
        returns `heads`."""
        from kvshift_lens.analysis.run_detection import analyze_run

        analyze_run(self.path, **detect_kwargs)
        return self.heads


def open_run(path: PathLike) -> Run:
    """A run directory (the CLI's or `train`'s) read back as a `Run`."""
    return Run(path)


def open_runs(path: PathLike) -> pd.DataFrame:
    """Every run under a sweep (or any) directory, one row each: run, status (completed, diverged, failed,
    incomplete), config columns, summary scalars, and `path` for `open_run`."""
    root = Path(path)
    frame = load_summaries(root, incomplete=True)
    return frame.assign(path=[str((root / r).absolute()) for r in frame["run"]])
