"""merge_metrics: the one way metric dicts are combined, refusing a name two parts carry."""

from __future__ import annotations

import pytest

from alignloop.records import MetricCollision, merge_metrics


def test_parts_merge_in_order_and_keep_none():
    merged = merge_metrics({"b": 1.0, "a": 2}, {}, {"c": None})
    assert merged == {"b": 1.0, "a": 2, "c": None} and list(merged) == ["b", "a", "c"]


def test_a_name_in_two_parts_is_refused_by_name():
    with pytest.raises(MetricCollision, match="'loss' is produced twice .parts 0 and 2"):
        merge_metrics({"loss": 1.0}, {"nll": 2.0}, {"loss": 1.0})  # even with equal values


def test_the_inputs_are_not_changed():
    first = {"a": 1.0}
    merge_metrics(first, {"b": 2.0})
    assert first == {"a": 1.0}
