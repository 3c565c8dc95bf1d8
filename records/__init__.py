"""Typed records that travel between components and are written to disk exactly as they travel.

Prompt -> Sample -> Judgment; one JSON object per line in the run directory.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


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

    @property
    def has_signal(self) -> bool:
        return self.error is None and (self.verdict is not None or self.score is not None)
