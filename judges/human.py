"""People as judges: a review queue per iteration, judgments collected when people have made them.

`judge.type: human` makes the judge step write the iteration's review queue into the run
directory and stop the run (exit 8, "waiting for judgments") until people have judged it on
the review page (`alignloop review RUN`) or imported judgments made elsewhere; rerunning the
same command collects them and goes on. A mixed set-up names another judge (`other`): it
judges every sample once, people see a share of them (or those it is unsure about), and it
decides the rest; where both judged, the report shows how often they agree.

The queue's files and their collection are loop/review_queue.py's (the loop layer writes the
run directory); this module holds the config, the judge the workers run, which samples people
see, and the check of a judgment people made.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from alignloop.records import Judgment, Prompt, Sample, Span, merged_spans
from alignloop.records.secrets import quote

if TYPE_CHECKING:  # at run time judges/__init__.py resolves it through model_rebuild
    from alignloop.judges import JudgeConfig

REVIEWER = re.compile(r"[A-Za-z0-9._@-]{1,64}")
MAX_CRITIQUE = 20_000  # characters: a critique is a paragraph, not a document


class HumanJudgeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["human"] = "human"
    name: str = Field("human", description="Names the judge in messages; people's judgments read human:<reviewer>.")
    other: JudgeConfig | None = Field(
        None,
        description="A judge (rules, openai, ...) that judges every sample once: it decides the samples people "
        "do not see, and is the fallback (None: people judge every sample).",
    )
    share: float = Field(
        1.0, ge=0, le=1, description="Fraction of the samples people judge, picked by a hash of the sample id."
    )
    unsure: tuple[float, float] | None = Field(
        None,
        description="Instead of share: people judge the samples whose `other` score lies in [low, high], or that it "
        "could not judge; it decides the rest.",
    )
    quota: int | None = Field(
        None,
        gt=0,
        description="Go on once people have judged this many of an iteration's queued samples; the rest get the "
        "fallback (None: wait for all).",
    )
    deadline_hours: float | None = Field(
        None,
        ge=0,
        description="Hours after the queue was written after which the unjudged rest gets the fallback (None: no deadline).",
    )
    fallback: Literal["other", "unjudged"] = Field(
        "other",
        description="What samples past the quota or deadline get: the other judge's judgment, or none (unjudged: "
        "no signal, not trained on).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> HumanJudgeConfig:
        if self.other is None and self.unsure is not None:
            raise ValueError("judge.unsure picks samples by the other judge's score: set judge.other")
        if self.other is None and (self.quota is not None or self.deadline_hours is not None):
            if self.fallback == "other":
                raise ValueError(
                    "judge.fallback is 'other' but judge.other is not set; set judge.other or judge.fallback: unjudged"
                )
        if self.other is not None and self.other.type == "human":
            raise ValueError("judge.other is the judge beside people: choose another type than human")
        if self.unsure is not None and self.unsure[0] > self.unsure[1]:
            raise ValueError(f"judge.unsure [{self.unsure[0]}, {self.unsure[1]}]: the low end is above the high end")
        return self


class HumanJudge:
    """What runs in the judge workers: the other judge (every sample once, so its judgments
    can be compared with people's), or no judgment at all. People's judgments are collected
    by the judge step from the run directory, not here."""

    def __init__(self, config: HumanJudgeConfig):
        from alignloop.judges import build_judge

        self.config, self.name = config, config.name
        self.other = build_judge(config.other) if config.other is not None else None

    async def judge(self, prompts: Sequence[Prompt], samples: Sequence[Sample]) -> list[Judgment]:
        if self.other is not None:
            return await self.other.judge(prompts, samples)
        return [Judgment(sample_id=s.id, judge=self.name) for s in samples]

    def usage(self) -> dict[str, float]:
        usage = getattr(self.other, "usage", None)
        return dict(usage()) if usage is not None else {}


class ReviewError(ValueError):
    """A judgment that cannot be saved: bad fields, an unknown sample, a closed queue."""


def picked(sample_id: str, share: float) -> bool:
    """Whether people judge this sample: a share of the samples, the same ones on every rerun."""
    digest = hashlib.sha256(sample_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def for_people(config: HumanJudgeConfig, samples: list[Sample], other: list[Judgment]) -> list[str]:
    """The ids of the samples people judge, in sample order."""
    if config.unsure is not None:
        low, high = config.unsure
        return [s.id for s, j in zip(samples, other) if not j.has_signal or j.score is None or low <= j.score <= high]
    return [s.id for s in samples if picked(s.id, config.share)]


# checking a judgment people made ----------------------------------------------------------------
class HumanInput(BaseModel):
    """A judgment as the page posts it or an import file holds it, one per line."""

    model_config = ConfigDict(extra="forbid")

    sample_id: str
    reviewer: str
    verdict: Literal["positive", "negative"] | None = None
    score: float | None = None
    critique: str | None = Field(None, max_length=MAX_CRITIQUE)
    spans: list[Span] | None = None
    base_rev: int = Field(0, ge=0)


def checked(raw: object, samples: dict[str, Sample]) -> tuple[Judgment, str, int]:
    """(judgment, reviewer, base revision) from a posted or imported object; ReviewError says
    what is wrong with it."""
    from pydantic import ValidationError

    if not isinstance(raw, dict):
        raise ReviewError(f"expected a JSON object, got {type(raw).__name__}")
    try:
        given = HumanInput.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the object"
        raise ReviewError(f"{where}: {first['msg']}") from None
    if not REVIEWER.fullmatch(given.reviewer):
        raise ReviewError(f"reviewer {quote(given.reviewer)}: use 1-64 letters, digits and . _ @ -")
    sample = samples.get(given.sample_id)
    if sample is None:
        raise ReviewError(f"sample_id {quote(given.sample_id)} is not in the review queue")
    if given.verdict is None and given.score is None:
        raise ReviewError(f"{given.sample_id}: give a verdict or a score")
    if given.score is not None and not math.isfinite(given.score):
        raise ReviewError(f"{given.sample_id}: the score must be a finite number")
    for span in given.spans or ():
        if span.end > len(sample.response):
            raise ReviewError(
                f"{given.sample_id}: span [{span.start}, {span.end}) runs past the response ({len(sample.response)} characters)"
            )
    judgment = Judgment(
        sample_id=given.sample_id,
        verdict=given.verdict,
        score=given.score,
        critique=given.critique or None,
        judge=f"human:{given.reviewer}",
        spans=merged_spans(given.spans) if given.spans else None,
    )
    return judgment, given.reviewer, given.base_rev
