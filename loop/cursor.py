"""The run cursor: where a resumed run picks up, besides the last finished step that
RunState records: the prompt stream's position and the metrics of steps that finished in an
iteration whose learn step has not. The store saves it in state.json (under "data")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from alignloop.loop.data import StreamPosition

Step = Literal["sample", "judge", "learn"]
STEPS: tuple[Step, ...] = ("sample", "judge", "learn")
Metrics = dict[str, float]


@dataclass
class AheadStep:
    """Sampling ahead: the last finished step of an iteration beyond the learner's, and the
    metrics it recorded (the learn step adds its own)."""

    step: Step
    metrics: Metrics = field(default_factory=dict)


@dataclass
class Cursor:
    """`stream`: the prompt stream after the last saved sample step (what a resumed run draws
    next). One schedule's part, the other's None: `pending`, the sequential schedule's metrics
    of the current iteration's finished steps; `ahead`, sampling ahead's steps finished beyond
    the learner, by iteration."""

    stream: StreamPosition | None = None
    pending: Metrics | None = None
    ahead: dict[int, AheadStep] | None = None

    def to_json(self) -> dict:
        if self.stream is None and self.pending is None and self.ahead is None:
            return {}
        out: dict = {"stream": self.stream}
        if self.pending is not None:
            out["pending"] = dict(self.pending)
        if self.ahead is not None:
            out["ahead"] = {str(j): {"step": a.step, "pending": dict(a.metrics)} for j, a in sorted(self.ahead.items())}
        return out

    @classmethod
    def from_json(cls, data: dict) -> Cursor:
        ahead = data.get("ahead")
        return cls(
            stream=data.get("stream"),
            pending=dict(data["pending"]) if data.get("pending") is not None else None,
            ahead={int(j): AheadStep(a["step"], dict(a.get("pending", {}))) for j, a in ahead.items()}
            if ahead is not None
            else None,
        )

    def first_step_ahead(self, j: int) -> Step:
        """The step iteration j starts with under sampling ahead."""
        done = self.ahead.get(j) if self.ahead else None
        return "sample" if done is None else STEPS[STEPS.index(done.step) + 1]
