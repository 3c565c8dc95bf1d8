"""Typed records that travel between components and are written to disk exactly as they travel.

Prompt -> Sample -> Judgment; one JSON object per line in the run directory.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from alignloop.records.metrics import MetricCollision, merge_metrics  # noqa: F401  (re-exported)


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Message(Record):
    role: Literal["system", "user", "assistant"]
    content: str


class Prompt(Record):
    """One instruction. `messages` is the chat the policy answers; `meta` carries anything else
    the dataset row had (e.g. a reference answer) for judges that want it."""

    id: str
    messages: list[Message]
    meta: dict[str, Any] = Field(default_factory=dict)

    @property
    def instruction(self) -> str:
        """The last user turn: what a judge is asked to evaluate the response against."""
        return next(m.content for m in reversed(self.messages) if m.role == "user")


class Sample(Record):
    """One response. `token_ids` include the end-of-turn token when generation stopped on it;
    `logprobs[i]` is log pi(token_ids[i] | ...) under the sampling temperature (no top-p)."""

    id: str
    prompt_id: str
    response: str
    policy_version: int
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    finish_reason: Literal["stop", "length"] | None = None


Verdict = Literal["positive", "negative"]


class Span(Record):
    """Where a judgment puts a fault: characters [start, end) of the response, and why.

    An empty span (start == end) points at the token there; at the end of the text that is
    the end-of-turn token ("it stopped where it should not have")."""

    start: int = Field(ge=0)
    end: int = Field(ge=0)
    reason: str = ""

    @model_validator(mode="after")
    def _ordered(self) -> Span:
        if self.end < self.start:
            raise ValueError(f"span end {self.end} is before its start {self.start}")
        return self


def merged_spans(spans) -> list[Span]:
    """Each span once, in the order of the text: what a judgment stores."""
    return sorted(set(spans), key=lambda s: (s.start, s.end, s.reason))


class CriterionJudgment(Record):
    """A rubric criterion's part of a judgment (judges/rubric.py)."""

    name: str
    weight: float
    verdict: Verdict
    score: float | None = None
    critique: str | None = None


class Judgment(Record):
    """What a judge says about one sample. None in a field means "no signal", never a default:
    a failed judge call has `error` set and no verdict or score."""

    sample_id: str
    verdict: Verdict | None = None
    score: float | None = None
    critique: str | None = None
    judge: str
    latency_s: float = 0.0
    error: str | None = None
    # Where the faults are (None: the judge gave no location), and how many quotes an LLM
    # judge gave that could not be found in the response (they are counted, never dropped
    # silently). Records written before these fields existed load with the defaults.
    spans: list[Span] | None = None
    unlocated_quotes: int = 0
    # From a judge that compared the prompt's responses (judge.group.rank; with two responses, a
    # preference): this sample's place among them, 1 = best. Written only when set, so records
    # without it are byte for byte as before, and older records load with None.
    rank: int | None = Field(None, ge=1, exclude_if=lambda v: v is None)
    # From a rubric judge: each criterion's verdict, score and critique (the fields above hold
    # the aggregate). Written only when set, as `rank`.
    criteria: list[CriterionJudgment] | None = Field(None, exclude_if=lambda v: v is None)

    @property
    def has_signal(self) -> bool:
        return self.error is None and (self.verdict is not None or self.score is not None)
