"""The config's one error type and its check, shared by `schema` and `algo_schema` (which `schema` imports, so the
check cannot live in `schema` without an import cycle)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad configuration value: the message is one line naming the key and what is allowed."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)
