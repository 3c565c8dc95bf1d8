"""One iteration after another: sample and judge, learn, publish the new adapter, record."""

from __future__ import annotations

from alignloop.loop.cursor import Metrics, Step
from alignloop.loop.roles.protocols import Exported
from alignloop.loop.steps import Steps


def run(steps: Steps, adapter: Exported) -> Exported:
    """From the step after the last finished one to the last iteration; `adapter` is the one
    the samplers serve. Returns the last adapter, which they then serve."""
    i, first = steps.state.next_step()
    metrics = steps.state.cursor.pending or {} if first != "sample" else {}  # what the finished steps recorded
    while i <= steps.cfg.iterations:
        adapter = iteration(steps, i, first, metrics)
        i, first, metrics = i + 1, "sample", {}
    return adapter


def iteration(steps: Steps, i: int, first: Step = "sample", metrics: Metrics | None = None) -> Exported:
    """Iteration i from step `first` on (`metrics`: what its finished steps recorded); returns
    the adapter it learned, which every sampler then serves."""
    judged = steps.sampled_and_judged(i, first, metrics or {})
    learned = steps.learn(i, judged)
    publish_s = steps.roles.samplers.publish(learned.adapter)
    steps.record(i, learned.adapter, judged.metrics, learned.metrics, {"publish_s": publish_s})
    steps.log(i, judged)
    return learned.adapter
