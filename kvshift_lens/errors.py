"""The one exception type for configurations that cannot work (torch-free, so config checks run before
the heavy imports)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration that cannot work; the message is one line naming `group.field`, the value and the fix."""
