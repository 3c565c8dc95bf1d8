"""Secrets: reading a key from the variable a config names, telling a key from a variable
name, and masking keys wherever a config or a message is printed or saved.

`mask_secrets` is the one masking function: every text on its way to the user or the disk
(stderr, tracebacks, judgment errors, config and plugin errors, logs) passes through it.
Besides the shapes of known keys it masks, literally, every secret this process has read
with `env_secret`: a server that echoes the Authorization header back in an error body
cannot leak a key of any shape."""

from __future__ import annotations

import os
import re
import threading

from alignloop.records.errors import ConfigError

# scheme://user:password@ and scheme://token@ (a token-only URL): everything between the
# scheme and the last '@' before the host is a credential.
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<userinfo>[^/?#\s@]*)@", re.IGNORECASE)
# Shapes of API keys and tokens (OpenAI, Anthropic, Hugging Face, GitHub, AWS, Google, bearer/JWT).
_KEY_LIKE = re.compile(
    r"\b(sk-[A-Za-z0-9_-]{12,}|sk_[A-Za-z0-9]{16,}|hf_[A-Za-z0-9]{20,}|gh[pousr]_[A-Za-z0-9]{20,}|"
    r"AKIA[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{30,}|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]+)"
)
_BEARER = re.compile(r"((?:Bearer|Basic)\s+)[^\s'\",}]+", re.IGNORECASE)
# Header echoes: "Authorization: xyz", "api-key": "xyz", x-api-key=xyz (not a placeholder such as
# `export OPENAI_API_KEY=<your key>` in alignloop's own advice).
_HEADER = re.compile(
    r"((?:authorization|x-api-key|api-key|api_key)['\"]?\s*[:=]\s*['\"]?)(?!\*\*\*|<)(?!(?:Bearer|Basic)\s)[^\s'\",}]+",
    re.IGNORECASE,
)
# Shorter values are too likely to occur in ordinary text to be masked literally.
_MIN_REGISTERED = 6
_registered: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Mask `value` literally from now on, in every text this process masks."""
    if value and len(value) >= _MIN_REGISTERED:
        with _lock:
            _registered.add(value)


def _credentials(m: re.Match) -> str:
    user, sep, _ = m["userinfo"].partition(":")
    # user:password keeps the user name (it helps to tell accounts apart); a lone token goes.
    return f"{m['scheme']}{user}:***@" if sep else f"{m['scheme']}***@"


def mask_secrets(text: str) -> str:
    with _lock:
        known = sorted(_registered, key=len, reverse=True)
    for value in known:
        text = text.replace(value, "***")
    text = _URL_CREDENTIALS.sub(_credentials, text)
    text = _BEARER.sub(r"\1***", text)
    text = _HEADER.sub(r"\1***", text)
    return _KEY_LIKE.sub("***", text)


def quote(value: object, limit: int = 80) -> str:
    """A bad value as an error message may show it: masked, repr'd, and cut to a short prefix
    (a 50 MB value must not be echoed whole)."""
    text = value if isinstance(value, str) else repr(value)
    shown = mask_secrets(text[:limit])
    shown = repr(shown) if isinstance(value, str) else shown
    return f"{shown}... ({len(text)} characters)" if len(text) > limit else shown


def looks_like_a_key(value: str) -> bool:
    """A value that is a key rather than the name of the variable holding one."""
    if _KEY_LIKE.search(value):
        return True
    # Long, mixed letters and digits, not shaped like an environment variable name (FOO_BAR).
    return (
        len(value) >= 24 and value.count("_") < 2 and bool(re.search(r"[a-z]", value)) and bool(re.search(r"\d", value))
    )


def env_secret(var: str) -> str:
    """Read a secret from the environment variable the config names; it is masked from then on."""
    value = os.environ.get(var)
    if not value:
        raise ConfigError(f"environment variable {var} is not set; export it with the key to use")
    register_secret(value)
    return value
