"""The hydra `train` group schema, importable without torch (the command line validates it first)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from kvshift_lens.core.errors import ConfigError
from kvshift_lens.training.interventions import Intervention

SCHEDULES = ("constant", "cosine")
LOSS_ON = ("all", "scored")
DEVICES = ("auto", "cpu", "cuda")
WARMUP = 50  # default warmup steps of runs longer than that
EVAL_EVERY = 50  # default steps between evaluations of runs at least that long


def default_warmup(steps: int) -> int:
    """`train.warmup=null`: 50 steps, or a tenth of a run too short for that (`train.steps=20` -> 2)."""
    return WARMUP if steps > WARMUP else steps // 10


def default_eval_every(steps: int) -> int:
    """`train.eval_every=null`: every 50 steps, or ten evaluations in a run shorter than that."""
    return EVAL_EVERY if steps >= EVAL_EVERY else max(1, steps // 10)


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping knobs (the hydra `train` group schema)."""

    steps: int = 3000  # optimizer steps
    lr: float = 3e-3  # peak learning rate
    batch_size: int = 64  # sequences per step
    warmup: Optional[int] = None  # linear warmup steps; null: 50, or steps // 10 for runs of <= 50 steps
    schedule: str = "constant"  # after warmup: "constant" | "cosine" (to min_lr_ratio·lr)
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of lr
    weight_decay: float = 0.1  # AdamW decay on matrices (not biases, norms, mixer coefficients)
    beta1: float = 0.9  # AdamW β1 (paper 0.9)
    beta2: float = 0.95  # AdamW β2 (paper 0.95)
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    loss_on: str = "all"  # "all" next tokens | "scored" positions only
    eval_every: Optional[int] = None  # steps between evaluations (and resume states); null: 50, or steps // 10 below 50
    eval_size: int = 512  # held-out sequences, fixed per seed
    n_checkpoints: int = 16  # log-spaced model checkpoints kept for emergence analysis (> 0: the last step too)
    checkpoint_every: int = 0  # with n_checkpoints > 0, also a checkpoint every this many steps (0: log-spaced only)
    eval_at_checkpoints: bool = False  # also evaluate at every checkpoint step (text: ICL where detectors run)
    stop_at: float = 0.0  # stop once held-out induction accuracy reaches this at an evaluation; 0 never stops
    threads: int = 0  # torch CPU threads; 0: chosen by the launcher (docs/training.md)
    compile: bool = False  # torch.compile the model for the training steps (make bench: compile_payback says when it pays)
    device: str = "auto"  # "auto" (CUDA if available) | "cpu" | "cuda"
    interventions: list[Intervention] = field(default_factory=list)  # edits of named hooks during training (interventions.py)

    def __post_init__(self) -> None:
        # null knobs resolve here, so config.json and resume identities record the steps used
        if self.warmup is None:
            self.warmup = default_warmup(self.steps)
        if self.eval_every is None:
            self.eval_every = default_eval_every(self.steps)

    def validate(self) -> None:
        """Raise `ConfigError` naming the first field that cannot work and how to fix it."""
        for name in ("steps", "batch_size", "eval_every", "eval_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}={getattr(self, name)} must be >= 1")
        for name in ("warmup", "n_checkpoints", "checkpoint_every", "threads", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name}={getattr(self, name)} must be >= 0")
        if self.lr <= 0:
            raise ConfigError(f"train.lr={self.lr} must be > 0")
        if self.checkpoint_every > 0 and self.n_checkpoints == 0:
            raise ConfigError(f"train.checkpoint_every={self.checkpoint_every} needs checkpoints: set "
                              f"train.n_checkpoints > 0, or train.checkpoint_every=0")
        if 0 < self.warmup >= self.steps:
            raise ConfigError(f"train.warmup={self.warmup} must be < train.steps={self.steps}: the learning rate "
                              f"would never reach train.lr; shorten the warmup or train longer")
        if self.eval_every > self.steps:
            raise ConfigError(f"train.eval_every={self.eval_every} exceeds train.steps={self.steps}: no evaluation "
                              f"between the first and the last; set train.eval_every <= {self.steps}")
        for name in ("min_lr_ratio", "stop_at"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"train.{name}={getattr(self, name)} must lie in [0, 1]")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"train.{name}={getattr(self, name)} must lie in [0, 1) (AdamW moment decay)")
        for name, allowed in (("schedule", SCHEDULES), ("loss_on", LOSS_ON), ("device", DEVICES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"train.{name}={getattr(self, name)!r} is not supported; use one of {list(allowed)}")
        if self.compile and self.interventions:
            raise ConfigError("train.compile=true with train.interventions is not supported (the hooks they attach and "
                              "remove between steps are untested under torch.compile); set train.compile=false")
        for intervention in self.interventions:  # hook names and shapes are checked against the model by the trainer
            intervention.validate()
            intervention.check_window(self.steps)
