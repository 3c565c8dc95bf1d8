"""Dotted overrides from the command line: `--set learner.lr=1e-4`."""

from __future__ import annotations

from typing import Any

import yaml

from alignloop.records.errors import ConfigError


def apply_override(raw: dict, item: str) -> None:
    """`learner.lr=1e-4` sets raw['learner']['lr'] = 0.0001; the value is parsed as YAML.
    A number segment indexes a list (`judge.checks.0.limit=30`)."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set learner.lr=1e-4")
    parts = key.split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            node = _list_item(node, part, where)
        else:
            node = node.setdefault(part, {})
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"--set {item!r}: {where} is a value, not a section")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = value
    if isinstance(node, list):
        _list_item(node, parts[-1], key)  # checks the index
        node[int(parts[-1])] = parsed
    else:
        node[parts[-1]] = parsed


def _list_item(node: list, part: str, where: str) -> Any:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"--set: {where}: index {part!r} is not in a list of {len(node)} item(s)")
    return node[int(part)]
