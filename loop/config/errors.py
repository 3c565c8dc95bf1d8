"""Config errors: pydantic's errors turned into one line each that names the field as the
user wrote it, what is wrong, and what is allowed there."""

from __future__ import annotations

import types
import typing
from typing import Any, cast

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from alignloop.loop.config.schema import RunConfig

# ConfigError lives at the bottom layer (records) so that judges and policies can raise it too.
from alignloop.records.errors import ConfigError  # noqa: F401 - re-exported: loop.config.ConfigError
from alignloop.records.secrets import mask_secrets, quote

# A validator's own message may hold the value it refused (a 50 MB string, a pasted key).
MAX_MESSAGE = 300


def format_error(err: ErrorDetails, raw: dict) -> str:
    """One line: the field path as the user wrote it, what is wrong, and what is allowed.
    A value the user wrote is shown as quote() shows it: masked, at most a short prefix."""
    path, model = _user_path(err["loc"], raw)
    where = ".".join(shown(p) for p in path) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = ", ".join(sorted(model.model_fields)) if model else "?"
        return f"{where}: unknown field; allowed here: {allowed}"
    if kind == "missing":
        return f"{where}: required field is missing"
    if kind == "union_tag_invalid":
        return f"{where}.type: {quote(err['input'].get('type'))} is not known; use one of {err['ctx']['expected_tags']}"
    if kind == "union_tag_not_found":
        return f"{where}: needs a `type` field naming which kind it is"
    msg = _bounded(err["msg"].removeprefix("Value error, "))
    if kind == "secret":  # never echo what may be a key
        return f"{where}: {msg}"
    if "input" in err and not isinstance(err["input"], (dict, list)):
        return f"{where}: {msg} (got {quote(err['input'])})"
    return f"{where}: {msg}"


def shown(part: object) -> str:
    """A name (a field, a key) as written, unless it is long or holds a key (a key pasted as a
    field name): then as quote() shows it."""
    text = str(part)
    return text if len(text) <= 60 and mask_secrets(text) == text else quote(text, limit=60)


def _bounded(msg: str) -> str:
    """Masked, and cut to MAX_MESSAGE characters. Masked before the cut, so a key the cut
    splits is still recognised; the margin covers the longest key shapes."""
    if len(msg) <= MAX_MESSAGE:
        return mask_secrets(msg)
    return mask_secrets(msg[: MAX_MESSAGE + 200])[:MAX_MESSAGE] + f"... ({len(msg)} characters)"


def _user_path(loc: tuple, raw: Any) -> tuple[list, type[BaseModel] | None]:
    """pydantic puts union tags into `loc` (judge.rules.checks...); keep only the segments
    that index into what the user wrote, and return the model class at the end of the path."""
    path: list = []
    node, tp = raw, cast(Any, RunConfig)  # tp walks through field types: models, lists, unions, None
    for seg in loc:
        if isinstance(node, dict) and seg in node:
            path.append(seg)
            node = node[seg]
            tp = _field_type(tp, seg)
        elif isinstance(node, list) and isinstance(seg, int) and seg < len(node):
            path.append(seg)
            node = node[seg]
            tp = _item_type(tp)
        elif isinstance(node, dict) and isinstance(seg, str) and node.get("type") == seg:
            tp = _union_member(tp, seg)  # a union tag: not part of the user's path
        else:
            path.append(seg)  # a missing or extra key: the last segment
            tp = None
    model = tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None
    if model is None and path and loc and loc[-1] == path[-1]:
        # For an extra or missing key, report the fields of the model that contains it.
        model = _model_at(path[:-1], raw)
    return path, model


def _model_at(path: list, raw: Any) -> type[BaseModel] | None:
    node, tp = raw, RunConfig
    for seg in path:
        if isinstance(seg, int):
            tp, node = _item_type(tp), node[seg]
        else:
            tp, node = _field_type(tp, seg), node.get(seg) if isinstance(node, dict) else None
        if isinstance(node, dict) and "type" in node:
            tp = _union_member(tp, node["type"]) or tp
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _strip(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _field_type(tp: Any, name: str) -> Any:
    tp = _strip(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel) and name in tp.model_fields:
        return _strip(tp.model_fields[name].annotation)
    return None


def _item_type(tp: Any) -> Any:
    tp = _strip(tp)
    args = typing.get_args(tp)
    return _strip(args[0]) if typing.get_origin(tp) is list and args else None


def _union_member(tp: Any, tag: str) -> Any:
    tp = _strip(tp)
    members = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    for m in members:
        m = _strip(m)
        if isinstance(m, type) and issubclass(m, BaseModel) and "type" in m.model_fields:
            if m.model_fields["type"].default == tag:
                return m
    return None
