"""Interventions during training, named by TransformerLens hook names: what each one is (the `train.interventions`
schema). Torch-free, so the command line checks them before the heavy imports; `intervention_hooks` applies them.

    Intervention(hook="blocks.0.attn.hook_pattern", action="clamp", value="previous_token")   # a free previous-token head
    Intervention(hook="blocks.0.attn.k_shift.coefficients", action="clamp", value="shift_off", end=500)  # α2 = 0 until 500

or in hydra: `'train.interventions=[{hook: blocks.0.attn.hook_pattern, action: clamp, value: previous_token}]'`.

`hook` is a hook name exactly as the `TransformerBridge` names it -- `blocks.{l}.attn.hook_pattern` [batch, head, q, k],
`blocks.{l}.attn.hook_{q,k,v,z}` [batch, pos, head, d_head], a mixer's output hook (`blocks.{l}.attn.hook_k_shifted`,
`blocks.{l}.attn.hook_x_mixed`, ...) -- or a mixer's coefficients, `<mixer component>.coefficients`
(`blocks.{l}.attn.k_shift.coefficients`: `lag_coefficients()`, [lags, head, 1] for KV shift, lag 0 = α1, lag 1 = α2).
Actions (what the hook's value becomes; `heads` restricts any of them to those heads):

| action | effect |
|---|---|
| clamp | `value`: a number, a nested list broadcasting against the hook's shape without the batch axis, or a ready-made: `previous_token`, `induction`, `uniform` (hook_pattern), `shift_off` (coefficients: every lag ≥ 1 held at 0) |
| zero | zero-ablation: 0 |
| mean | mean-ablation: the mean over the batch (a constant: no gradient flows through it) |
| freeze | the value is untouched; the parameters behind the hook keep their values (`intervention_hooks.parameters_behind`) |
| stop_grad | the value is untouched; no gradient flows back through it |

The step window is `[start, end)` in optimizer steps (`end` null: to the end of the run); an evaluation logged after
step t sees the interventions of step t - 1, the model as it was just trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional, Union

from kvshift_lens.core.errors import ConfigError

ACTIONS = ("clamp", "zero", "mean", "freeze", "stop_grad")
PATTERNS = ("previous_token", "induction", "uniform")  # ready-made clamps of hook_pattern
COEFFICIENT_VALUES = ("shift_off",)  # ready-made clamps of a mixer's coefficients
COEFFICIENTS = "coefficients"  # last part of a mixer-coefficient target's name

Value = Union[float, str, list]


@dataclass
class Intervention:
    """One edit of a hooked value (or of the parameters behind it) for optimizer steps `[start, end)`."""

    hook: str  # TL hook name as the bridge names it, or `<mixer component>.coefficients`
    action: Literal["clamp", "zero", "mean", "freeze", "stop_grad"]
    value: Optional[Value] = None  # clamp only: a number, a nested list or a ready-made name
    heads: Optional[list[int]] = None  # only these heads (null: all)
    start: int = 0  # first step the intervention acts on
    end: Optional[int] = None  # first step it no longer acts on (null: the end of the run)

    def __post_init__(self) -> None:
        if hasattr(self.value, "tolist"):  # a tensor from Python: stored as a nested list, so run configs stay JSON
            self.value = self.value.tolist()

    @property
    def where(self) -> str:
        return f"train.interventions[{self.hook}]"

    def validate(self) -> None:
        """Raise `ConfigError` for what is wrong without looking at a model (checked against one in `intervention_hooks`)."""
        if self.action not in ACTIONS:
            raise ConfigError(f"{self.where}.action={self.action!r} is not supported; use one of {list(ACTIONS)}")
        if self.action == "clamp" and self.value is None:
            raise ConfigError(f"{self.where}: clamp needs a value (a number, a nested list, or one of "
                              f"{list(PATTERNS + COEFFICIENT_VALUES)})")
        if self.action != "clamp" and self.value is not None:
            raise ConfigError(f"{self.where}.value is only read by action=clamp, not {self.action}; drop it")
        if isinstance(self.value, str):
            pattern = self.hook.endswith(".hook_pattern")
            allowed = PATTERNS if pattern else COEFFICIENT_VALUES if self.is_coefficients else ()
            if self.value not in allowed:
                if self.value in PATTERNS:  # a pattern on a hook that is not a pattern: often a misspelled hook name
                    raise ConfigError(f"{self.where}.value={self.value!r} is an attention pattern: it clamps a "
                                      f"blocks.<layer>.attn.hook_pattern hook, not {self.hook!r}")
                what = f"one of {list(allowed)}" if allowed else "a number or a nested list"
                raise ConfigError(f"{self.where}.value={self.value!r}: expected {what} for this hook")
        elif self.value is not None and not _finite(self.value):
            raise ConfigError(f"{self.where}.value: expected finite numbers (a number or a rectangular nested list)")
        if self.action == "mean" and self.is_coefficients:
            raise ConfigError(f"{self.where}: mean-ablation averages over the batch, which coefficients do not have; "
                              f"use clamp or zero")
        if self.start < 0:
            raise ConfigError(f"{self.where}.start={self.start} must be >= 0")
        if self.end is not None and self.end <= self.start:
            raise ConfigError(f"{self.where}: the window [start={self.start}, end={self.end}) is empty; "
                              f"set end > start (or end=null: to the end of the run)")
        if self.heads is not None and (not self.heads or len(set(self.heads)) != len(self.heads)):
            raise ConfigError(f"{self.where}.heads={self.heads}: list each head once (null: all heads)")

    def check_window(self, steps: int) -> None:
        """Raise `ConfigError` when the window reaches outside a run of `steps` optimizer steps."""
        if self.start >= steps or (self.end is not None and self.end > steps):
            raise ConfigError(f"{self.where}: the window [{self.start}, {self.end}) lies outside the run's "
                              f"steps [0, {steps}); set start < {steps} and end <= {steps} (or end=null)")

    def active(self, step: int) -> bool:
        """Whether the intervention acts on optimizer step `step` (0-based)."""
        return self.start <= step and (self.end is None or step < self.end)

    @property
    def is_coefficients(self) -> bool:
        return self.hook.rsplit(".", 1)[-1] == COEFFICIENTS


def _finite(value: Value) -> bool:
    """A number or a rectangular nested list of finite numbers."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return math.isfinite(value)
    if not isinstance(value, list) or not value:
        return False
    if all(isinstance(v, list) for v in value):
        return len({len(v) for v in value}) == 1 and all(_finite(v) for v in value)
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
