"""Loading a run config: a YAML file, then the `--set` overrides, then validation against
the schema; every problem is a ConfigError that says what to set."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml
from pydantic import ValidationError

from alignloop.loop.config.errors import ConfigError, format_error
from alignloop.loop.config.overrides import apply_override
from alignloop.loop.config.reader import YAMLRefused, load_yaml
from alignloop.loop.config.schema import RunConfig
from alignloop.records.errors import read_utf8
from alignloop.records.secrets import mask_secrets


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory; pass the YAML config file, e.g. configs/quickstart.yaml")
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of fields")
    for item in overrides:
        apply_override(raw, item)
    return validate_config(raw, source=str(path))


def read_yaml(path: Path):
    """The file's document; a duplicate key, an alias bomb, nesting too deep for the parser or
    invalid YAML is a ConfigError naming the file (and the line where there is one)."""
    try:
        return load_yaml(read_utf8(path), name=str(path))
    except YAMLRefused as e:
        raise ConfigError(f"{path}:{e.line}: {e}" if e.line else f"{path}: {e}") from None
    except yaml.YAMLError as e:
        # PyYAML's message quotes the offending line, which may hold a key.
        raise ConfigError(f"{path}: not valid YAML: {mask_secrets(str(e))}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply for the YAML parser; flatten it") from None


def validate_config(raw: dict, source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        lines = [format_error(err, raw) for err in e.errors()]
        raise ConfigError(f"{source}: {len(lines)} error(s)\n" + "\n".join(f"  {line}" for line in lines)) from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply; flatten it") from None
