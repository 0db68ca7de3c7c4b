"""The trainer's rolling resume state (`resume.pt`): written atomically with the sha256 of its contents,
read back with one clear error for a corrupt or foreign file, and matched against the run it claims to be
(configs written before the mixer/task registries included), so a rerun continues exactly where it stopped."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Optional

import torch

from kvshift_lens.data.tasks import task_config
from kvshift_lens.data.tasks.base import upgrade_legacy as upgrade_task
from kvshift_lens.models.checkpoints import state_sha256
from kvshift_lens.models.config import ModelConfig
from kvshift_lens.training.train_config import TrainConfig

TRAIN_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}

RESUME_FILE = "resume.pt"


def save_resume(state: dict, path: Path) -> None:
    """Write the rolling resume checkpoint atomically, with the sha256 of its contents."""
    tmp = path.with_suffix(".tmp")
    torch.save({**state, "sha256": state_sha256(state)}, tmp)
    os.replace(tmp, path)


def extends(old: dict, new: dict) -> bool:
    """Whether run config `new` is `old` with a budget at least as long (`train.steps`) under a constant learning
    rate after warmup: the steps `old` took are then exactly the first steps of `new` (the data stream, the optimizer
    and the warmup do not depend on the budget), so resuming `old` continues it into `new` bit for bit (adaptive
    budgets, kvshift_lens/report/adaptive.py). A cosine schedule depends on the budget and is never extended."""
    o, n = old.get("train", {}), new.get("train", {})
    if o.get("schedule") != "constant" or n.get("schedule") != "constant" or not o.get("steps", 0) <= n.get("steps", 0):
        return False
    return json.dumps({**old, "train": {**o, "steps": 0}}, sort_keys=True) == \
        json.dumps({**new, "train": {**n, "steps": 0}}, sort_keys=True)


def _upgraded(stored: Optional[str], identity: dict) -> Optional[dict]:
    """A resume checkpoint's config (JSON) in today's layout: configs written before the mixer/task registries (flat
    `arch`/`shift*` model fields, every task's knobs) or before a train field of `identity` existed (it had that
    field's default); None if unreadable."""
    try:
        old = json.loads(stored)
        old["model"] = ModelConfig.from_dict(old["model"]).to_dict()
        old["task"] = dataclasses.asdict(task_config(upgrade_task(old["task"])))
        new_fields = identity["train"].keys() - old["train"].keys()
        old["train"] = {**{k: v for k, v in TRAIN_DEFAULTS.items() if k in new_fields}, **old["train"]}
    except (TypeError, ValueError, KeyError, AttributeError):  # ConfigError and JSONDecodeError are ValueErrors
        return None
    return old


def same_run(stored: Optional[str], identity: dict) -> bool:
    """Whether a resume checkpoint's config (JSON) describes the run `identity` does, or an earlier budget of it
    (`extends`), in any layout `_upgraded` reads."""
    if stored == json.dumps(identity, sort_keys=True):
        return True
    old = _upgraded(stored, identity)
    return old is not None and (json.dumps(old, sort_keys=True) == json.dumps(identity, sort_keys=True)
                                or extends(old, identity))


def longer_budget(stored: Optional[str], identity: dict) -> Optional[int]:
    """The budget (`train.steps`) of a resume checkpoint that holds the run `identity` describes trained past its
    budget (an adaptive round extended it), else None: re-running the shorter job then continues the longer run."""
    old = _upgraded(stored, identity)
    if old is None or not extends(identity, old):
        return None
    steps = int(old["train"]["steps"])
    return steps if steps > int(identity["train"]["steps"]) else None


def load_resume(path: Path) -> dict:
    """Read a rolling resume checkpoint (tensors and plain data only, checksum verified), or one clear error."""
    fix = "delete it to restart this run from scratch"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated/foreign files
        raise ValueError(f"{path} is corrupt or not a kvshift_lens resume checkpoint ({type(e).__name__}); {fix}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a kvshift_lens resume checkpoint; {fix}")
    digest = state.pop("sha256", None)  # None: written before checksums
    if digest is not None and digest != state_sha256(state):
        raise ValueError(f"{path} is corrupt: its contents do not match the sha256 saved with them; {fix}")
    return state
