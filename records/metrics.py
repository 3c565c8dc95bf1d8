"""The one way metric dicts are combined: every layer's metrics end up in one flat record
per iteration (metrics.json), so two producers that pick the same name would silently
overwrite each other. Merging refuses that instead."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class MetricCollision(ValueError):
    """Two parts of a merge carry the same metric name."""


def merge_metrics(*parts: Mapping[str, Any]) -> dict[str, Any]:
    """One dict holding every part's metrics, in the order given (first part's keys first).

    Values are floats, counts, or None for "not measured"; they are not looked at. A name
    that two parts both carry raises MetricCollision naming it: rename one producer's metric
    rather than letting the later one win."""
    out: dict[str, Any] = {}
    owner: dict[str, int] = {}
    for i, part in enumerate(parts):
        for key, value in part.items():
            if key in out:
                raise MetricCollision(
                    f"metric {key!r} is produced twice (parts {owner[key]} and {i} of one merge_metrics call): "
                    "each producer must give its metrics their own names"
                )
            out[key], owner[key] = value, i
    return out
