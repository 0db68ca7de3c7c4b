"""The exception types the command line reports in one line: configurations that cannot work and
diverging runs (torch-free, so config checks run before the heavy imports)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration that cannot work; the message is one line naming `group.field`, the value and the fix."""


class TrainingDiverged(ValueError):
    """The training loss became non-finite; the run stopped at that step (its metrics so far are kept)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; `step` is the last optimizer step taken (a rerun resumes from its resume state)."""

    def __init__(self, step: int) -> None:
        super().__init__(f"interrupted at step {step}; rerun the same command to resume")
        self.step = step
