"""Next-token tasks, one file each, registered by name (`task.name`): the synthetic tasks and `text` (language
modelling on a corpus that ships with the install); see `base` for the protocol and docs/extending.md for adding one."""

from kvshift_lens.core.vocab import BOS, N_SPECIAL, NO_ANSWER, PAD
from kvshift_lens.data.tasks.base import (
    TASKS, Batch, Task, TaskConfig, make_task, previous_occurrence, register_task, task_config,
)
from kvshift_lens.data.tasks import hop_k, induction, mqar, ngram, repeated_tokens, stacked_mqar, text  # noqa: F401  (register)
from kvshift_lens.data.tasks.hop_k import hop_k_reference

__all__ = ["BOS", "N_SPECIAL", "NO_ANSWER", "PAD", "TASKS", "Batch", "Task", "TaskConfig", "hop_k_reference",
           "make_task", "previous_occurrence", "register_task", "task_config"]
