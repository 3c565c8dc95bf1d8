"""Per-sample routing: one iteration trains several objectives, each on the rows it needs
(say self-distillation on the negatives a critique explains and GRPO on every scored group),
their losses weighted.

Each route picks its rows by a filter (options.RowFilter), then its objective selects among
them as it would alone, on copies of the rows, so two routes that train one sample never see
each other's per-row values. A row carries the index of its route; the loss splits each
micro-batch by route and sums

  L = (1/B) * sum_r  w_r * n_r * L_r

where L_r is route r's own loss on its n_r rows of the B. That is a mean over rows, the same
whatever the micro-batches and learner ranks (a route's loss must be a mean over rows too:
options.Route refuses those over tokens), and with one route of weight 1 it is that
objective's loss. Metrics carry each route's label as a prefix: `<label>/loss` and
`<label>/<metric>` are its objective's loss and metrics on its rows (the learner averages them
over the micro-batches that hold some), `<label>/rows`, `<label>/n_train` etc. its selection.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from alignloop.policies.objectives.base import Context, Example, Objective, RowValue, TrainBatch
from alignloop.policies.objectives.options import RoutedOptions, RowFilter
from alignloop.records import merge_metrics

ROW_FILTERS = {
    "all": lambda e: True,
    "negatives": lambda e: e.judgment.verdict == "negative",
    "negatives_with_critique": lambda e: e.judgment.verdict == "negative" and bool(e.judgment.critique),
    "positives": lambda e: e.judgment.verdict == "positive",
    "scored": lambda e: e.judgment.score is not None,
}


def rows_for(examples: list[Example], name: RowFilter) -> list[Example]:
    """Copies of the rows filter `name` lets through (each route fixes its own per-row values)."""
    keep = ROW_FILTERS[name]
    return [dataclasses.replace(e) for e in examples if keep(e)]


def route_batch(batch: TrainBatch, rows: torch.Tensor) -> TrainBatch:
    """The rows `rows` (indices) of every tensor the batch holds."""
    held = {f.name: v for f in dataclasses.fields(TrainBatch) if (v := getattr(batch, f.name)) is not None}
    return dataclasses.replace(batch, **{name: v.index_select(0, rows) for name, v in held.items()})


class Routed(Objective):
    def __init__(self, options: RoutedOptions):
        from alignloop.policies.objectives.registry import build_objective  # the registry lists this class

        super().__init__(options)
        self.routes = [build_objective(r.objective) for r in options.routes]
        self.labels = [r.label for r in options.routes]
        self.weights = [r.weight for r in options.routes]
        # What the learner provides is what any route asks for (instance attributes: they
        # depend on the config). A context is read without gradient only when every route
        # that declares it does.
        parts = self.routes
        self.contexts = tuple(c for c in ("plain", "judged") if any(c in o.contexts for o in parts))  # type: ignore[misc]
        self.detached_contexts = tuple(  # type: ignore[misc]
            c for c in self.contexts if all(c in o.detached_contexts for o in parts if c in o.contexts)
        )
        self.row_values = ("route", *dict.fromkeys(v for o in parts for v in o.row_values))  # type: ignore[misc]
        self.needs_reference = any(o.needs_reference for o in parts)  # type: ignore[misc]
        self.needs_old_logprobs = any(o.needs_old_logprobs for o in parts)  # type: ignore[misc]
        self.needs_spans = any(o.needs_spans for o in parts)  # type: ignore[misc]
        if any(o.unit != 1 for o in parts):  # options.Route does not offer dpo; a plugin might
            raise ValueError("a routed objective cannot hold an objective trained in pairs (unit > 1)")

    def select(self, examples: list[Example], rng: np.random.Generator):
        rows: list[Example] = []
        metrics: dict = {}
        for index, (route, spec) in enumerate(zip(self.routes, self.options.routes)):
            chosen, selected = route.select(rows_for(examples, spec.rows), rng)
            for e in chosen:
                e.route = index
            rows += chosen
            metrics = merge_metrics(metrics, prefixed(self.labels[index], {"rows": len(chosen), **selected}))
        return rows, merge_metrics({"n_train": len(rows)}, metrics)

    def context_messages(self, context: Context, example: Example):
        assert example.route is not None  # select() routes every row it returns
        route = self.routes[example.route]
        return route.context_messages(context, example) if context in route.contexts else None

    def row_tensors(self, rows: list[Example], device=None) -> dict[RowValue, torch.Tensor]:
        """Each value a route reads, 0.0 on the rows of routes that do not read it."""
        out: dict[RowValue, torch.Tensor] = {}
        for name in self.row_values:
            values = []
            for e in rows:
                assert e.route is not None
                reads = name == "route" or name in self.routes[e.route].row_values
                value = getattr(e, name)
                if reads and value is None:
                    raise ValueError(f"route {self.labels[e.route]!r} reads {name!r} but row {e.sample.id} has none")
                values.append(float(value) if reads else 0.0)
            out[name] = torch.tensor(values, device=device)
        return out

    def loss(self, batch: TrainBatch):
        assert batch.route is not None  # declared in row_values
        total = batch.plain.new_zeros(()) if batch.plain is not None else batch.mask.new_zeros(())
        metrics: dict[str, float] = {}
        for index, (route, weight, label) in enumerate(zip(self.routes, self.weights, self.labels)):
            rows = (batch.route == index).nonzero().squeeze(-1)
            if rows.numel() == 0:
                continue
            loss, m = route.loss(route_batch(batch, rows))
            total = total + weight * loss * rows.numel() / batch.size
            metrics = merge_metrics(metrics, prefixed(label, {"loss": loss.item(), **m}))
        return total, metrics


def prefixed(label: str, metrics: dict) -> dict:
    return {f"{label}/{k}": v for k, v in metrics.items()}
