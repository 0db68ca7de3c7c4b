"""The exception types the command line reports in one line: configurations that cannot work and
diverging runs (torch-free, so config checks run before the heavy imports)."""

from __future__ import annotations

from typing import Optional


class ConfigError(ValueError):
    """A configuration that cannot work; the message is one line naming `group.field`, the value and the fix."""


class ConfigTypeError(ConfigError):
    """A value of the wrong kind altogether (a string for an integer field, ...): a `ConfigError` a Union field can
    try its next option after."""


class TrainingDiverged(ValueError):
    """The training loss became non-finite; the run stopped at that step (its metrics so far are kept)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; `step` is the last optimizer step taken, `saved` the step of the rolling resume state
    a rerun continues from (0: none written yet, a rerun starts over)."""

    def __init__(self, step: int, saved: int = 0) -> None:
        super().__init__(interrupt_message(step, saved))
        self.step, self.saved = step, saved


def interrupt_message(step: Optional[int], saved: Optional[int]) -> str:
    """The one line a Ctrl-C prints: where the run stopped and what rerunning the same command does."""
    if step is None:  # before training, or a sweep (its finished jobs reload, the others resume)
        return "interrupted; rerun the same command to resume"
    if not saved:
        return f"interrupted at step {step}, before its first resume point; rerun the same command to start it again"
    return f"interrupted at step {step}; rerun the same command to resume from step {saved}"
