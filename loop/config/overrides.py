"""Dotted overrides from the command line: `--set learner.lr=1e-4`."""

from __future__ import annotations

import re
from typing import Any

import yaml

from alignloop.loop.config.errors import shown
from alignloop.loop.config.reader import YAMLRefused, load_yaml
from alignloop.records.errors import ConfigError
from alignloop.records.secrets import quote

# ASCII digits only: str.isdigit() is also true of '١' and '²', and int('²') raises.
_INDEX = re.compile(r"[0-9]+")


def apply_override(raw: dict, item: str) -> None:
    """`learner.lr=1e-4` sets raw['learner']['lr'] = 0.0001; the value is parsed as YAML.
    A number segment indexes a list (`judge.checks.0.limit=30`)."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {quote(item)}: expected KEY=VALUE, e.g. --set learner.lr=1e-4")
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"--set {shown(key)}: a name between dots is empty; write e.g. model.path")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            node = _list_item(node, part, where)
        else:
            if node.get(part) is None:  # absent, or an empty section (`model:` with nothing under it)
                node[part] = {}
            node = node[part]
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"--set {shown(key)}: {shown(where)} is a value, not a section")
    parsed = _value(key, value)
    if isinstance(node, list):
        _list_item(node, parts[-1], key)  # checks the index
        node[int(parts[-1])] = parsed
    else:
        node[parts[-1]] = parsed


def _value(key: str, value: str) -> Any:
    """The value as YAML (1e-4 a number, [a, b] a list); text that is not YAML stays text. A
    duplicate key or an alias bomb is refused, as in a config file."""
    try:
        return load_yaml(value, name=f"--set {key}")
    except YAMLRefused as e:
        raise ConfigError(f"--set {shown(key)}: {e}") from None
    except RecursionError:
        raise ConfigError(f"--set {shown(key)}: the value is nested too deeply; flatten it") from None
    except yaml.YAMLError:
        return value


def _list_item(node: list, part: str, where: str) -> Any:
    if not _INDEX.fullmatch(part) or int(part) >= len(node):
        raise ConfigError(
            f"--set: {shown(where)}: index {quote(part)} is not in a list of {len(node)} item(s); "
            f"use 0 to {len(node) - 1}"
            if node
            else f"--set: {shown(where)}: index {quote(part)}: the list is empty"
        )
    return node[int(part)]
