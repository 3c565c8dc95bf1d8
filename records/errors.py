"""Errors every layer may raise, at the bottom so that judges and policies need not import loop."""

from __future__ import annotations

import os


class ConfigError(Exception):
    """A config problem the user can fix; the message names the field and what to set."""


def env_secret(var: str) -> str:
    """Read a secret from the environment variable the config names."""
    value = os.environ.get(var)
    if not value:
        raise ConfigError(f"environment variable {var} is not set; export it with the key to use")
    return value
