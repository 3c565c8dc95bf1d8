"""The order an iteration's steps run in: `sequential` (sample, judge, learn, publish; the
sample and judge steps overlapped when judging.streaming) or `ahead` (asynchronous.max_staleness:
sampling and judging run ahead of the learner on a second thread). Both call the same steps."""

from __future__ import annotations

from collections.abc import Callable

from alignloop.loop.config import RunConfig
from alignloop.loop.roles.protocols import Exported
from alignloop.loop.schedules import ahead, sequential
from alignloop.loop.steps import Steps

Schedule = Callable[[Steps, Exported], Exported]


def schedule_for(cfg: RunConfig) -> Schedule:
    return ahead.run if cfg.asynchronous.max_staleness else sequential.run
