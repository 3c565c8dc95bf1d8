"""Secrets kept out of what alignloop saves and prints: the resolved config is written to
the run directory and shown by `--dry-run`, so every key in it is masked first."""

from __future__ import annotations

import re
from typing import Any

import yaml

from alignloop.loop.config.schema import RunConfig
from alignloop.records.secrets import mask_secrets

_SECRET_KEY = re.compile(r"(api_?key|token|secret|password|authorization)$", re.IGNORECASE)


def redact(data: Any) -> Any:
    """Mask every value whose key names a secret, the password of a URL's credentials, and any
    string that looks like a key or a bearer token. Keys ending in `_env` name an environment
    variable (the safe way to pass a key) and are kept."""
    if isinstance(data, dict):
        return {
            k: ("***" if _SECRET_KEY.search(str(k)) and v not in (None, "") else redact(v)) for k, v in data.items()
        }
    if isinstance(data, list):
        return [redact(v) for v in data]
    if isinstance(data, str):
        return mask_secrets(data)
    return data


def to_yaml(config: RunConfig) -> str:
    """The resolved config as saved and printed: every default filled in, secrets masked."""
    return yaml.safe_dump(redact(config.model_dump(mode="json")), sort_keys=False)
