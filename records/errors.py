"""The error every layer may raise, at the bottom so that judges and policies need not import loop."""

from __future__ import annotations


class ConfigError(Exception):
    """A config problem the user can fix; the message names the field and what to set."""
