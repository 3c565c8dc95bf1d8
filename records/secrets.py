"""Secrets: reading a key from the variable a config names, telling a key from a variable
name, and masking keys wherever a config or a message is printed or saved."""

from __future__ import annotations

import os
import re

from alignloop.records.errors import ConfigError

_URL_CREDENTIALS = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^/:@\s]*):(?P<password>[^/@\s]+)@", re.IGNORECASE
)
# Shapes of API keys and tokens (OpenAI, Anthropic, Hugging Face, GitHub, AWS, Google, bearer/JWT).
_KEY_LIKE = re.compile(
    r"\b(sk-[A-Za-z0-9_-]{12,}|sk_[A-Za-z0-9]{16,}|hf_[A-Za-z0-9]{20,}|gh[pousr]_[A-Za-z0-9]{20,}|"
    r"AKIA[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{30,}|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]+)"
)
_BEARER = re.compile(r"(Bearer\s+)\S+", re.IGNORECASE)


def mask_secrets(text: str) -> str:
    text = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    text = _BEARER.sub(r"\1***", text)
    return _KEY_LIKE.sub("***", text)


def looks_like_a_key(value: str) -> bool:
    """A value that is a key rather than the name of the variable holding one."""
    if _KEY_LIKE.search(value):
        return True
    # Long, mixed letters and digits, not shaped like an environment variable name (FOO_BAR).
    return (
        len(value) >= 24 and value.count("_") < 2 and bool(re.search(r"[a-z]", value)) and bool(re.search(r"\d", value))
    )


def env_secret(var: str) -> str:
    """Read a secret from the environment variable the config names."""
    value = os.environ.get(var)
    if not value:
        raise ConfigError(f"environment variable {var} is not set; export it with the key to use")
    return value
